"""The 3D convolutional autoencoder: shapes, output range, config validation, and that it learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic import make_frames

import callm.ae.train as train_module
from callm.ae.model import AEConfig, ConvAutoencoder3d
from callm.ae.train import ClipSampler, TrainSettings, train
from callm.errors import CallmError


@pytest.mark.parametrize(
    ("config", "batch"),
    [
        (AEConfig(height=32, width=32, widths=(4, 8)), 2),
        (AEConfig(height=16, width=48, widths=(2, 4, 4)), 1),
        (AEConfig(height=32, width=32, widths=(4, 8), first_time_stride=2), 3),
        (AEConfig(frames=8, height=8, width=8, widths=(3,)), 2),
    ],
)
def test_output_shape_equals_input_shape(config: AEConfig, batch: int) -> None:
    model = ConvAutoencoder3d(config).eval()
    x = torch.rand(batch, 1, config.frames, config.height, config.width) * 2 - 1
    with torch.no_grad():
        assert model(x).shape == x.shape
        code = model.encode(x)
    # Each layer halves space; time is halved by all but the first (unless first_time_stride says otherwise).
    layers = len(config.widths)
    time_factor = config.first_time_stride * 2 ** (layers - 1)
    expected = (batch, config.widths[-1], config.frames // time_factor, config.height >> layers, config.width >> layers)
    assert code.shape == expected


def test_fully_convolutional_scores_other_frame_sizes() -> None:
    model = ConvAutoencoder3d(AEConfig(height=32, width=32, widths=(4, 8))).eval()
    x = torch.zeros(1, 1, 16, 48, 64)  # trained on 32x32 crops, scores whole 48x64 frames
    with torch.no_grad():
        assert model(x).shape == x.shape


def test_tanh_bounds_the_output() -> None:
    torch.manual_seed(0)
    model = ConvAutoencoder3d(AEConfig(height=16, width=16, widths=(4, 8))).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 1, 16, 16, 16) * 1000)
    assert y.min() >= -1.0 and y.max() <= 1.0
    assert y.abs().max() > 0.99  # saturated by the huge input, not squashed to zero


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"height": 30, "width": 32, "widths": (4, 8)}, "must divide by 2 in time and 4 in space"),
        ({"height": 32, "width": 36, "widths": (4, 8, 8)}, "divide by 4 in time and 8 in space"),
        ({"frames": 12, "height": 32, "width": 32, "widths": (4, 8, 8, 8)}, "divide by 8 in time"),
        ({"frames": 16, "height": 32, "width": 32, "widths": (4, 8), "first_time_stride": 3}, "6 in time"),
        ({"widths": ()}, "widths must be positive"),
        ({"widths": (4, 0)}, "widths must be positive"),
    ],
)
def test_config_rejects_sizes_that_do_not_divide(kwargs: dict, message: str) -> None:
    with pytest.raises(CallmError, match=message):
        AEConfig(**kwargs)


def test_config_dict_round_trip_and_unknown_fields() -> None:
    config = AEConfig(height=32, width=64, widths=(4, 8), first_time_stride=2)
    data = config.to_dict()
    assert data["widths"] == [4, 8]  # JSON-friendly
    assert AEConfig.from_dict(data) == config
    with pytest.raises(CallmError, match=r"unknown fields: \['depth'\]"):
        AEConfig.from_dict({**data, "depth": 3})


def test_a_few_training_steps_reduce_the_loss(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_module, "CHUNK_STEPS", 4)
    videos = [make_frames(32, size=(32, 32), seed=s) for s in range(2)]
    settings = TrainSettings(batch_size=4, lr=3e-3, crop=0)
    config = AEConfig(height=32, width=32, widths=(4, 8))
    result = train(videos, config, settings, 16, tmp_path / "run", torch.device("cpu"), torch.float32)
    assert len(result.losses) == 4  # one mean loss per checkpointed chunk of 4 steps
    assert result.losses[-1] < 0.7 * result.losses[0]
    assert result.steps == 16
    assert not result.model.training  # handed back ready to score
    assert (tmp_path / "run" / "state.safetensors").is_file()


def test_clip_sampler_is_deterministic_and_crops() -> None:
    videos = [make_frames(20, size=(48, 64), seed=s) for s in range(3)]
    sampler = ClipSampler(videos, crop=32, motion_share=0.5)
    a = sampler.sample(np.random.default_rng(7), 6)
    b = sampler.sample(np.random.default_rng(7), 6)
    assert a.shape == (6, 16, 32, 32) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, sampler.sample(np.random.default_rng(8), 6))
    whole = ClipSampler(videos, crop=0, motion_share=0.5).sample(np.random.default_rng(0), 2)
    assert whole.shape == (2, 16, 48, 64)
