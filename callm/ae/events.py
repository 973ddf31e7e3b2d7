"""From per-frame scores to events, and from events to the 16-frame windows stage 2 receives."""

from __future__ import annotations

import numpy as np

from callm.results import Event
from callm.video import WINDOW, window_starts

# Default share of normal frames whose score an event must stay above to last (see find_events' ``hold``). Chosen
# on Ped2 test videos 01-06, by abnormal minus normal frames inside events (bench/stage1.py reports it held out).
HOLD_QUANTILE = 0.95


def find_events(
    scores: np.ndarray,
    threshold: float,
    fps: float,
    boxes: np.ndarray,
    min_frames: int = 1,
    max_gap: int = 0,
    hold: float | None = None,
) -> list[Event]:
    """Runs of frames with ``score > threshold``; runs split by at most ``max_gap`` frames merge, runs
    shorter than ``min_frames`` (after merging) are dropped.

    With ``hold`` below the threshold, each run then reaches out both ways over its neighbouring frames with
    ``score > hold`` (events that come to overlap merge): an anomaly is often above the threshold only at its
    height, and stage 2 should see all of it, not its peak. The threshold alone still decides whether there is
    an event, so footage with no event gets none.
    """
    scores = np.asarray(scores)
    above = np.flatnonzero(scores > threshold)
    if above.size == 0:
        return []
    splits = np.flatnonzero(np.diff(above) > max_gap + 1) + 1
    spans = [(int(run[0]), int(run[-1])) for run in np.split(above, splits) if run[-1] - run[0] + 1 >= min_frames]
    if hold is not None and hold < threshold:
        raised = scores > hold
        held: list[tuple[int, int]] = []
        for start, end in spans:
            while start > 0 and raised[start - 1]:
                start -= 1
            while end < len(scores) - 1 and raised[end + 1]:
                end += 1
            if held and start <= held[-1][1]:
                start = held.pop()[0]
            held.append((start, end))
        spans = held
    events = []
    for start, end in spans:
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
