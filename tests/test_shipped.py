"""The shipped Ped2 weights on the shipped example clip (UCSD Ped2 test video 04): what the README promises.

Ground truth for test 04 marks frames 31-180 (1-based), i.e. 30-179 here: a cart and a cyclist cross. The
mask check needs the dataset (../shared/datasets/ped2) and is skipped without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from callm.cli import app

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "ped2_test04.mp4"
MASKS = REPO.parent / "shared" / "datasets" / "ped2" / "testing" / "masks" / "04"


@pytest.fixture(scope="module")
def detection(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from typer.testing import CliRunner

    out = tmp_path_factory.mktemp("shipped") / "t04.json"
    result = CliRunner().invoke(app, ["detect", str(EXAMPLE), "--json", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def test_the_shipped_model_finds_the_abnormal_part_of_the_example(detection: dict) -> None:
    assert detection["num_frames"] == 180 and detection["fps"] == 10.0
    events = detection["events"]
    assert events, "no event on a clip whose last 150 frames are abnormal"
    abnormal = set(range(30, 180))
    covered = {f for e in events for f in range(e["start_frame"], e["end_frame"] + 1)}
    assert len(covered & abnormal) >= 0.9 * len(abnormal)
    assert len(covered - abnormal) <= 10  # the first 30 normal frames are not flagged, give or take smoothing


@pytest.mark.skipif(not MASKS.is_dir(), reason="the Ped2 pixel masks are not on this machine")
def test_the_event_box_lands_on_an_abnormal_object(detection: dict) -> None:
    event = max(detection["events"], key=lambda e: e["peak_score"])
    mask = cv2.imread(str(MASKS / f"{event['peak_frame']:03d}.png"), cv2.IMREAD_GRAYSCALE) > 0
    x0, y0, x1, y1 = event["box"]
    assert mask[y0:y1, x0:x1].mean() > 0.5  # most of the box is the annotated anomaly


def test_the_shipped_vador_answers_with_the_time_of_the_anomaly(tmp_path: Path) -> None:
    # weights/ped2-vador trained on Ped2 test videos 07-12 (and normal training videos 01-12): test 04 is unseen.
    from typer.testing import CliRunner

    out = tmp_path / "ltc.json"
    args = ["detect", str(EXAMPLE), "--explainer", "ltc", "--vador", str(REPO / "weights" / "ped2-vador")]
    result = CliRunner().invoke(app, [*args, "--json", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    ltc = json.loads(out.read_text())["ltc"]
    assert ltc["threshold"] < 0.5  # calibrated on held-out normal videos, not the 0.5 line
    assert ltc["answer"].startswith("Yes, there are anomalies from")
    covered = {f for e in ltc["events"] for f in range(e["start_frame"], e["end_frame"] + 1)}
    assert len(covered & set(range(30, 180))) >= 0.9 * 150
    assert not covered & set(range(16))  # the first clip, all normal, is not flagged


def test_weights_check_knows_the_shipped_folders() -> None:
    from callm.inspect import inspect_weights

    for folder, kind in (("ped2", "callm-ae"), ("ped2-vador", "callm-vador")):
        info = inspect_weights(REPO / "weights" / folder)
        assert (info.kind, info.loadable) == (kind, True) and info.parameters
