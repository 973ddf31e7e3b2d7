"""The VAD-LLaMA path end to end through the CLI: features, train-vador (phases 1 and 2), eval-vador, ablation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import INTRUDER, assert_user_error
from synthetic import make_frames, write_video
from typer.testing import CliRunner

from callm.cli import app
from callm.errors import CallmError
from callm.vador.evaluate import score_clips
from callm.vador.features import AEClipEncoder, FeatureIndex, encoder_for
from callm.vador.online import VADorDetector
from callm.vador.weights import load
from callm.video import Video

CPU = ["--device", "cpu", "--dtype", "fp32"]
TRAIN = ["--epochs", "4", "--lr", "3e-3", "--batch-size", "4"]


def invoke(*args: str | Path) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return " ".join(result.stdout.split())  # rich may wrap lines


@pytest.fixture(scope="module")
def train_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """UCF-Crime's convention: a Normal folder, and abnormal videos beside it."""
    root = tmp_path_factory.mktemp("vador_data")
    for seed in range(4):
        (root / "Normal").mkdir(exist_ok=True)
        (root / "Abnormal").mkdir(exist_ok=True)
        write_video(root / "Normal" / f"n{seed}.avi", make_frames(48, seed=seed))
        write_video(root / "Abnormal" / f"a{seed}.avi", make_frames(40, seed=seed + 20, intruder=(16, 40)))
    return root


