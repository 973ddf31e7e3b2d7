"""Where stage 1 says the anomaly is, against pixel masks: one frame's measures, a video's masks, the pixel-level
criterion and ROC over videos, and ``callm eval --masks`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import assert_user_error
from synthetic import make_frames, write_frame_folder
from typer.testing import CliRunner

from callm.cli import app
from callm.errors import CallmError
from callm.localisation import COVERAGE, blob_boxes, localisation, localise_frame, mask_files, shown_regions
from callm.results import Detection, Event

DETECT_ARGS = ["--device", "cpu", "--dtype", "fp32"]
SIZE = (20, 20)  # (height, width) of the hand-built frames


def boxes(*rows: list[float]) -> np.ndarray:
    return np.array(rows, np.float32).reshape(-1, len(rows[0]) if rows else 5)


def square_mask(y0: int = 5, x0: int = 5, side: int = 10, size: tuple[int, int] = SIZE) -> np.ndarray:
    mask = np.zeros(size, bool)
    mask[y0 : y0 + side, x0 : x0 + side] = True
    return mask


# --- one frame -------------------------------------------------------------------------------------------------


def test_a_box_on_the_mask_covers_it_all() -> None:
    found = localise_frame(boxes([5, 5, 15, 15, 2.0]), square_mask())
    assert found.abnormal and found.has_regions
    assert (found.coverage, found.iou, found.area_ratio) == pytest.approx((1.0, 1.0, 1.0))


def test_part_of_the_mask_covered() -> None:
    found = localise_frame(boxes([5, 5, 8, 15, 2.0]), square_mask())  # 3 of the 10 columns
    assert found.coverage == pytest.approx(0.3)
    assert found.iou == pytest.approx(0.3)
    assert found.area_ratio == pytest.approx(0.3)


def test_a_box_twice_the_mask() -> None:
    found = localise_frame(boxes([0, 5, 20, 15, 2.0]), square_mask())
    assert found.coverage == pytest.approx(1.0)
    assert found.iou == pytest.approx(0.5)
    assert found.area_ratio == pytest.approx(2.0)


def test_regions_elsewhere_cover_nothing() -> None:
    found = localise_frame(boxes([0, 0, 4, 4, 2.0]), square_mask())
    assert found.abnormal and found.has_regions
    assert (found.coverage, found.iou) == (0.0, 0.0)
    assert found.area_ratio == pytest.approx(16 / 100)


def test_iou_is_boxes_against_the_blobs_boxes_not_pixels() -> None:
    mask = np.zeros(SIZE, bool)
    np.fill_diagonal(mask[2:12, 4:14], True)  # a thin diagonal stroke: 10 pixels, bounding box 10x10
    found = localise_frame(boxes([4, 2, 14, 12, 1.0]), mask)
    assert found.iou == pytest.approx(1.0)  # the box is the stroke's bounding box
    assert found.coverage == pytest.approx(1.0)
    assert found.area_ratio == pytest.approx(10.0)  # but 100 pixels of box for 10 of anomaly


def test_two_blobs_one_found() -> None:
    mask = square_mask(0, 0, 4) | square_mask(10, 10, 8)  # 16 + 64 pixels
    assert blob_boxes(mask).tolist() == [[0, 0, 4, 4], [10, 10, 18, 18]]
    found = localise_frame(boxes([10, 10, 18, 18, 1.0]), mask)
    assert found.coverage == pytest.approx(64 / 80)
    assert found.iou == pytest.approx(64 / 80)
    # Several regions count as their union.
    both = localise_frame(boxes([10, 10, 18, 18, 1.0], [0, 0, 4, 4, 0.5], [12, 12, 14, 14, 0.2]), mask)
    assert (both.coverage, both.iou, both.area_ratio) == pytest.approx((1.0, 1.0, 1.0))


def test_boxes_in_fractional_pixels_or_past_the_edges() -> None:
    # A box covers every pixel it touches; one reaching past the frame is cut at its edge, not wrapped round.
    found = localise_frame(boxes([-5.0, -3.0, 2.2, 2.5]), square_mask(0, 0, 3))
    assert found.coverage == pytest.approx(1.0) and found.area_ratio == pytest.approx(1.0)
    assert localise_frame(boxes([17.5, 17.5, 30, 30]), square_mask(17, 17, 3)).coverage == pytest.approx(1.0)
    assert localise_frame(boxes([18.0, 18.0, 30, 30]), square_mask(17, 17, 3)).coverage == pytest.approx(4 / 9)


def test_a_normal_frame() -> None:
    empty = np.zeros(SIZE, bool)
    flagged = localise_frame(boxes([0, 0, 5, 5, 1.0]), empty)
    assert not flagged.abnormal and flagged.has_regions and flagged.coverage == 0.0
    quiet = localise_frame(np.zeros((0, 5), np.float32), empty)
    assert not quiet.abnormal and not quiet.has_regions
    missed = localise_frame(np.zeros((0, 5), np.float32), square_mask())
    assert missed.abnormal and not missed.has_regions and missed.coverage == 0.0


# --- a video's masks -------------------------------------------------------------------------------------------


def write_masks(folder: Path, masks: np.ndarray | list[np.ndarray]) -> Path:
    return write_frame_folder(folder, np.stack([m.astype(np.uint8) * 255 for m in masks]))


def test_mask_files_are_one_per_frame_in_natural_order(tmp_path: Path) -> None:
    folder = write_masks(tmp_path / "01", [np.zeros(SIZE, bool)] * 12)
    (folder / "notes.txt").write_text("not a mask")
    files = mask_files(folder, 12)
    assert [f.name for f in files] == [f"{i}.png" for i in range(12)]


def test_mask_files_refuse_a_folder_of_another_length_or_none(tmp_path: Path) -> None:
    folder = write_masks(tmp_path / "01", [np.zeros(SIZE, bool)] * 11)
    with pytest.raises(CallmError, match="11 masks for a video of 12 frames"):
        mask_files(folder, 12)
    with pytest.raises(CallmError, match="no masks for this video"):
        mask_files(tmp_path / "02", 12)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(CallmError, match="no masks"):
        mask_files(tmp_path / "a-file", 12)


# --- over videos -------------------------------------------------------------------------------------------------


def detection(
    scores: list[float], regions: list[np.ndarray], events: list[Event], size: tuple[int, int] = SIZE
) -> Detection:
    n = len(scores)
    return Detection(
        video="v", fps=10.0, num_frames=n, frame_size=size, threshold=0.5, psnr=np.zeros(n),
        scores=np.array(scores, np.float64), events=events, window_starts=[], gated_starts=[], seconds=1.0,
        regions=regions,
    )  # fmt: skip


def event(start: int, end: int, track: list[list[float]]) -> Event:
    return Event(start, end, start / 10, (end + 1) / 10, start, 1.0, [0, 0, 1, 1], tracks=[track])


def hand_built(tmp_path: Path) -> tuple[Detection, Path]:
    """Six frames, 2-4 abnormal (a 10x10 square); an event over frames 1-3 whose track is what the user sees."""
    nowhere = boxes([0, 0, 2, 2, 1.0])
    regions = [nowhere] * 6  # a frame's own regions: replaced inside the event by the track's entries
    regions[4] = boxes([5, 5, 10, 15, 1.0])  # half the square, but frame 4 is outside the event
    track = [
        [1, 0, 0, 4, 4, 1.0],  # a normal frame flagged
        [2, 5, 5, 15, 15, 2.0],  # all of the square
        [3, 5, 5, 8, 15, 1.5],  # 30% of it: flagged but not detected
    ]
    scores = [0.1, 0.85, 0.9, 0.8, 0.7, 0.2]
    masks = write_masks(tmp_path / "01", [square_mask() if 2 <= i <= 4 else np.zeros(SIZE, bool) for i in range(6)])
    return detection(scores, regions, [event(1, 3, track)]), masks


def test_shown_regions_are_the_tracks_inside_events(tmp_path: Path) -> None:
    found, _ = hand_built(tmp_path)
    shown = shown_regions(found)
    assert shown[0].tolist() == [[0, 0, 2, 2, 1.0]]
    assert shown[2].tolist() == [[5, 5, 15, 15, 2.0]]
    assert shown[4].tolist() == [[5, 5, 10, 15, 1.0]]


def test_the_measures_on_hand_built_detections(tmp_path: Path) -> None:
    found, masks = hand_built(tmp_path)
    measures = localisation([found], [masks])
    assert measures["abnormal_frames"] == 3 and measures["normal_frames"] == 3
    assert measures["detected_at_threshold"] == pytest.approx(1 / 3)  # frame 2 only
    assert measures["flagged_abnormal_at_threshold"] == pytest.approx(2 / 3)  # frames 2 and 3
    assert measures["false_positive_rate_at_threshold"] == pytest.approx(1 / 3)  # frame 1
    assert measures["mean_iou_flagged_abnormal"] == pytest.approx((1.0 + 0.3) / 2)
    assert measures["median_area_ratio_flagged_abnormal"] == pytest.approx((1.0 + 0.3) / 2)
    assert measures["frames_covered_40_any_threshold"] == pytest.approx(2 / 3)  # frames 2 and 4
    # From the top score down: 2 (covered), 1 (normal), 3 (not covered), 4 (covered), 5 and 0 (normal):
    # the curve climbs to 1/3 at FPR 0, to 2/3 at FPR 1/3, and stays there to FPR 1.
    assert measures["pixel_auc"] == pytest.approx(1 / 3 * 1 / 3 + 2 / 3 * 2 / 3)
    assert "40%" in measures["criterion"]


def test_the_criterion_counts_exactly_forty_percent(tmp_path: Path) -> None:
    mask = square_mask(0, 0, 10)  # 100 pixels
    covered = [boxes([0, 0, 4, 10, 1.0]), boxes([0, 1, 4, 10, 1.0])]  # 40 and 36 pixels
    assert COVERAGE == 0.4
    for cover, expected in zip(covered, (1.0, 0.0), strict=True):
        regions = [cover, boxes([0, 0, 1, 1, 0.0])]
        masks = write_masks(tmp_path / str(expected), [mask, np.zeros(SIZE, bool)])
        measures = localisation([detection([1.0, 0.0], regions, [event(0, 0, [[0, *cover[0].tolist()]])])], [masks])
        assert measures["detected_at_threshold"] == expected
        assert measures["pixel_auc"] == expected


def test_perfect_regions_make_the_pixel_auc_the_frame_auc(tmp_path: Path) -> None:
    from callm.metrics import roc_auc

    rng = np.random.default_rng(3)
    n = 30
    abnormal = rng.random(n) < 0.4
    scores = rng.random(n) + abnormal * 0.3
    on_it = boxes([5, 5, 15, 15, 1.0])
    masks = write_masks(tmp_path / "01", [square_mask() if a else np.zeros(SIZE, bool) for a in abnormal])
    measures = localisation([detection(scores.tolist(), [on_it] * n, [])], [masks])
    assert measures["pixel_auc"] == pytest.approx(roc_auc(abnormal, scores))
    assert measures["frames_covered_40_any_threshold"] == 1.0
    # No events: nothing flagged at the threshold, and nothing measured there.
    assert measures["flagged_abnormal_at_threshold"] == 0.0
    assert measures["mean_iou_flagged_abnormal"] is None and measures["median_area_ratio_flagged_abnormal"] is None


def test_tied_scores_do_not_depend_on_frame_order(tmp_path: Path) -> None:
    on_it = boxes([5, 5, 15, 15, 1.0])
    masks = write_masks(tmp_path / "01", [square_mask(), np.zeros(SIZE, bool)])
    measures = localisation([detection([1.0, 1.0], [on_it] * 2, [])], [masks])
    assert measures["pixel_auc"] == pytest.approx(0.5)  # one threshold turns both frames positive at once


def test_measures_over_videos_pool_their_frames(tmp_path: Path) -> None:
    first, first_masks = hand_built(tmp_path / "a")
    # A second video: two normal frames, neither flagged, and one abnormal frame found by its event.
    masks = write_masks(tmp_path / "b" / "02", [np.zeros(SIZE, bool), square_mask(), np.zeros(SIZE, bool)])
    second = detection([0.0, 0.95, 0.05], [boxes([0, 0, 1, 1, 0.0])] * 3, [event(1, 1, [[1, 5, 5, 15, 15, 3.0]])])
    measures = localisation([first, second], [first_masks, masks])
    assert measures["abnormal_frames"] == 4 and measures["normal_frames"] == 5
    assert measures["detected_at_threshold"] == pytest.approx(2 / 4)
    assert measures["false_positive_rate_at_threshold"] == pytest.approx(1 / 5)


def test_masks_must_hold_normal_and_abnormal_frames(tmp_path: Path) -> None:
    masks = write_masks(tmp_path / "01", [np.zeros(SIZE, bool)] * 3)
    with pytest.raises(CallmError, match="normal and abnormal frames"):
        localisation([detection([0.0] * 3, [boxes([0, 0, 1, 1, 0.0])] * 3, [])], [masks])


def test_masks_that_do_not_fit_the_video_are_refused(tmp_path: Path) -> None:
    regions = [boxes([0, 0, 1, 1, 0.0])] * 2
    small = write_masks(tmp_path / "small", [np.zeros((10, 20), bool), square_mask(size=(10, 20), side=3)])
    with pytest.raises(CallmError, match="20x10 mask for 20x20 frames"):
        localisation([detection([0.0, 1.0], regions, [])], [small])
    unreadable = write_masks(tmp_path / "bad", [np.zeros(SIZE, bool), square_mask()])
    (unreadable / "1.png").write_bytes(b"not a png")
    with pytest.raises(CallmError, match="not a readable mask"):
        localisation([detection([0.0, 1.0], regions, [])], [unreadable])
    with pytest.raises(CallmError, match="3 masks for a video of 2 frames"):
        localisation([detection([0.0, 1.0], regions, [])], [write_masks(tmp_path / "long", [square_mask()] * 3)])
    no_regions = detection([0.0, 1.0], regions, [])
    no_regions.regions = None
    with pytest.raises(CallmError, match="no regions"):
        localisation([no_regions], [unreadable])


# --- callm eval --masks ----------------------------------------------------------------------------------------

LOCALISATION_FIELDS = {
    "criterion", "abnormal_frames", "normal_frames", "detected_at_threshold", "flagged_abnormal_at_threshold",
    "false_positive_rate_at_threshold", "pixel_auc", "mean_iou_flagged_abnormal",
    "median_area_ratio_flagged_abnormal", "frames_covered_40_any_threshold",
}  # fmt: skip


@pytest.fixture(scope="module")
def masked_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/testing/frames/01 and 02 with an intruder each, root/masks/01 and 02 marking exactly its pixels,
    and root/gt.npy the frames that have any."""
    root = tmp_path_factory.mktemp("masked")
    labels = []
    for name, seed, span in (("01", 20, (24, 44)), ("02", 21, (8, 28))):
        frames = make_frames(64, seed=seed, intruder=span)
        write_frame_folder(root / "testing" / "frames" / name, frames)
        masks = frames != make_frames(64, seed=seed)
        write_masks(root / "masks" / name, masks)
        labels.append(masks.any(axis=(1, 2)))
    np.save(root / "gt.npy", np.concatenate(labels).astype(np.uint8))
    return root


