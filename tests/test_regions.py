"""Where stage 1 says a frame is abnormal: regions of a cell-score map, their storage, tracks over an event, the
tracks in the detect JSON, and the whole path on a synthetic intruder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import INTRUDER
from synthetic import make_frames
from torch import nn
from typer.testing import CliRunner

from callm.ae.calibrate import Calibration
from callm.ae.model import AEConfig
from callm.ae.regions import MIN_TRACK, TRACK_GAP, RegionFinder, box_iou, link_tracks, regions_of
from callm.ae.score import MAX_REGIONS, ErrorMeasure, FrameRegions, FrameScorer, psnr_from_mse
from callm.cli import app
from callm.results import Detection, Event, read_detection

DETECT_ARGS = ["--device", "cpu", "--dtype", "fp32"]
NONE = np.zeros((0, 5), np.float32)


def region(x0: float, y0: float, x1: float, y1: float, score: float) -> np.ndarray:
    return np.array([[x0, y0, x1, y1, score]], np.float32)


def frame_of(*boxes: list[float]) -> np.ndarray:
    """One frame's regions, worst first as the finder gives them."""
    rows = sorted(boxes, key=lambda b: -b[4])
    return np.array(rows, np.float32).reshape(-1, 5)


# --- regions of a cell-score map -------------------------------------------------------------------------------


def test_one_hot_blob_gives_one_box_over_exactly_its_cells_in_frame_pixels() -> None:
    scores = np.zeros((20, 16), np.float32)
    scores[4:10, 2:9] = 3.0  # a shoulder well below the share: not part of the region
    scores[5:8, 3:7] = 11.0
    scores[6, 5] = 12.0  # the blob's peak
    # Cells of a 40x64 frame: 2 px high, 4 px wide.
    found = regions_of(scores, (40, 64), share=0.85)
    assert found.dtype == np.float32 and found.shape == (1, 5)
    assert found[0].tolist() == pytest.approx([3 * 4, 5 * 2, 7 * 4, 8 * 2, 12.0])


def test_tightening_shrinks_a_box_to_its_pixels_of_high_error_and_leaves_the_rest_of_the_frame_out() -> None:
    scores = np.zeros((10, 10), np.float32)
    scores[2:6, 2:6] = 5.0  # one region of 4x4 cells
    error = np.zeros((80, 80), np.float32)  # 8 error pixels a cell, in a 160x160 frame: 2 frame pixels each
    error[30:38, 22:34] = 1.0  # the object: inside the region's cells (16..48), off their edges
    error[70:78, 70:78] = 5.0  # stronger, but outside the region: not its business
    loose = regions_of(scores, (160, 160), share=0.85)
    tight = regions_of(scores, (160, 160), share=0.85, error=error, tighten=0.5)
    assert loose[0, :4].tolist() == [32, 32, 96, 96]
    x0, y0, x1, y1 = tight[0, :4]
    # The blurred object's box, at most the blur's 2 error pixels (4 frame pixels) wider each side.
    assert 40 <= x0 <= 44 and 56 <= y0 <= 60 and 68 <= x1 <= 72 and 76 <= y1 <= 80
    assert tight[0, 4] == loose[0, 4]
    # A region whose cells hold no error keeps its cell box.
    assert regions_of(scores, (160, 160), 0.85, np.zeros((80, 80), np.float32), 0.5)[0, :4].tolist() == [32, 32, 96, 96]


def test_a_lower_share_reaches_further_from_the_peak() -> None:
    scores = np.zeros((20, 16), np.float32)
    scores[4:10, 2:9] = 3.0
    scores[5:8, 3:7] = 11.0
    found = regions_of(scores, (20, 16), share=0.2)  # one pixel a cell
    assert found[:, :4].tolist() == [[2, 4, 9, 10]]


def test_two_separated_blobs_give_two_regions_worst_first_scored_by_their_peaks() -> None:
    scores = np.zeros((10, 10), np.float32)
    scores[1:3, 1:3] = [[10.0, 10.5], [10.2, 10.0]]  # peak 10.5
    scores[6:9, 5:8] = 11.0
    scores[7, 6] = 12.0
    found = regions_of(scores, (100, 200), share=0.8)
    assert found.shape == (2, 5)
    assert found[:, 4].tolist() == pytest.approx([12.0, 10.5])
    assert found[0, :4].tolist() == pytest.approx([5 * 20, 6 * 10, 8 * 20, 9 * 10])
    assert found[1, :4].tolist() == pytest.approx([1 * 20, 1 * 10, 3 * 20, 3 * 10])


