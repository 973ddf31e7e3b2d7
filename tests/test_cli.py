"""The ``callm`` command end to end: train a tiny model, detect, evaluate, and refuse bad input in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import INTRUDER, assert_user_error
from synthetic import make_frames, write_frame_folder, write_video
from typer.testing import CliRunner

from callm.ae.weights import META_FILE, TENSORS_FILE
from callm.cli import app

DETECT_ARGS = ["--device", "cpu", "--dtype", "fp32"]


def detect_json(runner: CliRunner, video: Path, weights: Path, out: Path, *extra: str) -> dict:
    result = runner.invoke(
        app, ["detect", str(video), "--weights", str(weights), "--json", str(out), *DETECT_ARGS, *extra]
    )
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def detections(weights_dir: Path, clip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("detect")
    runner = CliRunner()
    return {
        name: detect_json(runner, clip_dir / f"{name}.avi", weights_dir, out / f"{name}.json")
        for name in ("normal", "intruder")
    }


def test_help_lists_the_commands(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("train-ae", "detect", "eval"):
        assert command in result.stdout


def test_train_ae_saves_calibrated_weights(trained, train_dir: Path) -> None:
    out, result = trained
    assert f"saved {out}" in " ".join(result.stdout.split())  # rich may wrap the line
    assert "threshold" in result.stdout
    meta = json.loads((out / META_FILE).read_text())
    assert meta["kind"] == "callm-ae"
    assert meta["config"]["height"] == 32 and meta["config"]["widths"] == [4, 8]
    assert meta["training"]["steps"] == 30 and len(meta["training"]["chunk_losses"]) == 1
    # Cross-fitting: every normal video both trains the final model and calibrates the gate.
    videos = [str(train_dir / f"normal{i}.avi") for i in range(4)]
    assert meta["training"]["trained_on"] == videos and sorted(meta["calibration"]["holdout_videos"]) == videos
    assert meta["calibration"]["evidence"]["windows"] == 16
    # Speeds count as far as they are kept up: the default 0.5 s at the footage's 10 fps.
    assert (meta["calibration"]["sustain_seconds"], meta["calibration"]["sustain_frames"]) == (0.5, 5)
    # Events last above the 0.95 quantile of normal frames' scores, below the threshold.
    assert meta["calibration"]["hold_quantile"] == 0.95
    assert meta["calibration"]["hold_score"] == pytest.approx(
        meta["calibration"]["evidence"]["frame_score_quantiles"]["0.95"], abs=1e-4
    )
    assert (out / TENSORS_FILE).is_file()


def test_recalibrating_at_another_stride_sets_detects_default(
    runner: CliRunner, trained, train_dir: Path, clip_dir: Path, tmp_path: Path
) -> None:
    # A finished run resumed is only calibrated again: here at stride 4, which detect then uses unless told.
    out = tmp_path / "weights"
    shutil.copytree(trained[0], out)
    settings = ["--steps", "30", "--size", "32", "--widths", "4,8", "--crop", "0", "--device", "cpu", "--dtype", "fp32"]
    args = ["train-ae", str(train_dir), "--out", str(out), *settings, "--resume", "--stride", "4", "--hold", "0.9"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    before, after = (json.loads((d / META_FILE).read_text())["calibration"] for d in (trained[0], out))
    assert (before["stride"], after["stride"]) == (8, 4) and after["psnr_center"] != before["psnr_center"]
    data = detect_json(runner, clip_dir / "normal.avi", out, tmp_path / "n.json")
    assert data["settings"]["stride"] == 4 and data["threshold"] == pytest.approx(after["threshold"])
    assert after["hold_quantile"] == 0.9 and data["settings"]["event_hold"] == pytest.approx(after["hold_score"])


def test_calibrate_fits_the_gate_to_new_footage_without_training(
    runner: CliRunner, trained, train_dir: Path, clip_dir: Path, tmp_path: Path
) -> None:
    source = trained[0]
    meta = json.loads((source / META_FILE).read_text())
    # The training footage at another stride and quantile: the final model never saw it scored as a whole, and
    # the threshold is that quantile of its windows' highest scores (0.5 lies in the bulk: the empirical one).
    site = tmp_path / "site"
    videos = [str(train_dir / f"normal{i}.avi") for i in range(4)]
    args = ["calibrate", *videos, "-w", str(source), "--out", str(site), "--stride", "4", "--quantile", "0.5"]
    result = runner.invoke(app, [*args, "--hold", "0.9", *DETECT_ARGS])
    assert result.exit_code == 0, result.output
    calibration = json.loads((site / META_FILE).read_text())["calibration"]
    assert calibration["stride"] == 4 and calibration["holdout_videos"] == videos
    assert calibration["hold_quantile"] == 0.9
    assert calibration["hold_score"] == pytest.approx(calibration["evidence"]["frame_score_quantiles"]["0.9"], abs=1e-4)
    assert calibration["evidence"]["method"] == "scored by a model that never saw it"
    assert calibration["threshold"] != meta["calibration"]["threshold"]
    assert (site / TENSORS_FILE).read_bytes() == (source / TENSORS_FILE).read_bytes()  # the model is untouched
    maxima = []
    for video in videos:
        data = detect_json(runner, Path(video), site, tmp_path / "n.json")
        assert data["settings"]["stride"] == 4
        scores = np.array(data["scores"])
        maxima += [scores[s : s + 16].max() for s in range(0, len(scores) - 15, 16)]
    assert np.mean(np.array(maxima) <= calibration["threshold"]) == pytest.approx(0.5, abs=1 / 16)
    bad = runner.invoke(app, ["calibrate", str(clip_dir), "-w", str(source), "--out", str(site), "--quantile", "1"])
    assert bad.exit_code != 0 and "--quantile" in bad.output


def test_detect_times_events_by_the_videos_frame_rate(
    runner: CliRunner, detections: dict[str, dict], weights_dir: Path, tmp_path: Path
) -> None:
    assert detections["intruder"]["settings"]["min_event_frames"] == 5  # half a second at 10 fps
    assert detections["intruder"]["settings"]["max_gap"] == 10
    fast = write_video(tmp_path / "fast.avi", make_frames(64, seed=10, intruder=INTRUDER), fps=25.0)
    data = detect_json(runner, fast, weights_dir, tmp_path / "fast.json")
    assert data["fps"] == 25.0
    assert (data["settings"]["min_event_frames"], data["settings"]["max_gap"]) == (12, 25)
    assert all(e["end_frame"] - e["start_frame"] + 1 >= 12 for e in data["events"])
    given = detect_json(runner, fast, weights_dir, tmp_path / "given.json", "--min-event", "3", "--max-gap", "0")
    assert (given["settings"]["min_event_frames"], given["settings"]["max_gap"]) == (3, 0)


def test_detect_follows_the_objects_of_events_unless_told_not_to(
    runner: CliRunner, detections: dict[str, dict], weights_dir: Path, clip_dir: Path, tmp_path: Path
) -> None:
    assert detections["intruder"]["settings"]["follow_objects"] is True
    plain = detect_json(runner, clip_dir / "intruder.avi", weights_dir, tmp_path / "plain.json", "--no-follow")
    assert plain["settings"]["follow_objects"] is False
    # Following only ever lengthens events: each plain event lies inside one of the followed ones.
    followed = detections["intruder"]["events"]
    for event in plain["events"]:
        assert any(f["start_frame"] <= event["start_frame"] and event["end_frame"] <= f["end_frame"] for f in followed)


def test_detect_json_has_the_documented_layout(detections: dict[str, dict], clip_dir: Path) -> None:
    data = detections["intruder"]
    assert {"video", "fps", "num_frames", "threshold", "scores", "events", "windows_total", "windows_gated"} <= set(
        data
    )
    assert data["video"] == str(clip_dir / "intruder.avi")
    assert data["fps"] == 10.0  # from the container
    assert data["num_frames"] == 64 and len(data["scores"]) == 64
    assert data["windows_total"] == 4  # 64 frames tile into four 16-frame windows
    assert 1 <= data["windows_gated"] <= data["windows_total"]
    assert data["frame_size"] == [48, 64]
    assert data["settings"]["stride"] == 8  # no --stride: the stride the weights were calibrated at
    assert data["events"], "the intruder raised no event"
    for event in data["events"]:
        assert set(event) >= {"start_frame", "end_frame", "start_s", "end_s", "peak_score", "box"}
        assert event["start_s"] == pytest.approx(event["start_frame"] / 10)
        assert event["end_s"] == pytest.approx((event["end_frame"] + 1) / 10)
        assert event["peak_score"] > data["threshold"]
        x0, y0, x1, y1 = event["box"]
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 48  # in the video's own pixels


def test_detect_says_the_threshold_and_the_level_events_last_above(
    runner: CliRunner, weights_dir: Path, clip_dir: Path, tmp_path: Path
) -> None:
    result = runner.invoke(app, ["detect", str(clip_dir / "intruder.avi"), "--weights", str(weights_dir), *DETECT_ARGS])
    assert result.exit_code == 0, result.output
    hold = json.loads((weights_dir / META_FILE).read_text())["calibration"]["hold_score"]
    said = " ".join(result.stdout.split())
    assert f"events last above {hold:.2f} and while their object is in view" in said
    result = runner.invoke(
        app, ["detect", str(clip_dir / "intruder.avi"), "--weights", str(weights_dir), *DETECT_ARGS, "--no-follow"]
    )
    assert result.exit_code == 0, result.output
    said = " ".join(result.stdout.split())
    assert f"events last above {hold:.2f});" in said and "while their object" not in said


def test_intruder_scores_higher_than_normal_footage(detections: dict[str, dict]) -> None:
    normal, intruder = detections["normal"], detections["intruder"]
    assert max(intruder["scores"]) > max(normal["scores"]) + 5
    # The event covers the intruder's frames and peaks while it is on screen.
    lo, hi = INTRUDER
    assert any(e["start_frame"] < hi and e["end_frame"] >= lo for e in intruder["events"])
    peak = int(np.argmax(intruder["scores"]))
    assert lo <= peak < hi


def test_detect_frame_folder_takes_fps_option(runner: CliRunner, weights_dir: Path, tmp_path: Path) -> None:
    folder = write_frame_folder(tmp_path / "clip", make_frames(40, seed=11))
    data = detect_json(runner, folder, weights_dir, tmp_path / "out.json", "--fps", "5", "--stride", "16")
    assert data["fps"] == 5.0
    assert data["num_frames"] == 40
    assert data["settings"]["stride"] == 16


def make_dataset(root: Path) -> list[np.ndarray]:
    """root/testing/frames/01 and /02, each with an intruder; returns the per-video labels."""
    labels = []
    for name, seed, span in (("01", 20, (24, 44)), ("02", 21, (8, 28))):
        write_frame_folder(root / "testing" / "frames" / name, make_frames(64, seed=seed, intruder=span))
        label = np.zeros(64, dtype=np.uint8)
        label[span[0] : span[1]] = 1
        labels.append(label)
    return labels


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    root = tmp_path_factory.mktemp("dataset")
    return root, make_dataset(root)


def test_eval_reports_frame_auc(runner: CliRunner, weights_dir: Path, dataset, tmp_path: Path) -> None:
    root, labels = dataset
    np.save(tmp_path / "gt.npy", np.concatenate(labels))
    out = tmp_path / "metrics.json"
    args = ["eval", str(root), "--labels", str(tmp_path / "gt.npy"), "-w", str(weights_dir), "--json", str(out)]
    result = runner.invoke(app, [*args, *DETECT_ARGS])
    assert result.exit_code == 0, result.output
    assert "frame AUC" in result.stdout
    metrics = json.loads(out.read_text())
    assert {"frame_auc", "frame_auc_raw", "per_video", "num_frames"} <= set(metrics)
    assert metrics["num_frames"] == 128 and metrics["abnormal_frames"] == 40
    assert set(metrics["per_video"]) == {"01", "02"}
    assert metrics["per_video"]["01"]["frames"] == 64 and metrics["per_video"]["01"]["abnormal_frames"] == 20
    assert metrics["frame_auc"] > 0.8 and metrics["frame_auc_raw"] > 0.8


def test_eval_finds_events_as_detect_does(runner: CliRunner, weights_dir: Path, dataset, tmp_path: Path) -> None:
    """eval's gate uses detect's event options: its seconds defaults at the footage's rate, or as given."""
    root, labels = dataset
    np.save(tmp_path / "gt.npy", np.concatenate(labels))
    out = tmp_path / "metrics.json"
    args = ["eval", str(root), "--labels", str(tmp_path / "gt.npy"), "-w", str(weights_dir), "--json", str(out)]
    settings = {}
    for extra in (["--fps", "20"], ["--min-event", "7", "--max-gap", "3", "--no-follow"]):
        result = runner.invoke(app, [*args, *extra, *DETECT_ARGS])
        assert result.exit_code == 0, result.output
        settings[extra[0]] = json.loads(out.read_text())["settings"]
    assert [settings["--fps"][k] for k in ("min_event_frames", "max_gap", "follow_objects")] == [10, 20, True]
    assert [settings["--min-event"][k] for k in ("min_event_frames", "max_gap", "follow_objects")] == [7, 3, False]


