"""From per-frame scores to events, and from events to the 16-frame windows stage 2 is asked about."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from callm.ae.events import find_events, gated_windows
from callm.cascade import DetectOptions
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


@pytest.mark.parametrize("fps", [5.0, 10.0, 25.0, 30.0])
def test_default_event_lengths_are_seconds_at_any_frame_rate(fps: float) -> None:
    """A fifth of a second above the threshold is flicker and a 0.8 s dip does not split an event, whether the
    camera runs at 5 or 30 frames/s; 1.5 s below it does."""
    min_frames, max_gap = DetectOptions().event_frames(fps)

    def frames(seconds: float) -> int:
        return round(seconds * fps)

    def runs_at(*spans: tuple[float, float]) -> list[tuple[int, int]]:
        n = frames(10)
        scores = scores_with(n, [(frames(a), frames(a) + frames(d), 2.0) for a, d in spans])
        found = find_events(scores, 1.0, fps, boxes_for(n), min_frames=min_frames, max_gap=max_gap)
        return [(e.start_frame, e.end_frame) for e in found]

    assert runs_at((1.0, 0.2)) == []
    assert runs_at((1.0, 0.7), (2.5, 0.7)) == [(frames(1.0), frames(2.5) + frames(0.7) - 1)]
    assert len(runs_at((1.0, 0.7), (3.2, 0.7))) == 2
    assert DetectOptions().event_frames(10.0) == (5, 10)  # the frames the Ped2 figures were measured with
    assert DetectOptions(min_event_frames=3, max_gap=0).event_frames(25.0) == (3, 0)  # given ones are kept


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


def test_a_stream_event_longer_than_the_track_memory_keeps_its_last_frames(monkeypatch) -> None:
    import callm.ae.online
    from callm.ae.online import StreamEvents

    monkeypatch.setattr(callm.ae.online, "MAX_TRACK_FRAMES", 10)
    events = StreamEvents(threshold=1.0, fps=10, min_frames=1, max_gap=0, update_every=1000)
    region = np.array([[0, 0, 4, 4, 2.0]], np.float32)
    for frame in range(50):
        events.push(frame, 2.0, [0, 0, 4, 4], region)
    (change, event), *_ = events.flush()
    assert change == "close" and (event.start_frame, event.end_frame) == (0, 49)
    assert [e[0] for e in event.tracks[0]] == list(range(40, 50))


@pytest.mark.parametrize("frames", [1, 5, 40, 300])
def test_stream_scores_and_events_equal_detects_on_the_whole_video(weights_dir: Path, frames: int) -> None:
    """What a live camera computes frame by frame is what detect computes on the whole video."""
    from callm.ae.calibrate import Calibration
    from callm.ae.events import find_events
    from callm.ae.online import StreamEvents, StreamScores

    calibration = Calibration.from_dict(json.loads((weights_dir / "ae.json").read_text())["calibration"])
    rng = np.random.default_rng(frames)
    psnr = calibration.psnr_center + rng.normal(0, 3 * calibration.psnr_scale, frames)
    speed = rng.normal(calibration.speed_center, 3 * calibration.speed_scale, frames) if calibration.uses_flow else None
    whole = calibration.calibrated(psnr, speed)
    stream = StreamScores(calibration)
    released = [s for i in range(frames) for s in stream.push(psnr[i], None if speed is None else speed[i])]
    released += stream.flush()
    assert [f for f, _ in released] == list(range(frames))
    np.testing.assert_allclose([v for _, v in released], whole, atol=1e-9)
    threshold = float(np.quantile(whole, 0.7))
    expected = find_events(whole, threshold, 10, np.zeros((frames, 4), int), min_frames=3, max_gap=2)
    events = StreamEvents(threshold, 10, min_frames=3, max_gap=2, update_every=1000)
    changes = [c for f, v in released for c in events.push(f, v, [0, 0, 1, 1], None)] + events.flush()
    closed = [(e.start_frame, e.end_frame, e.peak_frame, e.peak_score) for c, e in changes if c == "close"]
    assert closed == [(e.start_frame, e.end_frame, e.peak_frame, e.peak_score) for e in expected]
    assert sum(c == "open" for c, _ in changes) == len(expected)


def test_an_event_lasts_while_its_score_stays_above_the_hold() -> None:
    # Raised (0.5) around a peak (2.0): the event reaches over the raised frames on both sides, not past them.
    scores = scores_with(40, [(5, 30, 0.5), (12, 16, 2.0)])
    (event,) = find_events(scores, 1.0, 10, boxes_for(40), hold=0.3)
    assert (event.start_frame, event.end_frame, event.peak_frame) == (5, 29, 12)
    (peak_only,) = find_events(scores, 1.0, 10, boxes_for(40))
    assert (peak_only.start_frame, peak_only.end_frame) == (12, 15)
    # A hold at or above the threshold changes nothing.
    assert find_events(scores, 1.0, 10, boxes_for(40), hold=1.0) == [peak_only]


def test_held_events_that_meet_merge_and_raised_frames_alone_make_no_event() -> None:
    scores = scores_with(60, [(5, 50, 0.5), (10, 14, 2.0), (30, 34, 3.0), (52, 58, 0.9)])
    (event,) = find_events(scores, 1.0, 10, boxes_for(60), min_frames=2, hold=0.3)
    assert (event.start_frame, event.end_frame, event.peak_frame, event.peak_score) == (5, 49, 30, 3.0)
    # 52-57 is raised but never above the threshold: no event; a run shorter than min_frames makes none either.
    assert find_events(scores_with(30, [(0, 30, 0.9), (10, 11, 2.0)]), 1.0, 10, boxes_for(30), 2, hold=0.3) == []


@pytest.mark.parametrize("seed", range(40))
def test_stream_events_with_a_hold_equal_find_events(seed: int) -> None:
    """Frame by frame, with a hold, the events (their frames, peaks and the frames their tracks cover) are those
    find_events cuts from the whole series."""
    from callm.ae.online import StreamEvents

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    scores = np.convolve(rng.normal(0, 1, n + 8), np.ones(9) / 3, mode="valid")  # runs, as smoothed scores have
    threshold, hold = 1.2, float(rng.choice([-0.5, 0.2, 0.8, 1.2]))
    min_frames, max_gap = int(rng.integers(1, 6)), int(rng.integers(0, 4))
    expected = find_events(scores, threshold, 10, boxes_for(n), min_frames, max_gap, hold=hold)
    stream = StreamEvents(threshold, 10, min_frames, max_gap, update_every=1000, hold=hold)
    changes = []
    for frame, score in enumerate(scores):
        region = np.array([[frame, 0, frame + 4, 4, score]], np.float32)
        changes += stream.push(frame, float(score), boxes_for(n)[frame].tolist(), region)
    changes += stream.flush()
    closed = [e for c, e in changes if c == "close"]
    assert [(e.start_frame, e.end_frame, e.peak_frame, e.peak_score, e.box) for e in closed] == [
        (e.start_frame, e.end_frame, e.peak_frame, e.peak_score, e.box) for e in expected
    ]
    assert sum(c == "open" for c, _ in changes) == len(expected)
    for event in closed:  # every frame of the event has its region in the tracks
        assert sorted(entry[0] for track in event.tracks for entry in track) == list(
            range(event.start_frame, event.end_frame + 1)
        )


@pytest.mark.parametrize("seed", range(10))
def test_replayed_events_without_following_equal_find_events(seed: int) -> None:
    """``callm detect`` finds its events by replaying the video through StreamEvents: without following objects
    they are find_events' own."""
    from callm.ae.online import StreamEvents, replayed_events

    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 300))
    scores = np.convolve(rng.normal(0, 1, n + 8), np.ones(9) / 3, mode="valid")
    regions = [np.array([[f, 0, f + 4, 4, s]], np.float32) for f, s in enumerate(scores)]
    expected = find_events(scores, 1.2, 10, boxes_for(n), 3, 2, hold=0.4)
    found = replayed_events(StreamEvents(1.2, 10, 3, 2, n + 1, hold=0.4), scores, boxes_for(n), regions)
    assert [replace(e, tracks=[]) for e in found] == expected