@pytest.fixture(scope="module")
def train_features(train_data: Path, weights_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("features") / "train"
    invoke("features", train_data, "--encoder", "ae", "--weights", weights_dir, "--out", out, *CPU)
    return out


@pytest.fixture(scope="module")
def test_features(clip_dir: Path, weights_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Features of clip_dir (intruder.avi, normal.avi, in that order) and a .npy of their frame labels."""
    out = tmp_path_factory.mktemp("features") / "test"
    invoke("features", clip_dir, "--weights", weights_dir, "--out", out, *CPU)
    intruder = np.zeros(64, np.uint8)
    intruder[INTRUDER[0] : INTRUDER[1]] = 1
    labels = out.parent / "labels.npy"
    np.save(labels, np.concatenate([intruder, np.zeros(64, np.uint8)]))
    return out, labels


@pytest.fixture(scope="module")
def phase1(train_features: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vador") / "phase1"
    invoke("train-vador", train_features, "--out", out, "--phase", "1", *TRAIN)
    return out


@pytest.fixture(scope="module")
def phase2(train_features: Path, phase1: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vador") / "phase2"
    invoke(
        "train-vador", train_features, "--out", out, "--phase", "2", "--init", phase1,
        "--context", "normal,abnormal,history", "--attention", "softmax", *TRAIN,
    )  # fmt: skip
    return out


def test_features_index_layout(train_features: Path, train_data: Path, weights_dir: Path) -> None:
    index = json.loads((train_features / "index.json").read_text())
    assert index["kind"] == "callm-features" and index["clip_frames"] == 16
    assert index["encoder"]["kind"] == "ae" and index["encoder"]["pooling"] == "avgmax"
    assert index["encoder"]["size"] == [32, 44] and len(index["encoder"]["weights_sha1"]) == 40
    assert index["encoder_source"]["weights"] == str(weights_dir.resolve())
    assert index["dim"] == 16  # the tiny AE's 8 bottleneck channels, average and maximum
    by_key = {v["key"]: v for v in index["videos"]}
    assert sorted(by_key) == [f"Abnormal__a{s}" for s in range(4)] + [f"Normal__n{s}" for s in range(4)]
    normal, abnormal = by_key["Normal__n0"], by_key["Abnormal__a0"]
    assert normal["video"] == str((train_data / "Normal" / "n0.avi").resolve()) and normal["fps"] == 10.0
    assert normal["num_frames"] == 48 and normal["clips"] == [[0, 16], [16, 32], [32, 48]]
    assert abnormal["num_frames"] == 40 and abnormal["clips"] == [[0, 16], [16, 32], [24, 40]]
    array = np.load(train_features / "Normal__n0.npy")
    assert array.shape == (3, 16) and array.dtype == np.float32


def test_features_resume_and_refuse_other_settings(train_features: Path, train_data: Path, weights_dir: Path) -> None:
    again = invoke("features", train_data, "--weights", weights_dir, "--out", train_features, *CPU)
    assert "0 extracted now, 8 already there" in again
    result = CliRunner().invoke(
        app, ["features", str(train_data), "--weights", str(weights_dir), "--out", str(train_features), "--pooling",
              "avg", *CPU],
    )  # fmt: skip
    assert_user_error(result, "holds features of another encoder")


def test_average_pooling_is_half_of_avgmax(train_features: Path, weights_dir: Path) -> None:
    encoder = AEClipEncoder.from_weights(weights_dir, torch.device("cpu"), torch.float32, "avg")
    entry = FeatureIndex.read(train_features).videos[0]
    frames = np.stack(list(Video(entry.video).frames(encoder.frame_size)))
    average = encoder.encode(frames[None, :16])
    assert np.allclose(average, entry.load()[:1, :8], atol=1e-5)


def test_train_vador_phase_one(phase1: Path, train_features: Path) -> None:
    weights = load(phase1)
    assert weights.model.config.lists == () and weights.model.config.dim == 16
    assert weights.features == FeatureIndex.read(train_features).encoder
    training = weights.training
    assert training["phase"] == 1 and training["normal_videos"] == 4 and training["abnormal_videos"] == 4
    assert training["labels"] == "folder names" and len(training["epoch_losses"]) == 4
    assert (phase1 / "checkpoint" / "state.safetensors").is_file()


def test_train_vador_phase_two_starts_from_phase_one(phase1: Path, phase2: Path) -> None:
    weights = load(phase2)
    config = weights.model.config
    assert config.lists == ("normal", "abnormal", "history") and config.attention == "softmax"
    assert weights.training["phase"] == 2 and weights.training["init"] == str(phase1)
    first = load(phase1).model.state_dict()
    assert torch.equal(weights.model.feature_mean, first["feature_mean"])  # the standardisation is phase 1's


def test_train_vador_refuses_bad_phase_options(train_features: Path, phase1: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    no_init = runner.invoke(app, ["train-vador", str(train_features), "--out", str(tmp_path), "--phase", "2"])
    assert_user_error(no_init, "--init")
    bad_list = runner.invoke(
        app,
        ["train-vador", str(train_features), "--out", str(tmp_path), "--phase", "2", "--init", str(phase1),
         "--context", "normal,longterm"],
    )  # fmt: skip
    assert_user_error(bad_list, "--context must be one of normal, abnormal, history")
    missing = runner.invoke(app, ["train-vador", str(tmp_path), "--out", str(tmp_path / "o")])
    assert_user_error(missing, "no index.json")


def test_eval_vador(phase2: Path, test_features: tuple[Path, Path], tmp_path: Path) -> None:
    features, labels = test_features
    out = invoke("eval-vador", features, "--vador", phase2, "--labels", labels, "--json", tmp_path / "r.json")
    assert "AUC_O" in out and "AUC_A" in out
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["num_videos"] == 2 and result["abnormal_videos"] == 1 and result["num_frames"] == 128
    assert 0.0 <= result["auc_o"] <= 1.0 and result["per_video"]["normal"]["auc"] is None


def test_eval_vador_only_and_refusals(phase2: Path, test_features: tuple[Path, Path], tmp_path: Path) -> None:
    features, labels = test_features
    only = tmp_path / "only.txt"
    only.write_text("intruder.avi\n")
    invoke("eval-vador", features, "--vador", phase2, "--labels", labels, "--only", only, "--json", tmp_path / "r.json")
    assert list(json.loads((tmp_path / "r.json").read_text())["per_video"]) == ["intruder"]
    wrong = CliRunner().invoke(app, ["eval-vador", str(features), "--vador", str(features), "--labels", str(labels)])
    assert_user_error(wrong, "not VADor weights")


def test_ablate_vador_prints_table_three(
    train_features: Path, test_features: tuple[Path, Path], tmp_path: Path
) -> None:
    features, labels = test_features
    out = invoke(
        "ablate-vador", train_features, "--test", features, "--test-labels", labels, "--json", tmp_path / "t.json",
        "--epochs", "2", "--lr", "3e-3",
    )  # fmt: skip
    rows = [row["row"] for row in json.loads((tmp_path / "t.json").read_text())]
    assert rows == ["baseline", "AP, phase-2 steps", "+N", "+A", "+N+A", "+N+A+H"]
    assert "+N+A+H" in out


def test_detector_scores_a_stream_as_the_features_do(
    phase2: Path, test_features: tuple[Path, Path], weights_dir: Path, clip_dir: Path
) -> None:
    weights = load(phase2)
    encoder = encoder_for(weights.features, torch.device("cpu"), torch.float32, ae_weights=weights_dir)
    detection = VADorDetector(encoder, weights).detect(Video(clip_dir / "intruder.avi"))
    stored = FeatureIndex.read(test_features[0]).videos[0]
    assert stored.name == "intruder.avi" and detection.clips == stored.clips
    assert np.allclose(detection.clip_scores, score_clips(weights.model, stored.load()), atol=1e-5)
    assert len(detection.frame_scores) == 64 and detection.answer.startswith(("Yes", "No"))
    other = AEClipEncoder.from_weights(weights_dir, torch.device("cpu"), torch.float32, "max")
    with pytest.raises(CallmError, match="trained on others"):
        VADorDetector(other, weights)


def test_detect_with_the_ltc_explainer_joins_its_events_to_stage_1s(
    phase2: Path, clip_dir: Path, weights_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "d.json"
    args = ["detect", clip_dir / "intruder.avi", "-w", weights_dir, "--explainer", "ltc", "--vador", phase2]
    invoke(*args, "--json", out, *CPU)
    data = json.loads(out.read_text())
    assert all(e["found_by"] == "stage1" for e in data["events"])
    ltc = data["ltc"]
    assert len(ltc["clip_scores"]) == len(ltc["clips"]) == 4  # 64 frames in clips of 16
    assert all(0.0 <= s <= 1.0 for s in ltc["clip_scores"])
    assert all(e["found_by"] == "ltc" for e in ltc["events"])
    # The events are where the clip scores pass 0.5, and the answer states their times.
    abnormal = [c for c, s in zip(ltc["clips"], ltc["clip_scores"], strict=True) if s > 0.5]
    assert sum(e["end_frame"] - e["start_frame"] + 1 for e in ltc["events"]) == sum(b - a for a, b in abnormal)
    if ltc["events"]:
        assert ltc["answer"].startswith("Yes, there are anomalies from")
    else:
        assert ltc["answer"] == "No, there are no anomalies."
    assert ltc["answer_source"] == "template"


def test_the_ltc_explainer_needs_its_vador(clip_dir: Path, weights_dir: Path) -> None:
    args = ["detect", str(clip_dir / "normal.avi"), "-w", str(weights_dir), "--explainer", "ltc"]
    assert_user_error(CliRunner().invoke(app, args), "--vador")


def test_a_batch_scan_runs_the_ltc_explainer_on_every_video(
    phase2: Path, clip_dir: Path, weights_dir: Path, tmp_path: Path
) -> None:
    # The folder holds the two clips and a video too short for one clip: it is reported and the scan goes on.
    folder = tmp_path / "archive"
    folder.mkdir()
    for name in ("intruder.avi", "normal.avi"):
        (folder / name).write_bytes((clip_dir / name).read_bytes())
    write_video(folder / "short.avi", make_frames(8, seed=3))
    run = tmp_path / "run"
    args = ["scan", folder, "-w", weights_dir, "--explainer", "ltc", "--vador", phase2, "--out", run, *CPU]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 1, result.output  # one file failed
    records = {Path(r["path"]).name: r for r in map(json.loads, (run / "summary.jsonl").read_text().splitlines())}
    assert records["short.avi"]["status"] == "error" and "16" in records["short.avi"]["error"]
    single = tmp_path / "single.json"
    invoke("detect", folder / "intruder.avi", "-w", weights_dir, "--explainer", "ltc", "--vador", phase2,
           "--json", single, *CPU)  # fmt: skip
    expected = json.loads(single.read_text())["ltc"]
    scanned = json.loads((run / records["intruder.avi"]["json"]).read_text())["ltc"]
    assert scanned == expected  # the same VADor findings as a single-video detect
    assert records["intruder.avi"]["ltc_events"] == len(expected["events"])
    assert records["normal.avi"]["status"] == "ok" and "ltc_events" in records["normal.avi"]
    assert expected["answer"] in (run / "report.html").read_text()
    assert "ltc_events" in (run / "summary.csv").read_text().splitlines()[0]


def test_a_calibrated_vador_flags_clips_above_its_held_out_normal_quantile(
    train_features: Path, test_features: tuple[Path, Path], clip_dir: Path, weights_dir: Path, tmp_path: Path
) -> None:
    # Train on the four normal and four abnormal videos; calibrate on clip_dir's normal.avi, never trained on.
    split = tmp_path / "split.txt"
    split.write_text("".join(f"Normal/n{i} 0\nAbnormal/a{i} 1\n" for i in range(4)))
    held_out = tmp_path / "normal.txt"
    held_out.write_text("normal.avi\n")
    out = tmp_path / "calibrated"
    features = [train_features, test_features[0]]
    stdout = invoke(
        "train-vador", *features, "--labels", split, "--calibrate", held_out, "--quantile", "0.75", "--out", out, *TRAIN
    )
    weights = load(out)
    normal = next(v for v in FeatureIndex.read(test_features[0]).videos if v.name == "normal.avi")
    expected = float(np.quantile(score_clips(weights.model, normal.load()), 0.75))
    assert weights.calibration["threshold"] == pytest.approx(expected) and weights.threshold == pytest.approx(expected)
    assert weights.calibration["clips"] == 4 and weights.calibration["videos"] == [normal.video]
    assert f"clip threshold {expected:.3f} from 4 clips of 1 held-out normal videos" in stdout

    # detect uses it: the LTC events are the clips above the calibrated threshold, not above 0.5.
    json_out = tmp_path / "d.json"
    args = ["detect", clip_dir / "intruder.avi", "-w", weights_dir, "--explainer", "ltc", "--vador", out]
    invoke(*args, "--json", json_out, *CPU)
    ltc = json.loads(json_out.read_text())["ltc"]
    assert ltc["threshold"] == pytest.approx(expected, abs=1e-4)
    above = [c for c, s in zip(ltc["clips"], ltc["clip_scores"], strict=True) if s > expected]
    assert sum(e["end_frame"] - e["start_frame"] + 1 for e in ltc["events"]) == sum(b - a for a, b in above)

    runner = CliRunner()
    base = ["train-vador", *map(str, features), "--labels", str(split), "--out", str(tmp_path / "x"), *TRAIN]
    for listed, message in [
        ("Normal/n0\n", "is a training video"),
        ("normal.avi 1\n", "labelled abnormal"),
        ("nowhere.avi\n", "has no features"),
    ]:
        held_out.write_text(listed)
        assert_user_error(runner.invoke(app, [*base, "--calibrate", str(held_out)]), message)
