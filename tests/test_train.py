"""``train_ae`` end to end: cross-fitting, calibration, checkpoints, the default budget, and resuming."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import make_frames, write_frame_folder, write_video

import callm.ae.train as train_module
from callm.ae.budget import BASE_FRAMES, BASE_STEPS, MAX_STEPS, MIN_STEPS, default_steps
from callm.ae.calibrate import ScoringSettings
from callm.ae.model import AEConfig
from callm.ae.train import CACHE_DIR, CHECKPOINT_DIR, TrainSettings, cross_fit_parts, train_ae
from callm.ae.weights import load
from callm.errors import CallmError
from callm.video import Video

CONFIG = AEConfig(height=32, width=44, widths=(4, 8))  # 48x64 footage (4:3) at height 32: width 44
SETTINGS = TrainSettings(steps=8, batch_size=4, lr=1e-3, crop=16)


@pytest.fixture(scope="module")
def three_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("three")
    for seed in range(3):
        write_video(folder / f"v{seed}.avi", make_frames(48, seed=seed))
    return folder


@pytest.fixture(autouse=True)
def short_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_module, "CHUNK_STEPS", 4)  # checkpoints every 4 steps, so a test run has several


def run(data: Path | list[Path], out: Path, settings: TrainSettings = SETTINGS, widths=(4, 8), **kwargs):
    paths = data if isinstance(data, list) else [data]
    scoring = ScoringSettings()
    return train_ae(paths, out, 32, widths, settings, scoring, torch.device("cpu"), torch.float32, 10.0, **kwargs)


def with_steps(steps: int) -> TrainSettings:
    return TrainSettings(**{**SETTINGS.to_dict(), "steps": steps})


def assert_same_model(a, b) -> None:
    state_a, state_b = a.model.state_dict(), b.model.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.allclose(state_a[key].float(), state_b[key].float(), rtol=0, atol=1e-7), key


@pytest.fixture(scope="module")
def unbroken(three_videos: Path, tmp_path_factory: pytest.TempPathFactory):
    """The reference: one uninterrupted run."""
    out = tmp_path_factory.mktemp("unbroken")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "CHUNK_STEPS", 4)
        return out, run(three_videos, out)


def test_train_ae_trains_on_everything_and_calibrates_out_of_sample(unbroken, three_videos: Path) -> None:
    out, weights = unbroken
    loaded = load(out)
    assert loaded.config == CONFIG
    videos = [str(three_videos / f"v{i}.avi") for i in range(3)]
    # Every video trains the final model, and every video calibrates the gate...
    assert loaded.training["trained_on"] == videos
    cal = loaded.calibration
    assert sorted(cal["holdout_videos"]) == videos and cal["holdout_frames"] == 3 * 48
    # ... each scored by a fold model that never trained on it: the folds split the videos, and each fold model's
    # checkpoint names the footage it trained on.
    folds = loaded.training["cross_fit_folds"]
    assert sorted(v for fold in folds for v in fold) == videos and len(folds) == 2
    for k, held in enumerate(folds):
        state = json.loads((out / CHECKPOINT_DIR / f"fold-{k + 1}" / "state.json").read_text())
        assert set(state["meta"]["data"]) == set(videos) - set(held)
        assert state["step"] == state["meta"]["steps"] == loaded.training["fold_steps"][k]
    assert cal["error"] == "motion" and cal["patch"] == 4  # 0.125 of the 32-pixel height
    assert cal["psnr_scale"] > 0 and np.isfinite(cal["threshold"]) and cal["flow_weight"] == 0.5
    assert len(cal["speed_profile"]) == 32 // 2  # one per row of 2-pixel cells
    evidence = cal["evidence"]
    assert evidence["windows"] == 3 * 3 and evidence["videos"] == 3 and evidence["enough"] is False
    assert "cross-fitting" in evidence["method"]
    assert loaded.training["steps"] == 8 and len(loaded.training["chunk_losses"]) == 2
    assert len(list((out / CACHE_DIR).glob("*.u8"))) == 3
    assert weights.calibration == loaded.calibration


def test_fold_models_train_as_long_as_the_rule_gives_their_share() -> None:
    settings = TrainSettings(steps=1000)
    assert settings.steps_for(400, 400) == 1000
    assert settings.steps_for(100, 400) == 500  # a quarter of the footage: half the steps (square-root rule)
    auto = TrainSettings()
    assert auto.steps_for(2500, 5000) == default_steps(2500) == BASE_STEPS


def test_default_budget_grows_with_the_square_root_of_the_footage() -> None:
    assert default_steps(BASE_FRAMES) == BASE_STEPS
    assert default_steps(4 * BASE_FRAMES) == 2 * BASE_STEPS
    assert default_steps(10) == MIN_STEPS and default_steps(10**7) == MAX_STEPS


@pytest.mark.parametrize("killed_in", ["fold-1", "final"])
def test_resume_after_a_kill_matches_an_unbroken_run(
    unbroken, three_videos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, killed_in: str
) -> None:
    """``--resume`` after a kill: the same command picks up at the last checkpoint of whichever model it was
    training, starts the models the run had not reached, and ends where an unbroken run ends, because each chunk
    of steps draws its clips from a generator seeded by (seed, chunk)."""
    _, reference = unbroken
    save_checkpoint = train_module.save_checkpoint

    def save_then_die(folder, *args, **kwargs):
        save_checkpoint(folder, *args, **kwargs)
        if folder.name == killed_in:
            raise KeyboardInterrupt  # killed just after that model's first checkpoint

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(three_videos, tmp_path)
    monkeypatch.setattr(train_module, "save_checkpoint", save_checkpoint)
    assert json.loads((tmp_path / CHECKPOINT_DIR / killed_in / "state.json").read_text())["step"] == 4
    assert (tmp_path / CHECKPOINT_DIR / "final").is_dir() == (killed_in == "final")
    assert not (tmp_path / "ae.json").exists()
    resumed = run(three_videos, tmp_path, resume=True)
    assert_same_model(resumed, reference)
    assert resumed.calibration == reference.calibration


def test_without_resume_training_starts_over(unbroken, three_videos: Path) -> None:
    out, reference = unbroken
    again = run(three_videos, out)  # same folder, checkpoints present, but no --resume: fresh runs
    assert_same_model(again, reference)


def test_resume_with_other_settings_or_footage_is_refused(three_videos: Path, tmp_path: Path) -> None:
    run(three_videos, tmp_path, with_steps(4))
    refused = "trained with other settings; rerun without --resume or with the same options"
    with pytest.raises(CallmError, match=refused):
        run(three_videos, tmp_path, TrainSettings(**{**with_steps(4).to_dict(), "lr": 5e-4}), resume=True)
    # The learning rate follows the whole run's schedule, so the step count is part of a run too.
    with pytest.raises(CallmError, match=refused):
        run(three_videos, tmp_path, with_steps(8), resume=True)
    # Other widths would not even fit the checkpoint's tensors: still a clear refusal, not a traceback.
    with pytest.raises(CallmError, match=refused):
        run(three_videos, tmp_path, with_steps(4), widths=(4, 16), resume=True)
    # Other footage: resuming would mix two models and make ``trained_on`` lie.
    with pytest.raises(CallmError, match=refused):
        run([three_videos / "v0.avi", three_videos / "v1.avi"], tmp_path, with_steps(4), resume=True)


def test_resume_without_a_checkpoint(three_videos: Path, tmp_path: Path) -> None:
    with pytest.raises(CallmError, match="no checkpoint to resume from"):
        run(three_videos, tmp_path, resume=True)


def test_cross_fit_parts_balance_the_folds_by_length() -> None:
    lengths = [40, 100, 50, 90]
    arrays = [np.zeros((n, 2, 2), np.uint8) for n in lengths]
    names = [f"v{i}" for i in range(4)]
    folds = cross_fit_parts(names, arrays, 2)
    assert sorted(p.name for f in folds for p in f) == names  # every video once
    totals = sorted(sum(len(p.frames) for p in f) for f in folds)
    assert totals == [140, 140]
    assert [p.name for p in folds[0]] == sorted(p.name for p in folds[0])  # in the user's order


def test_one_long_video_is_cut_in_time() -> None:
    (a,), (b,) = cross_fit_parts(["only"], [np.zeros((80, 2, 2), np.uint8)], 2)
    assert (a.name, len(a.frames), b.name, len(b.frames)) == ("only[0:40]", 40, "only[40:80]", 40)
    with pytest.raises(CallmError, match="one of at least 64 frames"):
        cross_fit_parts(["short"], [np.zeros((60, 2, 2), np.uint8)], 2)
    with pytest.raises(CallmError, match="--folds must be at least 2"):
        cross_fit_parts(["v0", "v1"], [np.zeros((80, 2, 2), np.uint8)] * 2, 1)


def test_one_long_video_trains_and_calibrates(tmp_path: Path) -> None:
    video = write_frame_folder(tmp_path / "long", make_frames(160, size=(32, 32)))
    weights = run(video, tmp_path / "w", with_steps(4))
    assert weights.calibration["holdout_videos"] == [f"{video}[0:80]", f"{video}[80:160]"]
    assert weights.calibration["holdout_frames"] == 160


def test_one_short_video_leaves_nothing_to_calibrate(tmp_path: Path) -> None:
    video = write_video(tmp_path / "short.avi", make_frames(40))
    with pytest.raises(CallmError, match="not enough normal footage to train and calibrate"):
        run(video, tmp_path / "w", with_steps(4))


def test_training_video_shorter_than_a_window(three_videos: Path, tmp_path: Path) -> None:
    short = write_video(tmp_path / "short.avi", make_frames(10))
    with pytest.raises(CallmError, match="has 10 frames; at least 16 are needed"):
        run([three_videos, short], tmp_path / "w", with_steps(4))


def test_frame_cache_is_at_model_size(three_videos: Path, tmp_path: Path) -> None:
    video = Video(three_videos / "v0.avi")
    (cached,) = train_module.cache_frames([video], (32, 32), tmp_path, None)
    assert cached.shape == (48, 32, 32) and cached.dtype == np.uint8
    assert np.array_equal(cached, np.stack(list(video.frames((32, 32)))))


def test_frame_cache_never_serves_stale_frames(tmp_path: Path) -> None:
    """Same cache folder, new content at the same path or a new size: decoded afresh, not read back."""
    path = tmp_path / "v.avi"
    write_video(path, make_frames(32, seed=1))
    (first,) = train_module.cache_frames([Video(path)], (32, 32), tmp_path / "cache", None)
    first = np.array(first)
    (resized,) = train_module.cache_frames([Video(path)], (16, 16), tmp_path / "cache", None)
    assert resized.shape == (32, 16, 16)
    write_video(path, make_frames(40, seed=2))
    (second,) = train_module.cache_frames([Video(path)], (32, 32), tmp_path / "cache", None)
    assert second.shape == (40, 32, 32)
    assert not np.array_equal(second[:32], first)


def test_the_default_smoothing_is_a_fifth_of_a_second_of_the_footage_and_at_least_two_frames(
    unbroken, tmp_path: Path
) -> None:
    """Scores are smoothed over time, not over a count of frames: at 30 frames/s 6 frames, as 2 at 10; below 10
    frames/s never under 2 frames."""
    _, at_10 = unbroken
    assert at_10.calibration["smooth_sigma"] == 2.0
    for seed in range(3):  # 144 frames at 30 frames/s last as long as 48 at 10
        write_video(tmp_path / "fast" / f"v{seed}.avi", make_frames(144, seed=seed), fps=30.0)
    at_30 = run(tmp_path / "fast", tmp_path / "out")
    assert at_30.calibration["smooth_sigma"] == 6.0
    assert at_30.training["scoring"]["smooth_sigma"] == 6.0
    assert ScoringSettings().at_fps(5.0).smooth_sigma == 2.0
    assert ScoringSettings(smooth_sigma=3.0).at_fps(30.0).smooth_sigma == 3.0  # asked for: kept
