"""Stage 1 on one long video: throughput and peak memory, to show that memory does not grow with the length.

    python bench/long_video.py [--minutes 10] [--fps 25] [--size 480x640] [--weights weights/ped2]

Writes a synthetic mp4 (mp4v) of the given length into a temporary folder (squares drifting over a textured
background, streamed to disk frame by frame), runs ``callm detect``'s stage 1 on it with the default settings,
and prints frames/s and the process's peak resident memory, once for a one-minute cut and once for the whole
video: if the video were held in memory the second peak would be many times the first.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent


def write_video(path: Path, frames: int, fps: float, size: tuple[int, int]) -> None:
    height, width = size
    rng = np.random.default_rng(0)
    background = (90 + 30 * rng.random((height, width))).astype(np.uint8)
    rows, cols = rng.integers(0, height - 20, 12), rng.integers(0, width, 12)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for t in range(frames):
        frame = background.copy()
        for r, c in zip(rows, cols, strict=True):
            x = int(c + 2 * t) % (width - 20)
            frame[r : r + 20, x : x + 20] = 40
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    writer.release()


def measure(video: Path, weights: Path) -> tuple[int, float, float]:
    """(frames, seconds, peak RSS in MB) of stage 1 on ``video``, in a fresh process so the peaks are its own."""
    code = (
        "import resource, sys, time\n"
        "from callm.cascade import DetectOptions, Stage1Recipe\n"
        "stage1 = Stage1Recipe(sys.argv[2], DetectOptions(), 'auto', 'bf16').build()\n"
        "began = time.perf_counter()\n"
        "d = stage1.detect(sys.argv[1])\n"
        "print(d.num_frames, time.perf_counter() - began, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(video), str(weights)], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(out.stderr.strip().splitlines()[-1])
    frames, seconds, peak = out.stdout.split()
    return int(frames), float(seconds), float(peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--size", default="480x640", help="HEIGHTxWIDTH")
    parser.add_argument("--weights", type=Path, default=REPO / "weights" / "ped2")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in (1.0, args.minutes):
            video = Path(tmp) / f"{minutes:g}min.mp4"
            began = time.perf_counter()
            write_video(video, round(minutes * 60 * args.fps), args.fps, (height, width))
            written = time.perf_counter() - began
            frames, seconds, peak = measure(video, args.weights)
            print(
                f"{minutes:5.1f} min ({frames} frames of {height}x{width}, written in {written:.0f} s): "
                f"{frames / seconds:6.1f} frames/s, peak memory {peak:.0f} MB"
            )


if __name__ == "__main__":
    main()