def test_eval_finds_labels_in_the_root_and_reads_ucsd_m(runner: CliRunner, weights_dir: Path, tmp_path: Path) -> None:
    make_dataset(tmp_path)
    (tmp_path / "gt.m").write_text(
        "TestVideoFile{end+1}.gt_frame = [25:44];\nTestVideoFile{end+1}.gt_frame = [9:28];\n"
    )
    out = tmp_path / "metrics.json"
    result = runner.invoke(app, ["eval", str(tmp_path), "-w", str(weights_dir), "--json", str(out), *DETECT_ARGS])
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert metrics["abnormal_frames"] == 40
    assert metrics["per_video"]["02"]["abnormal_frames"] == 20


# --- bad input: exit 1, one line on stderr, no traceback -----------------------------------------------------


def truncated(suffix: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        full = write_video(tmp / f"full{suffix}", make_frames(48))
        cut = tmp / f"cut{suffix}"
        cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        return cut

    return make


def no_frames(suffix: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / f"empty{suffix}"
        codec = "mp4v" if suffix == ".mp4" else "MJPG"
        cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), 10.0, (64, 48)).release()
        return path

    return make


def text_as_mp4(tmp: Path) -> Path:
    path = tmp / "notes.mp4"
    path.write_text("not a video\n")
    return path


