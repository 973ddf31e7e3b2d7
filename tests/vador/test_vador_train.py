"""MIL training: the loss on a known case, the optional terms, the schedule, learning, and resuming."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from callm.vador import train as train_module
from callm.vador.model import VADorConfig, VADorOutput
from callm.vador.train import (
    TrainSettings,
    build_model,
    learning_rate,
    mil_loss,
    pad_videos,
    smoothness_loss,
    sparsity_loss,
    train,
    vador_loss,
)
from callm.vador.weights import VADorWeights, load, save

# Video 0 (abnormal): clip 1 scores highest. Video 1 (normal): its third clip is padding and must be ignored,
# though it would score highest.
LOGITS = torch.tensor(
    [
        [[0.0, 0.0], [0.0, 2.0], [0.0, 1.0]],
        [[1.0, 0.0], [0.0, 0.0], [0.0, 5.0]],
    ]
)
VALID = torch.tensor([[True, True, True], [True, True, False]])
LABELS = torch.tensor([1, 0])


def test_mil_loss_is_the_cross_entropy_of_each_videos_top_clip() -> None:
    abnormal_top = math.log(1 + math.exp(-2.0))  # -log softmax([0, 2])[1]
    normal_top = math.log(2.0)  # -log softmax([0, 0])[0]
    assert mil_loss(LOGITS, VALID, LABELS).item() == pytest.approx((abnormal_top + normal_top) / 2, rel=1e-6)


def test_mil_loss_trains_only_the_top_clips() -> None:
    logits = LOGITS.clone().requires_grad_()
    mil_loss(logits, VALID, LABELS).backward()
    touched = logits.grad.abs().sum(-1) > 0
    assert touched.tolist() == [[False, True, False], [False, True, False]]


def test_smoothness_and_sparsity_average_over_clips_and_videos() -> None:
    scores = torch.tensor([[0.0, 1.0, 1.0], [0.5, 0.0, 9.0]])
    assert smoothness_loss(scores, VALID).item() == pytest.approx(((1 + 0) / 2 + 0.25) / 2)
    assert sparsity_loss(scores, VALID).item() == pytest.approx((2 / 3 + 0.25) / 2)


def test_phase_two_loss_adds_the_plain_predictors_term() -> None:
    plain = torch.zeros_like(LOGITS)
    output = VADorOutput(plain, LOGITS)
    settings = TrainSettings()
    with_context = vador_loss(output, VALID, LABELS, settings, with_context=True)
    assert with_context.item() == pytest.approx(mil_loss(LOGITS, VALID, LABELS).item() + math.log(2.0))
    regularised = vador_loss(output, VALID, LABELS, TrainSettings(sparsity=1.0), with_context=False)
    scores = torch.softmax(LOGITS, -1)[..., 1]
    expected = mil_loss(LOGITS, VALID, LABELS) + sparsity_loss(scores, VALID)
    assert regularised.item() == pytest.approx(expected.item())


def test_warm_up_then_cosine_to_zero() -> None:
    settings = TrainSettings(lr=1.0, warmup=0.1)
    rates = [learning_rate(settings, step, 100) for step in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert rates[10] == pytest.approx(1.0) and rates[-1] < 0.001
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))


def test_pad_videos_marks_the_real_clips() -> None:
    batch, valid = pad_videos([np.ones((2, 3), np.float32), np.ones((4, 3), np.float32)])
    assert batch.shape == (2, 4, 3) and valid.sum(1).tolist() == [2, 4]
    assert batch[0, 2:].abs().sum() == 0


def toy_videos(count: int = 32, seed: int = 0) -> tuple[list[np.ndarray], list[int]]:
    """Normal videos of noise; in abnormal ones clips 2 and 3 are pushed along feature 0."""
    rng = np.random.default_rng(seed)
    features, labels = [], []
    for index in range(count):
        video = rng.normal(size=(int(rng.integers(6, 10)), 6)).astype(np.float32)
        if index % 2:
            video[2:4, 0] += 4.0
        features.append(video)
        labels.append(index % 2)
    return features, labels


@pytest.mark.parametrize("lists", [(), ("normal", "abnormal", "history")])
def test_training_finds_the_abnormal_clips(lists: tuple[str, ...]) -> None:
    features, labels = toy_videos()
    model = build_model(VADorConfig(dim=6, lists=lists), features, None)  # type: ignore[arg-type]
    result = train(features, labels, model, TrainSettings(epochs=20, lr=3e-3, batch_size=4))
    assert result.losses[-1] < result.losses[0] / 2
    with torch.no_grad():
        scores = [torch.softmax(result.model(torch.from_numpy(f)[None]).logits[0], -1)[:, 1] for f in features]
    peaks = [(int(s.argmax()), float(s.max()), label) for s, label in zip(scores, labels, strict=True)]
    assert all(top in (2, 3) for top, _, label in peaks if label)
    assert max(peak for _, peak, label in peaks if not label) < min(peak for _, peak, label in peaks if label)


def test_resume_continues_an_interrupted_run_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    features, labels = toy_videos(8)
    settings = TrainSettings(epochs=4, lr=1e-3, batch_size=3)
    config = VADorConfig(dim=6, lists=("normal", "abnormal"))
    unbroken = train(features, labels, build_model(config, features, None), settings, tmp_path / "a")

    real_save = train_module.save_checkpoint

    def save_then_stop(*args: object) -> None:
        real_save(*args)  # type: ignore[arg-type]
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train(features, labels, build_model(config, features, None), settings, tmp_path / "b")
    monkeypatch.undo()
    resumed = train(features, labels, build_model(config, features, None), settings, tmp_path / "b", resume=True)
    assert resumed.losses == pytest.approx(unbroken.losses)
    for name, tensor in unbroken.model.state_dict().items():
        assert torch.allclose(resumed.model.state_dict()[name], tensor), name


def test_weights_round_trip(tmp_path: Path) -> None:
    features, _ = toy_videos(4)
    model = build_model(VADorConfig(dim=6, lists=("history",), k=3, attention="softmax"), features, None)
    save(VADorWeights(model, {"kind": "ae", "pooling": "avg"}, {"phase": 2}), tmp_path / "w")
    loaded = load(tmp_path / "w")
    assert loaded.model.config == model.config and loaded.features == {"kind": "ae", "pooling": "avg"}
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor)
