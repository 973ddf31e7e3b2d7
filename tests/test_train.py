"""``train_ae`` end to end: hold-out split, calibration, checkpoints, and resuming to the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import make_frames, write_frame_folder, write_video

import callm.ae.train as train_module
from callm.ae.model import AEConfig
from callm.ae.train import CACHE_DIR, CHECKPOINT_DIR, ScoringSettings, TrainSettings, split_holdout, train_ae
from callm.ae.weights import load
from callm.errors import CallmError
from callm.video import Video

CONFIG = AEConfig(height=32, width=32, widths=(4, 8))
SETTINGS = TrainSettings(epochs=2, batch_size=4, lr=1e-3, crop=16, clips_per_epoch=12)


@pytest.fixture(scope="module")
def three_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("three")
    for seed in range(3):
        write_video(folder / f"v{seed}.avi", make_frames(48, seed=seed))
    return folder


def run(data: Path | list[Path], out: Path, settings: TrainSettings = SETTINGS, config: AEConfig = CONFIG, **kwargs):
    paths = data if isinstance(data, list) else [data]
    scoring = ScoringSettings()
    return train_ae(paths, out, config, settings, scoring, torch.device("cpu"), torch.float32, 10.0, **kwargs)


def with_epochs(epochs: int) -> TrainSettings:
    return TrainSettings(**{**SETTINGS.to_dict(), "epochs": epochs})


def assert_same_model(a, b) -> None:
    state_a, state_b = a.model.state_dict(), b.model.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.allclose(state_a[key].float(), state_b[key].float(), rtol=0, atol=1e-7), key


@pytest.fixture(scope="module")
def unbroken(three_videos: Path, tmp_path_factory: pytest.TempPathFactory):
    """The reference: two epochs in one go."""
    out = tmp_path_factory.mktemp("unbroken")
    return out, run(three_videos, out)


def test_train_ae_writes_calibrated_weights(unbroken, three_videos: Path) -> None:
    out, weights = unbroken
    loaded = load(out)
    assert loaded.config == CONFIG
    cal = loaded.calibration
    # Of three videos the last is held out and calibrates the gate; it is never trained on.
    assert cal["holdout_videos"] == [str(three_videos / "v2.avi")]
    assert loaded.training["trained_on"] == [str(three_videos / "v0.avi"), str(three_videos / "v1.avi")]
    assert cal["holdout_frames"] == 48
    assert cal["error"] == "motion" and cal["patch"] == 4  # 0.125 of the 32-pixel side
    assert cal["psnr_scale"] > 0 and np.isfinite(cal["threshold"])
    assert len(loaded.training["epoch_losses"]) == 2
    assert loaded.training["clips_seen"] == 2 * 12
    assert len(list((out / CACHE_DIR).glob("*.u8"))) == 3
    state = json.loads((out / CHECKPOINT_DIR / "state.json").read_text())
    assert state["epoch"] == 2
    assert weights.calibration == loaded.calibration


def test_resume_after_a_kill_matches_an_unbroken_run(
    unbroken, three_videos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--resume`` after a kill: the same command picks up at the last checkpoint and ends where an unbroken
    run ends, because each epoch draws its clips from a generator seeded by (seed, epoch)."""
    _, reference = unbroken
    save_checkpoint = train_module.save_checkpoint

    def save_then_die(*args, **kwargs):
        save_checkpoint(*args, **kwargs)
        raise KeyboardInterrupt  # killed just after the first epoch's checkpoint

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(three_videos, tmp_path)
    monkeypatch.setattr(train_module, "save_checkpoint", save_checkpoint)
    assert json.loads((tmp_path / CHECKPOINT_DIR / "state.json").read_text())["epoch"] == 1
    assert not (tmp_path / "ae.json").exists()
    resumed = run(three_videos, tmp_path, resume=True)
    assert_same_model(resumed, reference)


def test_without_resume_training_starts_over(unbroken, three_videos: Path) -> None:
    out, reference = unbroken
    again = run(three_videos, out)  # same folder, checkpoint present, but no --resume: two fresh epochs
    assert_same_model(again, reference)


def test_resume_with_other_settings_is_refused(three_videos: Path, tmp_path: Path) -> None:
    run(three_videos, tmp_path, with_epochs(1))
    refused = "trained with other settings; rerun without --resume or with the same options"
    with pytest.raises(CallmError, match=refused):
        run(three_videos, tmp_path, TrainSettings(**{**SETTINGS.to_dict(), "epochs": 1, "lr": 5e-4}), resume=True)
    # The learning rate follows the whole run's schedule, so the epoch count is part of a run too.
    with pytest.raises(CallmError, match=refused):
        run(three_videos, tmp_path, with_epochs(2), resume=True)
    # Other widths would not even fit the checkpoint's tensors: still a clear refusal, not a traceback.
    with pytest.raises(CallmError, match=refused):
        run(three_videos, tmp_path, with_epochs(1), config=AEConfig(height=32, width=32, widths=(4, 16)), resume=True)


def test_resume_without_a_checkpoint(three_videos: Path, tmp_path: Path) -> None:
    with pytest.raises(CallmError, match="no checkpoint to resume from"):
        run(three_videos, tmp_path, resume=True)


def test_split_holdout() -> None:
    videos = [object()] * 7
    assert split_holdout(videos[:1], 0.15) == ([0], [])
    assert split_holdout(videos[:2], 0.15) == ([0], [1])
    assert split_holdout(videos, 0.3) == ([0, 1, 2, 3, 4], [5, 6])
    assert split_holdout(videos[:3], 0.99) == ([0], [1, 2])  # at least one video trains
    assert split_holdout(videos[:3], 0.0) == ([0, 1, 2], [])


def test_one_long_video_is_split_in_time(tmp_path: Path) -> None:
    video = write_frame_folder(tmp_path / "long", make_frames(80, size=(32, 32)))
    weights = run(video, tmp_path / "w", with_epochs(1), holdout=0.4)
    cut = int(80 * 0.6)
    assert weights.calibration["holdout_videos"] == [f"{video}[{cut}:]"]
    assert weights.calibration["holdout_frames"] == 80 - cut


def test_one_short_video_leaves_nothing_to_calibrate(tmp_path: Path) -> None:
    video = write_video(tmp_path / "short.avi", make_frames(40))
    with pytest.raises(CallmError, match="no normal footage left to calibrate"):
        run(video, tmp_path / "w", with_epochs(1))


def test_training_video_shorter_than_a_window(three_videos: Path, tmp_path: Path) -> None:
    short = write_video(tmp_path / "short.avi", make_frames(10))
    with pytest.raises(CallmError, match="has 10 frames; at least 16 are needed"):
        run([three_videos, short], tmp_path / "w", with_epochs(1))


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