def test_diagonal_neighbours_are_one_region() -> None:
    scores = np.zeros((6, 6), np.float32)
    scores[1, 1] = scores[2, 2] = scores[3, 3] = 5.0
    found = regions_of(scores, (6, 6), share=0.85)
    assert found[:, :4].tolist() == [[1, 1, 4, 4]]


def test_more_blobs_than_max_regions_keep_the_worst() -> None:
    scores = np.zeros((4, 2 * (MAX_REGIONS + 2)), np.float32)
    peaks = [10.0 + i for i in range(MAX_REGIONS + 2)]
    for i, peak in enumerate(peaks):
        scores[1, 2 * i] = peak  # isolated cells, one column apart
    found = regions_of(scores, scores.shape, share=0.5)
    assert len(found) == MAX_REGIONS
    assert found[:, 4].tolist() == pytest.approx(sorted(peaks, reverse=True)[:MAX_REGIONS])


def test_a_flat_map_is_one_region_over_the_whole_frame() -> None:
    found = regions_of(np.full((5, 7), -1.5, np.float32), (48, 64), share=0.85)
    assert found.tolist() == [[0, 0, 64, 48, -1.5]]


def calibration(flow_weight: float = 0.0, rows: int = 4) -> Calibration:
    return Calibration(
        error="motion", patch=0, top_k=1, smooth_sigma=0.0, stride=8, psnr_center=40.0, psnr_scale=2.0,
        threshold=1.0, quantile=0.99, holdout_frames=0, holdout_videos=(), flow_weight=flow_weight,
        speed_profile=(1.0,) * rows if flow_weight else (),
    )  # fmt: skip


def test_region_finder_puts_the_box_on_the_autoencoders_error() -> None:
    error = torch.full((64, 64), 0.01)  # the rest of the frame reconstructs about as well as usual
    error[24:40, 24:40] = 0.5  # 2x2 cells of 8 px, in a map of 8x8 cells (no flow: cells of 8 model pixels)
    found = RegionFinder(calibration())(error, None, (128, 128))
    assert found[0, :4].tolist() == pytest.approx([48, 48, 80, 80])  # scaled from 64 to 128 pixels
    assert found[0, 4] > 0  # worse than the calibration's typical frame


def test_region_finder_follows_the_flow_when_it_weighs_in() -> None:
    cells = np.zeros((4, 4), np.float32)
    cells[2, 1] = 5.0  # a fast cell where the autoencoder sees nothing wrong
    found = RegionFinder(calibration(flow_weight=1.0))(torch.zeros(32, 32), cells, (40, 80))
    assert found[0, :4].tolist() == pytest.approx([20, 20, 40, 30])


# --- tracks ----------------------------------------------------------------------------------------------------


def test_box_iou() -> None:
    a = np.array([0, 0, 10, 10.0])
    assert box_iou(a, a) == pytest.approx(1.0)
    assert box_iou(a, np.array([5, 0, 15, 10.0])) == pytest.approx(50 / 150)
    assert box_iou(a, np.array([10, 0, 20, 10.0])) == 0.0  # touching
    assert box_iou(a, np.array([30, 30, 40, 40.0])) == 0.0
    assert box_iou(np.zeros(4), np.zeros(4)) == 0.0  # empty boxes, no division by zero


def test_two_objects_moving_apart_keep_a_track_each() -> None:
    frames = 10
    left = [[40 - 3 * t, 10, 50 - 3 * t, 20] for t in range(frames)]
    right = [[50 + 3 * t, 12, 60 + 3 * t, 22] for t in range(frames)]
    regions = []
    for t in range(frames):  # which one is worse swaps every frame: linking must not go by rank
        regions.append(frame_of([*left[t], 5.0 - t % 2], [*right[t], 4.0 + t % 2]))
    tracks = link_tracks(regions, 0, frames - 1)
    assert len(tracks) == 2
    paths = sorted([[e[1:5] for e in t] for t in tracks], key=lambda p: p[0][0])
    assert paths == [left, right]
    for track in tracks:
        assert [e[0] for e in track] == list(range(frames))


