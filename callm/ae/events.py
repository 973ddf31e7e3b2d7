"""From per-frame scores to events, and from events to the 16-frame windows stage 2 receives."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from callm.video import WINDOW


@dataclass(frozen=True)
class Event:
    start_frame: int
    end_frame: int  # inclusive
    start_s: float
    end_s: float  # end of the last frame, so a one-frame event lasts 1 / fps
    peak_frame: int
    peak_score: float
    box: list[int]  # [x0, y0, x1, y1] in original-frame pixels, at the peak frame

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_events(
    scores: np.ndarray,
    threshold: float,
    fps: float,
    boxes: np.ndarray,
    min_frames: int = 1,
    max_gap: int = 0,
) -> list[Event]:
    """Runs of frames with ``score > threshold``; runs split by at most ``max_gap`` frames merge, runs
    shorter than ``min_frames`` (after merging) are dropped."""
    above = np.flatnonzero(np.asarray(scores) > threshold)
    if above.size == 0:
        return []
    splits = np.flatnonzero(np.diff(above) > max_gap + 1) + 1
    events = []
    for run in np.split(above, splits):
        start, end = int(run[0]), int(run[-1])
        if end - start + 1 < min_frames:
            continue
        peak = start + int(np.argmax(scores[start : end + 1]))
        events.append(
            Event(
                start_frame=start,
                end_frame=end,
                start_s=round(start / fps, 3),
                end_s=round((end + 1) / fps, 3),
                peak_frame=peak,
                peak_score=float(scores[peak]),
                box=[int(v) for v in boxes[peak]],
            )
        )
    return events


def window_starts(num_frames: int) -> list[int]:
    """The tiling of a video into 16-frame windows: every 16 frames, the last one ending on the last frame."""
    if num_frames < WINDOW:
        return []
    starts = list(range(0, num_frames - WINDOW + 1, WINDOW))
    if starts[-1] != num_frames - WINDOW:
        starts.append(num_frames - WINDOW)
    return starts


def gated_windows(events: list[Event], num_frames: int) -> list[int]:
    """Starts of the tiling windows that overlap an event: the clips stage 2 is asked about."""
    return [
        s for s in window_starts(num_frames) if any(e.start_frame < s + WINDOW and e.end_frame >= s for e in events)
    ]
