"""`callm eval-vlm`: video-level accuracy of the yes/no answers, on a dataset root with frame labels or a video list."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_user_error
from synthetic import make_frames, write_frame_folder

from callm.cli import app
from callm.vlm.model import VideoLLM


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The community layout: testing/frames/<video>/ with one .npy of frame labels; videos 02 and 03 are abnormal."""
    root = tmp_path_factory.mktemp("dataset")
    for number in range(1, 5):
        write_frame_folder(root / "testing" / "frames" / f"{number:02d}", make_frames(20, seed=number))
    labels = np.zeros(80, np.uint8)
    labels[20 + 5 : 20 + 9] = 1
    labels[40 + 19] = 1  # one abnormal frame is enough
    np.save(root / "frame_labels.npy", labels)
    return root


def run(runner, data: Path, config: Path, out: Path, *extra: str) -> dict:
    result = runner.invoke(app, ["eval-vlm", str(data), "--vlm", str(config), "--json", str(out), *extra])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.stdout
    return json.loads(out.read_text())


def test_accuracy_on_a_labelled_dataset(runner, dataset: Path, lavis_config: Path, tmp_path: Path) -> None:
    result = run(runner, dataset, lavis_config, tmp_path / "r.json")
    rows = result["per_video"]
    assert [(Path(r["video"]).name, r["abnormal"]) for r in rows] == [
        ("01", False), ("02", True), ("03", True), ("04", False)
    ]  # fmt: skip
    for row in rows:
        if row["verdict"] == "unanswered":
            assert row["correct"] is None
        else:
            assert row["correct"] == ((row["verdict"] == "anomaly") == row["abnormal"])
        assert isinstance(row["answer"], str)
    assert result["accuracy"] == result["correct"] / 4 == sum(r["correct"] is True for r in rows) / 4
    assert result["videos"] == 4 and result["abnormal_videos"] == 2 and result["normal_videos"] == 2
    assert result["question"].startswith("Is anything abnormal")


def test_an_answer_of_no_everywhere_scores_the_share_of_normal_videos(
    runner, dataset: Path, lavis_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []

    def always_no(self, pixel_values, prompt, options):
        asked.append(prompt)
        assert pixel_values.shape[0] == 8  # frames sampled over the whole video
        return "No, people walk."

    monkeypatch.setattr(VideoLLM, "answer", always_no)
    result = run(runner, dataset, lavis_config, tmp_path / "r.json", "--question", "is it fine ?")
    assert (result["accuracy"], result["abnormal_accuracy"], result["normal_accuracy"]) == (0.5, 0.0, 1.0)
    assert all(p.endswith("is it fine ?###Assistant:") for p in asked) and len(asked) == 4
    # The frame times given in the prompt are spread over the whole 20-frame video, at the folder rate.
    assert "sampled at 0.0, 0.2, 0.5, 0.7, 1.0, 1.2, 1.5, 1.7 seconds" in asked[0]


def test_a_video_list(runner, dataset: Path, lavis_config: Path, tmp_path: Path) -> None:
    frames = dataset / "testing" / "frames"
    listing = tmp_path / "videos.txt"
    listing.write_text(f"# video label\n{frames / '01'} normal\n{frames / '02'}   1\n")
    result = run(runner, listing, lavis_config, tmp_path / "r.json")
    assert [(Path(r["video"]).name, r["abnormal"]) for r in result["per_video"]] == [("01", False), ("02", True)]

    listing.write_text(f"{frames / '01'} maybe\n")
    args = ["eval-vlm", str(listing), "--vlm", str(lavis_config)]
    assert_user_error(runner.invoke(app, args), "line 1: expected 'VIDEO LABEL'")
    assert_user_error(runner.invoke(app, [*args, "--labels", "x.npy"]), "--labels goes with a dataset root")


def test_answers_without_yes_or_no_are_unanswered_not_anomalies(
    runner, dataset: Path, lavis_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model that never says yes or no must not score 100% on abnormal videos."""
    monkeypatch.setattr(VideoLLM, "answer", lambda self, pixel_values, prompt, options: "People are walking.")
    result = run(runner, dataset, lavis_config, tmp_path / "r.json")
    assert result["unanswered"] == 4 and result["correct"] == 0
    assert (result["accuracy"], result["abnormal_accuracy"], result["normal_accuracy"]) == (0.0, 0.0, 0.0)
    assert result["accuracy_of_answered"] is None
    assert {r["verdict"] for r in result["per_video"]} == {"unanswered"}
