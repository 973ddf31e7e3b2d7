"""Synthetic surveillance footage for tests: squares walking left to right, and an intruder going the other way."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def make_frames(
    num_frames: int = 48,
    size: tuple[int, int] = (48, 64),
    walkers: int = 3,
    intruder: tuple[int, int] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """uint8 grey frames (n, H, W): ``walkers`` small squares drift right at 1 px/frame on a textured
    background; between frames ``intruder = (start, end)`` a large bright block races leftwards."""
    rng = np.random.default_rng(seed)
    h, w = size
    background = (90 + 20 * rng.random((h, w))).astype(np.float32)
    rows = rng.integers(4, h - 10, walkers)
    cols = rng.integers(0, w, walkers)
    frames = []
    for t in range(num_frames):
        frame = background.copy()
        for r, c in zip(rows, cols, strict=True):
            x = int(c + t) % w
            frame[r : r + 6, x : x + 6] = 40
        if intruder and intruder[0] <= t < intruder[1]:
            x = w - 1 - ((t - intruder[0]) * 6) % w
            frame[h // 3 : h // 3 + 14, max(0, x - 14) : x] = 250
        frames.append(frame)
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def write_video(path: Path, frames: np.ndarray, fps: float = 10.0) -> Path:
    """Write grey frames as an MJPG .avi or mp4v .mp4, whichever the suffix asks for."""
    codec = "mp4v" if path.suffix == ".mp4" else "MJPG"
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[1:]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (w, h))
    assert writer.isOpened(), f"OpenCV cannot write {path}"
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def write_frame_folder(folder: Path, frames: np.ndarray, ext: str = ".png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{i}{ext}"), frame)
    return folder