@pytest.mark.parametrize(
    "missing",
    [
        1,
        TRACK_GAP - 1,
        TRACK_GAP,
    ],
)
def test_an_object_missing_a_few_frames_continues_its_track(missing: int) -> None:
    before, after = MIN_TRACK + 1, MIN_TRACK + 1  # both halves long enough to stand as tracks of their own
    regions = [region(2 * t, 10, 2 * t + 10, 20, 1.0) for t in range(before)]
    regions += [NONE] * missing
    regions += [region(2 * t, 10, 2 * t + 10, 20, 1.0) for t in range(before + missing, before + missing + after)]
    tracks = link_tracks(regions, 0, len(regions) - 1)
    assert len(tracks) == 1
    assert len(tracks[0]) == before + after


def test_an_object_missing_longer_than_the_gap_starts_a_new_track() -> None:
    missing = TRACK_GAP + 1
    regions = [region(2 * t, 10, 2 * t + 10, 20, 1.0) for t in range(4)]
    regions += [NONE] * missing + [region(2 * t, 10, 2 * t + 10, 20, 1.0) for t in range(4 + missing, 8 + missing)]
    tracks = link_tracks(regions, 0, len(regions) - 1)
    assert sorted(len(t) for t in tracks) == [4, 4]


def test_one_frame_flicker_is_dropped_unless_its_frame_would_have_no_region() -> None:
    frames = 10
    regions = [region(20 + t, 20, 30 + t, 30, 1.0) for t in range(frames)]
    # Frame 5: a far-off flicker, worse than the object, beside it: dropped.
    regions[5] = frame_of([20 + 5, 20, 30 + 5, 30, 1.0], [80, 0, 90, 8, 2.0])
    # Frame 7: the object is not found and the flicker is all the frame has: kept, in the main track.
    regions[7] = frame_of([0, 60, 8, 70, 1.5])
    tracks = link_tracks(regions, 0, frames - 1)
    entries = [e for t in tracks for e in t]
    assert [80, 0, 90, 8] not in [e[1:5] for e in entries]
    assert [7, 0, 60, 8, 70, 1.5] in tracks[0]
    assert sorted(e[0] for e in entries) == list(range(frames))  # every frame once


def test_a_strong_one_frame_flicker_is_dropped_too() -> None:
    regions = [region(20 + t, 20, 30 + t, 30, 1.0) for t in range(10)]
    regions[5] = frame_of([25, 20, 35, 30, 1.0], [80, 0, 90, 8, 50.0])
    tracks = link_tracks(regions, 0, 9)
    assert [80, 0, 90, 8] not in [e[1:5] for t in tracks for e in t]


@pytest.mark.parametrize("seed", range(5))
def test_tracks_cover_every_frame_with_regions_once_in_frame_order(seed: int) -> None:
    rng = np.random.default_rng(seed)
    regions = []
    for _ in range(40):
        count = int(rng.integers(0, MAX_REGIONS + 1))
        xy = rng.uniform(0, 60, (count, 2))
        size = rng.uniform(4, 20, (count, 2))
        boxes = np.hstack([xy, xy + size, rng.normal(0, 3, (count, 1))]).tolist()
        regions.append(frame_of(*boxes))
    start, end = 5, 34
    tracks = link_tracks(regions, start, end)
    with_regions = {f for f in range(start, end + 1) if len(regions[f])}
    assert {e[0] for t in tracks for e in t} == with_regions
    for track in tracks:
        frames = [e[0] for e in track]
        assert frames == sorted(frames) and len(set(frames)) == len(frames)  # one entry a frame per track
        for entry in track:
            assert len(entry) == 6
            frame, box, score = entry[0], entry[1:5], entry[5]
            assert all(isinstance(v, int) for v in (frame, *box))
            # Each entry is one of its frame's regions, the box in whole pixels and the score to 3 decimals.
            assert any(
                np.allclose(box, np.round(r[:4]), atol=0) and score == round(float(r[4]), 3) for r in regions[frame]
            )
    # A region in two tracks would be drawn twice.
    for frame in with_regions:
        shown = [tuple(e[1:]) for t in tracks for e in t if e[0] == frame]
        assert len(shown) == len(set(shown)) <= len(regions[frame])


def test_no_regions_no_tracks() -> None:
    assert link_tracks([NONE] * 5, 0, 4) == []


# --- FrameRegions ----------------------------------------------------------------------------------------------