def object_box(frame: int, x0: int, step: float = 2) -> list[float]:
    """An object moving right ``step`` pixels a frame from ``x0``."""
    return [x0 + step * frame, 50, x0 + step * frame + 20, 90]


def visits(
    n: int, objects: list[tuple[int, int, int, float]], above: dict[int, int], step: float = 2
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Scores and regions of ``n`` frames where each object ``(first, last, x0, level)`` is a region of score
    ``level`` while in view, moving ``step`` pixels a frame; in the frames of ``above`` (frame -> object index) the
    score passes the threshold 1.0 and that object is the frame's worst region."""
    scores = np.where(np.isin(np.arange(n), list(above)), 3.0, 0.0)
    regions = []
    for frame in range(n):
        found = [
            [*object_box(frame, x0, step), 3.0 if above.get(frame) == i else level]
            for i, (first, last, x0, level) in enumerate(objects)
            if first <= frame <= last
        ]
        found.sort(key=lambda r: -r[4])
        regions.append(np.array(found, np.float32).reshape(-1, 5))
    return scores, regions


def spans(scores: np.ndarray, regions: list[np.ndarray], follow: bool = True, fps: float = 10) -> list[tuple[int, int]]:
    from callm.ae.online import StreamEvents, replayed_events

    n = len(scores)
    events = replayed_events(
        StreamEvents(1.0, fps, 2, 2, n + 1, hold=0.5, follow=follow), scores, boxes_for(n), regions
    )
    return [(e.start_frame, e.end_frame) for e in events]


def test_an_event_covers_the_visit_of_the_object_that_set_it_off() -> None:
    # A slow object in view over frames 10-69 passes the threshold at 40-44 only; a walker far off all along.
    scores, regions = visits(80, [(10, 69, 0, 0.5), (0, 79, 300, 0.3)], {f: 0 for f in range(40, 45)})
    assert spans(scores, regions, follow=False) == [(40, 44)]
    assert spans(scores, regions) == [(10, 69)]
    # Where the object no longer stands out of normal footage (its score at or below the calibrated zero), it is
    # not followed: its visit counts from frame 25 here.
    for frame in range(10, 25):
        regions[frame][regions[frame][:, 0] < 300, 4] = -0.5
        regions[frame] = regions[frame][np.argsort(-regions[frame][:, 4])]
    assert spans(scores, regions) == [(25, 69)]


def test_the_object_followed_is_the_one_that_passed_the_threshold() -> None:
    # The object leaves after frame 45; at frame 44, still above the threshold, a walker is the frame's worst region.
    # The event keeps following its own object and ends with it, not with the walker at frame 79.
    above = {40: 0, 41: 0, 42: 0, 43: 0, 44: 1}
    scores, regions = visits(80, [(10, 45, 0, 0.5), (0, 79, 300, 0.3)], above)
    assert spans(scores, regions) == [(10, 45)]


def test_an_event_followed_back_starts_after_the_one_before() -> None:
    # Object A is in view over 10-30 (above at 20-22); object B all along (above at 60-62): B's event reaches back
    # only to where A's ended, and on to the end of the video.
    above = {20: 0, 21: 0, 22: 0, 60: 1, 61: 1, 62: 1}
    scores, regions = visits(80, [(10, 30, 0, 0.5), (0, 79, 300, 0.5)], above)
    assert spans(scores, regions) == [(10, 30), (31, 79)]


def test_an_object_may_be_missed_longer_in_frames_at_a_faster_frame_rate() -> None:
    from callm.ae.online import StreamEvents, replayed_events

    # An object in view over frames 10-69 is missed over frames 20-25. At 10 frames/s (moving 2 pixels a frame)
    # that is 0.6 s: it left. At 25 frames/s (the same speed in time, 0.8 pixels a frame) it is 0.24 s, a short
    # occlusion, as 3 frames are at 10 frames/s: followed across.
    for fps, step, expected in ((10, 2, [(26, 69)]), (25, 0.8, [(10, 69)])):
        scores, regions = visits(80, [(10, 69, 0, 0.5)], {f: 0 for f in range(40, 45)}, step)
        for frame in range(20, 26):
            regions[frame] = regions[frame][:0]
        assert spans(scores, regions, fps=fps) == expected
    # The event's track crosses the same gap.
    events = StreamEvents(1.0, 25, 2, 2, 81, hold=0.5, follow=True)
    assert [len(e.tracks) for e in replayed_events(events, scores, boxes_for(80), regions)] == [1]