def test_eval_with_masks_measures_localisation(
    runner: CliRunner, weights_dir: Path, masked_dataset: Path, tmp_path: Path
) -> None:
    root = masked_dataset
    out = tmp_path / "metrics.json"
    args = ["eval", str(root), "--labels", str(root / "gt.npy"), "--masks", str(root / "masks")]
    result = runner.invoke(app, [*args, "-w", str(weights_dir), "--json", str(out), *DETECT_ARGS])
    assert result.exit_code == 0, result.output
    assert "localisation:" in result.stdout and "pixel-level AUC" in " ".join(result.stdout.split())
    measures = json.loads(out.read_text())["localisation"]
    assert set(measures) == LOCALISATION_FIELDS
    assert measures["abnormal_frames"] == 40 and measures["normal_frames"] == 88
    shares = ["detected_at_threshold", "flagged_abnormal_at_threshold", "false_positive_rate_at_threshold",
              "pixel_auc", "frames_covered_40_any_threshold", "mean_iou_flagged_abnormal"]  # fmt: skip
    for name in shares:
        assert 0.0 <= measures[name] <= 1.0, name
    assert measures["detected_at_threshold"] <= measures["flagged_abnormal_at_threshold"]
    assert measures["detected_at_threshold"] <= measures["frames_covered_40_any_threshold"]
    assert measures["pixel_auc"] <= measures["frames_covered_40_any_threshold"] + 1e-9  # the curve tops out there
    # The regions find the intruder: most of its frames are flagged with most of its pixels covered.
    assert measures["detected_at_threshold"] >= 0.7 and measures["pixel_auc"] >= 0.7
    assert measures["median_area_ratio_flagged_abnormal"] > 0