def regions_n(k: int, base: float = 0.0) -> np.ndarray:
    return np.array([[base + i, base + i, base + i + 1, base + i + 1, 10.0 - i] for i in range(k)], np.float32)


def test_frame_regions_across_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FrameRegions, "BLOCK", 4)
    stored = FrameRegions()
    stored[0] = regions_n(1, 0)
    stored[5] = regions_n(2, 5)
    stored[13] = regions_n(3, 13)  # block 2 (frames 8-11) never touched
    assert len(stored) == 14
    assert stored[0].tolist() == regions_n(1, 0).tolist()
    assert stored[5].tolist() == regions_n(2, 5).tolist()
    assert stored[13].tolist() == regions_n(3, 13).tolist()
    for empty in (1, 4, 6, 9, 12):  # in an allocated block or in none
        assert stored[empty].shape == (0, 5) and stored[empty].dtype == np.float32
    assert stored[-1].tolist() == stored[13].tolist()
    assert stored[-14].tolist() == stored[0].tolist()
    for outside in (14, -15):
        with pytest.raises(IndexError):
            stored[outside]
    assert [len(r) for r in stored[4:8]] == [0, 2, 0, 0]
    assert [len(r) for r in stored[::5]] == [1, 2, 0]
    assert [len(r) for r in stored[-2:]] == [0, 3]
    assert len(list(stored)) == 14  # iterates as a Sequence


def test_frame_regions_truncate_overwrite_and_copy() -> None:
    stored = FrameRegions()
    stored[2] = regions_n(MAX_REGIONS + 3)
    assert stored[2].tolist() == regions_n(MAX_REGIONS).tolist()  # the worst MAX_REGIONS, in order
    stored[2] = regions_n(1, 7)
    assert stored[2].tolist() == regions_n(1, 7).tolist()  # an overwrite with fewer shows only them
    stored[2][0, 0] = -99
    assert stored[2][0, 0] == 7  # a copy: the caller cannot change what is stored
    stored[2] = NONE
    assert stored[2].shape == (0, 5) and len(stored) == 3


