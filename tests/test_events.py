"""From per-frame scores to events, and from events to the 16-frame windows stage 2 is asked about."""

from __future__ import annotations

import numpy as np
import pytest

from callm.ae.events import find_events, gated_windows
from callm.results import Event
from callm.video import window_starts


def boxes_for(n: int) -> np.ndarray:
    """A distinct box per frame, so an event's box says which frame it came from."""
    return np.array([[i, i + 1, i + 2, i + 3] for i in range(n)])


def scores_with(n: int, runs: list[tuple[int, int, float]]) -> np.ndarray:
    scores = np.zeros(n)
    for start, end, value in runs:  # end exclusive
        scores[start:end] = value
    return scores


def test_runs_above_threshold_become_events_with_times_in_seconds() -> None:
    scores = scores_with(40, [(5, 9, 2.0), (20, 30, 3.0)])
    scores[24] = 7.0
    events = find_events(scores, threshold=1.0, fps=10.0, boxes=boxes_for(40))
    assert [(e.start_frame, e.end_frame) for e in events] == [(5, 8), (20, 29)]
    first, second = events
    assert (first.start_s, first.end_s) == (0.5, 0.9)  # the end is the end of the last frame
    assert (second.start_s, second.end_s) == (2.0, 3.0)
    assert (second.peak_frame, second.peak_score) == (24, 7.0)
    assert second.box == [24, 25, 26, 27]  # the box of the peak frame
    assert first.peak_frame == 5  # a flat run peaks at its first frame


def test_threshold_is_strict_and_no_events_when_nothing_exceeds_it() -> None:
    scores = scores_with(20, [(3, 6, 1.0)])
    assert find_events(scores, threshold=1.0, fps=10.0, boxes=boxes_for(20)) == []
    assert len(find_events(scores, threshold=0.99, fps=10.0, boxes=boxes_for(20))) == 1


def test_max_gap_merges_runs_split_by_short_dips() -> None:
    scores = scores_with(60, [(10, 15, 2.0), (18, 22, 5.0), (40, 45, 2.0)])  # gaps of 3 and 18 frames
    split = find_events(scores, threshold=1.0, fps=10.0, boxes=boxes_for(60), max_gap=2)
    assert [(e.start_frame, e.end_frame) for e in split] == [(10, 14), (18, 21), (40, 44)]
    merged = find_events(scores, threshold=1.0, fps=10.0, boxes=boxes_for(60), max_gap=3)
    assert [(e.start_frame, e.end_frame) for e in merged] == [(10, 21), (40, 44)]
    assert merged[0].peak_frame == 18 and merged[0].peak_score == 5.0
    assert merged[0].box == [18, 19, 20, 21]


def test_min_frames_drops_short_runs_after_merging() -> None:
    scores = scores_with(50, [(2, 4, 2.0), (6, 8, 2.0), (30, 31, 9.0), (40, 46, 2.0)])
    events = find_events(scores, threshold=1.0, fps=10.0, boxes=boxes_for(50), min_frames=5, max_gap=2)
    # 2-3 and 6-7 merge into a 6-frame event; the single frame at 30 is dropped despite its peak.
    assert [(e.start_frame, e.end_frame) for e in events] == [(2, 7), (40, 45)]
    assert find_events(scores, threshold=1.0, fps=10.0, boxes=boxes_for(50), min_frames=7, max_gap=2) == []


def test_event_to_dict_has_the_documented_fields() -> None:
    event = find_events(scores_with(10, [(2, 4, 3.0)]), 1.0, 25.0, boxes_for(10))[0]
    data = event.to_dict()
    assert set(data) == {
        "start_frame", "end_frame", "start_s", "end_s", "peak_frame", "peak_score", "box", "tracks", "track"
    }  # fmt: skip
    assert data["start_s"] == 0.08 and data["end_s"] == 0.16
    assert isinstance(data["box"], list) and all(type(v) is int for v in data["box"])


@pytest.mark.parametrize(
    ("n", "starts"),
    [(15, []), (16, [0]), (17, [0, 1]), (48, [0, 16, 32]), (50, [0, 16, 32, 34]), (63, [0, 16, 32, 47])],
)
def test_window_starts_tile_and_align_the_last_window_to_the_end(n: int, starts: list[int]) -> None:
    assert window_starts(n) == starts


def event(start: int, end: int) -> Event:
    return Event(start, end, start / 10, (end + 1) / 10, start, 1.0, [0, 0, 1, 1])


def test_gated_windows_are_those_overlapping_an_event() -> None:
    assert gated_windows([], 48) == []
    assert gated_windows([event(20, 21)], 48) == [16]
    assert gated_windows([event(15, 16)], 48) == [0, 16]  # straddles a boundary
    assert gated_windows([event(30, 33)], 50) == [16, 32]
    assert gated_windows([event(47, 49)], 50) == [32, 34]  # the end-aligned window overlaps the one before
    assert gated_windows([event(0, 0), event(49, 49)], 50) == [0, 34]
    assert gated_windows([event(0, 5)], 10) == []  # too short for any window