def test_eval_without_masks_has_no_localisation(
    runner: CliRunner, weights_dir: Path, masked_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "metrics.json"
    args = ["eval", str(masked_dataset), "--labels", str(masked_dataset / "gt.npy"), "-w", str(weights_dir)]
    result = runner.invoke(app, [*args, "--json", str(out), *DETECT_ARGS])
    assert result.exit_code == 0, result.output
    assert "localisation" not in json.loads(out.read_text()) and "localisation:" not in result.stdout


@pytest.mark.parametrize("problem", ["short", "missing"])
def test_eval_refuses_masks_that_do_not_match_before_scoring(
    runner: CliRunner, weights_dir: Path, masked_dataset: Path, tmp_path: Path, problem: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from callm.cascade import Stage1

    masks = tmp_path / "masks"
    write_masks(masks / "01", [np.zeros((48, 64), bool)] * 64)
    if problem == "short":
        write_masks(masks / "02", [np.zeros((48, 64), bool)] * 63)
        expected = "63 masks for a video of 64 frames"
    else:
        expected = "no masks for this video"
    monkeypatch.setattr(Stage1, "detect", lambda *a, **k: pytest.fail("scored before checking the masks"))
    args = ["eval", str(masked_dataset), "--labels", str(masked_dataset / "gt.npy"), "--masks", str(masks)]
    line = assert_user_error(runner.invoke(app, [*args, "-w", str(weights_dir), *DETECT_ARGS]), expected)
    assert str(masks / "02") in line


def test_eval_refuses_masks_of_another_size_in_one_line(
    runner: CliRunner, weights_dir: Path, masked_dataset: Path, tmp_path: Path
) -> None:
    masks = tmp_path / "masks"
    for name in ("01", "02"):
        write_masks(masks / name, [np.zeros((24, 32), bool)] * 64)
    args = ["eval", str(masked_dataset), "--labels", str(masked_dataset / "gt.npy"), "--masks", str(masks)]
    assert_user_error(runner.invoke(app, [*args, "-w", str(weights_dir), *DETECT_ARGS]), "32x24 mask for 64x48 frames")


def test_masks_written_as_images_read_back_as_booleans(tmp_path: Path) -> None:
    # The masks the eval reads are thresholded at > 0: a faint grey pixel is anomalous too.
    folder = tmp_path / "01"
    folder.mkdir()
    mask = np.zeros(SIZE, np.uint8)
    mask[5:15, 5:15] = 1
    cv2.imwrite(str(folder / "0.png"), mask)
    cv2.imwrite(str(folder / "1.png"), np.zeros(SIZE, np.uint8))
    regions = [boxes([5, 5, 15, 15, 1.0]), boxes([0, 0, 1, 1, 0.0])]
    measures = localisation([detection([1.0, 0.0], regions, [event(0, 0, [[0, 5, 5, 15, 15, 1.0]])])], [folder])
    assert measures["abnormal_frames"] == 1 and measures["detected_at_threshold"] == 1.0
