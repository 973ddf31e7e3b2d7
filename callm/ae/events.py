"""From per-frame scores to events, and from events to the 16-frame windows stage 2 receives."""

from __future__ import annotations

import numpy as np

from callm.results import Event
from callm.video import WINDOW, window_starts


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


def gated_windows(events: list[Event], num_frames: int) -> list[int]:
    """Starts of the tiling windows that overlap an event: the clips stage 2 is asked about."""
    return [
        s for s in window_starts(num_frames) if any(e.start_frame < s + WINDOW and e.end_frame >= s for e in events)
    ]