def empty_folder(tmp: Path) -> Path:
    (tmp / "nothing").mkdir()
    (tmp / "nothing" / "readme.txt").write_text("no frames")
    return tmp / "nothing"


BAD_VIDEOS = {
    "missing path": (lambda tmp: tmp / "missing.mp4", "no such file or directory"),
    "folder without frames": (empty_folder, "no videos or frame folders"),
    "text file named .mp4": (text_as_mp4, "not a readable video"),
    "truncated avi": (truncated(".avi"), "truncated or damaged video"),
    "truncated mp4": (truncated(".mp4"), "not a readable video"),
    "avi with no frames": (no_frames(".avi"), "no decodable frames"),
    "mp4 with no frames": (no_frames(".mp4"), "not a readable video"),
    "shorter than a window": (lambda tmp: write_video(tmp / "short.avi", make_frames(12)), "at least 16 are needed"),
}


@pytest.mark.parametrize("case", BAD_VIDEOS)
def test_detect_refuses_bad_video(runner: CliRunner, weights_dir: Path, tmp_path: Path, case: str) -> None:
    make, message = BAD_VIDEOS[case]
    video = make(tmp_path)
    result = runner.invoke(app, ["detect", str(video), "-w", str(weights_dir), *DETECT_ARGS])
    line = assert_user_error(result, message)
    assert str(video) in line


