"""Clip preparation for stage 2: pick frames, focus on the event's box, resize and normalise as BLIP-2 expects."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import cv2
import numpy as np
import torch
from transformers import BlipImageProcessorPil
from transformers.image_utils import PILImageResampling

from callm.errors import CallmError
from callm.results import Detection
from callm.video import WINDOW, Video
from callm.vlm.config import FOCUS_MODES, Focus

BOX_COLOUR = (255, 0, 0)  # red on RGB frames
CallGrouping = Literal["event", "window"]


def sample_indices(num_frames: int, count: int) -> list[int]:
    """``count`` frames at equal steps from the first: the indices Video-LLaMA's uniform sampling picks."""
    count = min(count, num_frames)
    return [int(i * num_frames / count) for i in range(count)]


def window_indices(start: int, end: int, count: int) -> list[int]:
    """The frames of ``[start, end)`` that a clip of ``count`` frames shows, sampled as ``sample_indices`` does."""
    return [start + i for i in sample_indices(end - start, count)]


def call_frames(window_starts: list[int], count: int) -> list[int]:
    """The ``count`` frames a stage-2 call about these (adjacent) windows shows, sampled across all of them."""
    return window_indices(window_starts[0], window_starts[-1] + WINDOW, count)


def stage2_calls(detection: Detection, grouping: CallGrouping) -> list[tuple[int, list[int]]]:
    """(event index, window starts) for each stage-2 call: an event's gated windows in one call, or one each."""
    calls = []
    for index, event in enumerate(detection.events):
        starts = [s for s in detection.gated_starts if s <= event.end_frame and s + WINDOW > event.start_frame]
        if grouping == "event":
            calls.append((index, starts))
        else:
            calls.extend((index, [s]) for s in starts)
    return calls


def iter_clips(video: Video, clips: Sequence[Sequence[int]]) -> Iterator[tuple[int, np.ndarray]]:
    """(clip number, RGB frames at full size) for every clip of frame indices, from one decoding pass.

    Clips are yielded as soon as their last frame is decoded and their frames dropped then, so memory holds
    only the clips in progress, not a long video's worth of them.
    """
    needed_by: dict[int, list[int]] = {}
    for number, clip in enumerate(clips):
        for index in clip:
            needed_by.setdefault(index, []).append(number)
    if not needed_by:
        return
    gathered: dict[int, dict[int, np.ndarray]] = {number: {} for number in range(len(clips))}
    last = max(needed_by)
    for index, frame in enumerate(video.frames(rgb=True)):
        for number in needed_by.get(index, ()):
            gathered[number][index] = frame
            if len(gathered[number]) == len(set(clips[number])):
                frames = gathered.pop(number)
                yield number, np.stack([frames[i] for i in clips[number]])
        if index == last:
            return
    raise CallmError(f"{video.path}: ends before frame {last}, which a clip needs (its header promised more frames)")


def to_rgb(frames: np.ndarray) -> np.ndarray:
    """(T, H, W) grey or (T, H, W, 3) RGB uint8 -> (T, H, W, 3) RGB uint8."""
    if frames.dtype != np.uint8 or not (frames.ndim == 3 or (frames.ndim == 4 and frames.shape[-1] == 3)):
        raise ValueError(f"frames must be uint8 (T, H, W) or (T, H, W, 3), got {frames.dtype} {frames.shape}")
    return np.repeat(frames[..., None], 3, axis=-1) if frames.ndim == 3 else frames


def crop_side(height: int, width: int, boxes: Sequence[Sequence[int]], scale: float) -> int:
    """The side of the square crops that show a clip's boxes: ``scale`` times the longest box side, at least
    half the frame's shorter side so a tiny box is not blown up into a blur. One side for every frame of a clip,
    so the object keeps its size from frame to frame as in the video."""
    longest = max(max(x1 - x0, y1 - y0) for x0, y0, x1, y1 in boxes)
    return round(max(longest * scale, min(height, width) / 2))


def crop_region(height: int, width: int, box: Sequence[int], side: int) -> tuple[int, int, int, int]:
    """The (x0, y0, x1, y1) square of ``side`` centred on the box: square because the frames are squashed to a
    square for the ViT; shifted, not cut, where it would leave the frame."""
    x0, y0, x1, y1 = box
    crop_w, crop_h = min(side, width), min(side, height)
    left = int(np.clip(round((x0 + x1) / 2 - crop_w / 2), 0, width - crop_w))
    top = int(np.clip(round((y0 + y1) / 2 - crop_h / 2), 0, height - crop_h))
    return left, top, left + crop_w, top + crop_h


def focus(
    frames: np.ndarray, boxes: Sequence[Sequence[int]] | None, mode: Focus, crop_scale: float = 2.0
) -> np.ndarray:
    """Point the model at the event: crop each frame around its own box (the crop follows a moving object),
    draw each frame's box, or leave the frames as they are. ``boxes``: one [x0, y0, x1, y1] per frame."""
    if boxes is None or mode == "none":
        return frames
    if len(boxes) != len(frames):
        raise ValueError(f"need one box per frame, got {len(boxes)} boxes for {len(frames)} frames")
    if mode == "crop":
        side = crop_side(frames.shape[1], frames.shape[2], boxes, crop_scale)
        crops = []
        for frame, box in zip(frames, boxes, strict=True):
            left, top, right, bottom = crop_region(frames.shape[1], frames.shape[2], box, side)
            crops.append(frame[top:bottom, left:right])
        return np.stack(crops)
    if mode == "draw":
        thickness = max(2, round(min(frames.shape[1:3]) / 100))
        drawn = np.ascontiguousarray(frames.copy())
        for frame, box in zip(drawn, boxes, strict=True):
            cv2.rectangle(frame, (int(box[0]), int(box[1])), (int(box[2]), int(box[3])), BOX_COLOUR, thickness)
        return drawn
    raise ValueError(f"unknown focus mode {mode!r}: use one of {', '.join(FOCUS_MODES)}")


class FramePreprocessor:
    """RGB uint8 frames -> (T, 3, S, S) float pixels: resized to S x S (squashed, no crop, as Video-LLaMA's
    loader does), scaled to [0, 1] and normalised with the CLIP mean and std that BLIP-2 was trained with.

    Video-LLaMA resizes while decoding (decord asks FFmpeg for S x S frames); of the resizes available after
    decoding, PIL's antialiased bilinear comes closest to it (``bench/vlm_frames.py``: 0.70 grey levels on
    average, 5 at most, on the example mp4; bicubic 0.97 and 36)."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size
        self._processor = BlipImageProcessorPil(
            size={"height": image_size, "width": image_size}, resample=PILImageResampling.BILINEAR
        )

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        return self._processor(images=list(frames), return_tensors="pt")["pixel_values"]
