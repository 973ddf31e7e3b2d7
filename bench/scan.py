"""Batch-scan throughput on the UCSD Ped2 test videos: local workers 1 and 2, and the Ray engine on this machine.

    python bench/scan.py [--data ../shared/datasets/ped2] [--weights weights/ped2] [--workers 1 --workers 2] [--ray]

Each configuration scans the 12 test frame folders (2010 frames of 240x360) into a fresh run folder with the
default detect settings and prints videos/min and frames/s (decoding, scoring, thumbnails and writes included;
process and Ray start-up included too, as a user would see it).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from callm.cascade import DetectOptions, Stage1Recipe
from callm.scan import SUMMARY, scan

REPO = Path(__file__).resolve().parent.parent


def run(data: Path, recipe: Stage1Recipe, engine: str, workers: int) -> tuple[int, int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        summary = scan([data / "testing" / "frames"], Path(tmp) / "run", recipe, engine=engine, workers=workers)  # type: ignore[arg-type]
        seconds = time.perf_counter() - began
        lines = [json.loads(x) for x in (Path(tmp) / "run" / SUMMARY).read_text().splitlines()]
    assert summary.failed == 0, summary.failures
    return summary.videos, sum(x["num_frames"] for x in lines), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "ped2")
    parser.add_argument("--weights", type=Path, default=REPO / "weights" / "ped2")
    parser.add_argument("--workers", type=int, action="append", help="repeatable; default 1 and 2")
    parser.add_argument("--ray", action="store_true", help="also run the Ray engine (local instance)")
    args = parser.parse_args()
    recipe = Stage1Recipe(str(args.weights), DetectOptions(), "cpu", "bf16")
    configs = [("local", w) for w in (args.workers or [1, 2])] + ([("ray", 0)] if args.ray else [])
    for engine, workers in configs:
        videos, frames, seconds = run(args.data, recipe, engine, workers)
        label = "ray (local instance)" if engine == "ray" else f"--workers {workers}"
        print(
            f"{label:22s} {videos} videos, {frames} frames in {seconds:6.1f} s: "
            f"{videos / seconds * 60:6.1f} videos/min, {frames / seconds:6.1f} frames/s",
            flush=True,
        )


if __name__ == "__main__":
    main()