def kind_changed(folder: Path) -> None:
    (folder / META_FILE).write_text(json.dumps({"kind": "something-else"}))


def tensors_garbled(folder: Path) -> None:
    (folder / TENSORS_FILE).write_bytes(os.urandom(64) * 8)


BAD_WEIGHTS = {
    "missing": (lambda folder: shutil.rmtree(folder), "weights not found"),
    "wrong kind": (kind_changed, "not callm autoencoder weights"),
    "corrupt tensors": (tensors_garbled, "corrupt or not a safetensors file"),
    "no metadata": (lambda folder: (folder / META_FILE).unlink(), "ae.json is missing"),
}


@pytest.mark.parametrize("case", BAD_WEIGHTS)
def test_detect_refuses_bad_weights(
    runner: CliRunner, weights_dir: Path, clip_dir: Path, tmp_path: Path, case: str
) -> None:
    damage, message = BAD_WEIGHTS[case]
    weights = tmp_path / "weights"
    shutil.copytree(weights_dir, weights, ignore=shutil.ignore_patterns("checkpoint", "frame-cache"))
    damage(weights)
    result = runner.invoke(app, ["detect", str(clip_dir / "normal.avi"), "-w", str(weights), *DETECT_ARGS])
    assert_user_error(result, message)


def test_eval_refuses_labels_of_another_length(runner: CliRunner, weights_dir: Path, dataset, tmp_path: Path) -> None:
    root, labels = dataset
    np.save(tmp_path / "gt.npy", np.concatenate(labels)[:-3])
    result = runner.invoke(
        app, ["eval", str(root), "--labels", str(tmp_path / "gt.npy"), "-w", str(weights_dir), *DETECT_ARGS]
    )
    assert_user_error(result, "125 labels but the 2 test videos have 128 frames")