class WindowStamp(nn.Module):
    """A fake autoencoder off by an amount that names the window: frames carry their index as pixel value."""

    STEP = 1e-3

    def __init__(self) -> None:
        super().__init__()
        self.config = AEConfig(height=16, width=16, widths=(1,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = torch.round((x[:, 0, 0, 0, 0] + 1) * 127.5)
        return x + ((start + 1) * self.STEP).view(-1, 1, 1, 1, 1)


def test_scorer_keeps_each_frames_regions_and_takes_its_box_from_the_worst() -> None:
    cells_seen: list[bool] = []

    def finder(error: torch.Tensor, cells: np.ndarray | None, frame_size: tuple[int, int]) -> np.ndarray:
        cells_seen.append(cells is not None)
        mse = float(error.mean())  # the frame's whole-frame MSE: its PSNR says which window scored it
        return np.array([[1, 2, 30, 40, mse], [5, 6, 7, 8, mse / 2]], np.float32)

    scorer = FrameScorer(
        WindowStamp(), ErrorMeasure("frame", 0), torch.device("cpu"), torch.float32, stride=8, regions=finder
    )
    frames = [np.full((16, 16), i, np.uint8) for i in range(40)]
    result = scorer.score_frames(iter(frames), (48, 64), "synthetic")
    assert result.regions is not None and len(result.regions) == 40
    assert all(cells_seen)  # the finder is given each frame's flow cells
    for i, found in enumerate(result.regions):
        assert found.shape == (2, 5)
        # Including the frames at the ends, which take their nearest scored frame's regions with its PSNR.
        assert psnr_from_mse(found[0, 4]) == pytest.approx(result.psnr[i], abs=1e-3)
    assert (result.boxes == [1, 2, 30, 40]).all()


# --- tracks in the results and their JSON ----------------------------------------------------------------------


def event_with(tracks: list[list[list[float]]]) -> Event:
    return Event(2, 6, 0.2, 0.7, 4, 3.0, [1, 2, 3, 4], tracks=tracks)


def detection_of(events: list[Event], n: int = 10) -> Detection:
    return Detection(
        video="v.avi", fps=10.0, num_frames=n, frame_size=(48, 64), threshold=1.0, psnr=np.full(n, 30.0),
        scores=np.linspace(0, 2, n), events=events, window_starts=[], gated_starts=[], seconds=0.5,
    )  # fmt: skip


TRACKS = [
    [[2, 10, 10, 20, 20, 3.0], [3, 12, 10, 22, 20, 2.5], [5, 14, 10, 24, 20, 2.0]],
    [[3, 40, 30, 50, 40, 2.75], [4, 41, 30, 51, 40, 1.0], [6, 42, 30, 52, 40, 0.5]],
]


def test_event_track_is_all_tracks_entries_in_frame_order_worst_first_within_a_frame() -> None:
    event = event_with(TRACKS)
    assert [(e[0], e[5]) for e in event.track] == [(2, 3.0), (3, 2.75), (3, 2.5), (4, 1.0), (5, 2.0), (6, 0.5)]
    data = event.to_dict()
    assert data["tracks"] == TRACKS and data["track"] == event.track
    assert event_with([]).to_dict()["track"] == []


def test_detect_json_round_trips_the_tracks(tmp_path: Path) -> None:
    detection = detection_of([event_with(TRACKS)])
    data = json.loads(json.dumps(detection.to_dict()))
    (event,) = data["events"]
    assert event["tracks"] == TRACKS and [e[0] for e in event["track"]] == [2, 3, 3, 4, 5, 6]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(data))
    back = read_detection(path)
    assert back.events == detection.events
    assert back.events[0].track == detection.events[0].track


def test_detect_json_written_before_tracks_still_reads(tmp_path: Path) -> None:
    data = json.loads(json.dumps(detection_of([event_with(TRACKS)]).to_dict()))
    for event in data["events"]:
        del event["tracks"], event["track"]
    (event,) = Detection.from_dict(data).events
    assert event.tracks == [] and event.track == []
    assert (event.start_frame, event.end_frame, event.box) == (2, 6, [1, 2, 3, 4])
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    assert read_detection(path).events == [event]


# --- end to end: the tracks follow the intruder ----------------------------------------------------------------


def intruder_boxes() -> dict[int, tuple[int, int, int, int]]:
    """Frame -> [x0, y0, x1, y1) of the intruder as drawn in the clip_dir fixture's intruder video."""
    with_it = make_frames(64, seed=10, intruder=INTRUDER)
    without = make_frames(64, seed=10)
    boxes = {}
    for t in range(*INTRUDER):
        ys, xs = np.nonzero(with_it[t] != without[t])
        boxes[t] = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return boxes


def overlaps(box: list[float], drawn: tuple[int, int, int, int]) -> bool:
    return min(box[2], drawn[2]) > max(box[0], drawn[0]) and min(box[3], drawn[3]) > max(box[1], drawn[1])


def test_detected_tracks_lie_on_the_intruders_path(
    runner: CliRunner, weights_dir: Path, clip_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "intruder.json"
    args = ["detect", str(clip_dir / "intruder.avi"), "-w", str(weights_dir), "--json", str(out), *DETECT_ARGS]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    detection = read_detection(out)
    drawn = intruder_boxes()
    lo, hi = INTRUDER
    events = [e for e in detection.events if e.start_frame < hi and e.end_frame >= lo]
    assert events, "no event over the intruder"
    for event, written in zip(detection.events, data["events"], strict=True):
        assert written["track"] == event.track and written["tracks"] == event.tracks
        # Every frame has regions, so every frame of the event has an entry, and none outside it.
        assert {e[0] for e in event.track} == set(range(event.start_frame, event.end_frame + 1))
        for entry in event.track:
            x0, y0, x1, y1 = entry[1:5]
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 48
    for event in events:
        worst: dict[int, list[float]] = {}
        for entry in event.track:  # frame order, worst first within a frame
            worst.setdefault(int(entry[0]), entry)
        for t in range(max(lo, event.start_frame), min(hi, event.end_frame + 1)):
            # The motion is seen where the block is and where it just was.
            near = [drawn[f] for f in (t, t - 1) if f in drawn]
            assert any(overlaps(worst[t][1:5], box) for box in near), (t, worst[t], near)
    # The main track runs with the intruder, right to left.
    main = [e for e in events[0].tracks[0] if lo <= e[0] < hi]
    assert len(main) >= MIN_TRACK
    on_path = [any(overlaps(e[1:5], drawn[f]) for f in (e[0], e[0] - 1) if f in drawn) for e in main]
    assert np.mean(on_path) >= 0.8
    assert main[0][1] + main[0][3] > main[-1][1] + main[-1][3]