def test_eval_refuses_labels_without_abnormal_frames(
    runner: CliRunner, weights_dir: Path, dataset, tmp_path: Path
) -> None:
    root, _ = dataset
    np.save(tmp_path / "gt.npy", np.zeros(128))
    result = runner.invoke(
        app, ["eval", str(root), "--labels", str(tmp_path / "gt.npy"), "-w", str(weights_dir), *DETECT_ARGS]
    )
    assert_user_error(result, "needs both normal and abnormal frames")


@pytest.mark.parametrize(
    ("make", "message"),
    [(lambda tmp: tmp / "nope", "not a folder"), (empty_folder, "no videos or frame folders found")],
    ids=["missing root", "root without videos"],
)
def test_eval_refuses_roots_without_videos(
    runner: CliRunner, weights_dir: Path, tmp_path: Path, make: Callable[[Path], Path], message: str
) -> None:
    result = runner.invoke(app, ["eval", str(make(tmp_path)), "-w", str(weights_dir), *DETECT_ARGS])
    assert_user_error(result, message)


TRAIN_ARGS = ["--size", "32", "--widths", "4,8", "--steps", "4", "--device", "cpu", "--dtype", "fp32"]


@pytest.mark.parametrize(
    ("data", "extra", "message"),
    [
        (lambda tmp, normal: tmp / "missing", [], "no such file or directory"),
        (lambda tmp, normal: empty_folder(tmp), [], "no videos or frame folders found"),
        (lambda tmp, normal: write_video(tmp / "one.avi", make_frames(40)), [], "not enough normal footage to train"),
        (lambda tmp, normal: normal, ["--widths", "4,x"], "--widths must be comma-separated integers"),
        (lambda tmp, normal: normal, ["--size", "30"], "--size must be a positive multiple of 4 for 2 layers"),
        (lambda tmp, normal: normal, ["--resume"], "no checkpoint to resume from"),
        (lambda tmp, normal: normal, ["--dtype", "fp8"], "unknown dtype 'fp8'"),
    ],
    ids=["missing path", "empty folder", "one short video", "bad widths", "bad size", "resume", "bad dtype"],
)
def test_train_ae_refuses_bad_input(
    runner: CliRunner, train_dir: Path, tmp_path: Path, data: Callable, extra: list[str], message: str
) -> None:
    args = ["train-ae", str(data(tmp_path, train_dir)), "--out", str(tmp_path / "w"), *TRAIN_ARGS, *extra]
    assert_user_error(runner.invoke(app, args), message)


@pytest.mark.parametrize("case", ["truncated avi", "missing path"])
def test_console_script_prints_one_line_and_no_traceback(weights_dir: Path, tmp_path: Path, case: str) -> None:
    """The real ``callm`` executable: nothing from FFmpeg, rich progress or Python reaches the terminal."""
    make, message = BAD_VIDEOS[case]
    video = make(tmp_path)
    script = Path(sys.executable).with_name("callm")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("OPENCV_FFMPEG_LOGLEVEL", None)
    args = [str(script), "detect", str(video), "-w", str(weights_dir), *DETECT_ARGS]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"callm: error: {video}: ") and message in lines[0]


def test_calibrate_on_little_footage_says_so(
    runner: CliRunner, weights_dir: Path, clip_dir: Path, tmp_path: Path
) -> None:
    """A minute of footage gives a threshold, flagged provisional in ae.json and on stderr; a few seconds none."""
    out = tmp_path / "site"
    minute = write_video(tmp_path / "minute.avi", make_frames(160, seed=5))
    result = runner.invoke(app, ["calibrate", str(minute), "-w", str(weights_dir), "--out", str(out),
                                 "--stride", "16", *DETECT_ARGS])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "rests on little normal footage and is provisional" in result.stderr
    evidence = json.loads((out / META_FILE).read_text())["calibration"]["evidence"]
    assert evidence["enough"] is False and evidence["windows"] == 10
    short = write_video(tmp_path / "short.avi", make_frames(20, seed=3))
    result = runner.invoke(app, ["calibrate", str(short), "-w", str(weights_dir), "--out", str(tmp_path / "x"),
                                 *DETECT_ARGS])  # fmt: skip
    assert_user_error(result, "too little normal footage to set a threshold")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--lr", "nan"], "--lr must be a positive number"),
        (["--smooth", "-1"], "--smooth must be a number >= 0"),
        (["--flow-weight", "2"], "--flow-weight and --region are shares between 0 and 1"),
        (["--hold", "1"], "--hold a share below 1"),
        (["--error", "pixels"], "--error must be one of frame, motion"),
        (["--quantile", "2"], "--quantile must be between 0 and 1"),
        (["--folds", "1"], "--folds must be at least 2"),
        (["--size", "0"], "--size must be a positive multiple of 4"),
    ],
)
def test_train_ae_checks_its_options_before_training(
    runner: CliRunner, train_dir: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    args = ["train-ae", str(train_dir), "--out", str(tmp_path / "w"), "--size", "32", "--widths", "4,8", *extra]
    assert_user_error(runner.invoke(app, [*args, *DETECT_ARGS]), message)
    assert not (tmp_path / "w" / "frame-cache").exists()  # refused before any decoding


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--fps", "0"], "--fps must be a positive number"),
        (["--fps", "nan"], "--fps must be a positive number"),
        (["--fps", "-1"], "--fps must be a positive number"),
        (["--max-gap", "-5"], "--max-gap must be 0 or more"),
        (["--min-event", "0"], "--min-event must be at least 1"),
        (["--threshold", "nan"], "--threshold must be a finite number"),
        (["--threshold", "-inf"], "--threshold must be a finite number"),
    ],
)
def test_detect_refuses_bad_options_before_scoring(
    runner: CliRunner, weights_dir: Path, clip_dir: Path, extra: list[str], message: str, monkeypatch
) -> None:
    from callm.cascade import Stage1

    monkeypatch.setattr(Stage1, "detect", lambda *a, **k: pytest.fail("scored before refusing a bad option"))
    args = ["detect", str(clip_dir / "normal.avi"), "-w", str(weights_dir), *DETECT_ARGS, *extra]
    assert_user_error(runner.invoke(app, args), message)


def test_outputs_that_cannot_be_written_are_refused_first(
    runner: CliRunner, weights_dir: Path, clip_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    args = ["detect", str(clip_dir / "normal.avi"), "-w", str(weights_dir), "--json", str(folder), *DETECT_ARGS]
    assert_user_error(runner.invoke(app, args), "--json", "is a folder")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    args = ["calibrate", str(clip_dir / "normal.avi"), "-w", str(weights_dir), "--out", str(a_file), *DETECT_ARGS]
    assert_user_error(runner.invoke(app, args), "--out", "exists and is not a folder")
    args = ["eval", str(clip_dir), "-w", str(weights_dir), "--json", str(a_file / "x.json"), *DETECT_ARGS]
    assert_user_error(runner.invoke(app, args), "a part of the path is a file")


def test_a_frame_folder_whose_frame_size_changes_is_refused(
    runner: CliRunner, weights_dir: Path, tmp_path: Path
) -> None:
    folder = write_frame_folder(tmp_path / "mixed", make_frames(30))
    cv2.imwrite(str(folder / "20.png"), make_frames(1, size=(60, 80))[0])  # one frame of another size
    args = ["detect", str(folder), "-w", str(weights_dir), *DETECT_ARGS]
    assert_user_error(runner.invoke(app, args), "20.png: 80x60 pixels, but the folder's first frame is 64x48")


def test_eval_with_wrong_labels_fails_before_scoring(
    runner: CliRunner, weights_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from callm.cascade import Stage1

    root = tmp_path / "data"
    for i in range(2):
        write_frame_folder(root / "testing" / "frames" / f"{i + 1:02d}", make_frames(20, seed=i))
    np.save(tmp_path / "labels.npy", np.zeros(39, np.uint8))  # one frame short
    monkeypatch.setattr(Stage1, "detect", lambda *a, **k: pytest.fail("scored before reading the labels"))
    args = ["eval", str(root), "--labels", str(tmp_path / "labels.npy"), "-w", str(weights_dir), *DETECT_ARGS]
    assert_user_error(runner.invoke(app, args), "39 labels but the 2 test videos have 40 frames")


def test_calibrate_can_change_how_old_weights_score(
    runner: CliRunner, weights_dir: Path, train_dir: Path, tmp_path: Path
) -> None:
    """The paper's whole-frame PSNR, or the autoencoder alone, chosen at calibration without training."""
    out = tmp_path / "frame-psnr"
    videos = [str(train_dir / f"normal{i}.avi") for i in range(4)]
    args = ["calibrate", *videos, "-w", str(weights_dir), "--out", str(out), "--error", "frame", "--region", "0"]
    result = runner.invoke(app, [*args, "--flow-weight", "0", *DETECT_ARGS])
    assert result.exit_code == 0, result.output
    calibration = json.loads((out / META_FILE).read_text())["calibration"]
    assert (calibration["error"], calibration["patch"], calibration["flow_weight"]) == ("frame", 0, 0.0)
    own = json.loads((weights_dir / META_FILE).read_text())["calibration"]
    assert calibration["top_k"] == own["top_k"] and calibration["smooth_sigma"] == own["smooth_sigma"]
    bad = runner.invoke(app, ["calibrate", *videos, "-w", str(weights_dir), "--out", str(out), "--error", "x"])
    assert_user_error(bad, "--error must be one of frame, motion")
