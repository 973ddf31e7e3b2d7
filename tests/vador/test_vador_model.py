"""The VADor's maths: context-list selection (online and batched), causality, attention, phase-2 start."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from callm.errors import CallmError
from callm.vador.model import (
    ContextLists,
    VADor,
    VADorConfig,
    attend,
    causal_list_indices,
)
from callm.vador.online import OnlineScorer
from callm.vador.train import build_model

SCORES = [0.5, 0.1, 0.9, 0.1, 0.1, 0.7]


def clip_features(count: int, dim: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, dim, generator=torch.Generator().manual_seed(seed))


def tagged(index: int) -> torch.Tensor:
    """A feature that names its clip, so a list's content can be read back."""
    return torch.tensor([float(index)])


def list_clips(lists: ContextLists, kind: str) -> set[int]:
    return {int(f.item()) for f in lists.items(kind)}  # type: ignore[arg-type]


def test_online_lists_hold_the_right_k_clips() -> None:
    lists = ContextLists(("normal", "abnormal", "history"), k=2)
    for index, score in enumerate(SCORES):
        lists.add(tagged(index), score)
    assert list_clips(lists, "normal") == {1, 3}  # three clips score 0.1: the two earliest stay
    assert list_clips(lists, "abnormal") == {2, 5}  # 0.9 and 0.7 pushed out 0.5
    assert list_clips(lists, "history") == {4, 5}


def test_online_lists_start_empty_and_fill_up() -> None:
    lists = ContextLists(("normal", "abnormal"), k=4)
    like = torch.zeros(3)
    memory, present = lists.lists(like)["normal"]
    assert memory.shape == (1, 3) and not present.any()
    lists.add(torch.ones(3), 0.2)
    memory, present = lists.lists(like)["abnormal"]
    assert memory.shape == (1, 3) and present.all()
    lists.reset()
    assert not lists.lists(like)["abnormal"][1].any()


@pytest.mark.parametrize("kind", ["normal", "abnormal", "history"])
def test_batched_selection_matches_the_online_lists_before_every_clip(kind: str) -> None:
    scores = torch.tensor([SCORES])
    indices, present = causal_list_indices(scores, torch.ones_like(scores, dtype=torch.bool), kind, k=2)
    lists = ContextLists((kind,), k=2)  # type: ignore[arg-type]
    for clip, score in enumerate(SCORES):
        batched = {int(j) for j, ok in zip(indices[0, clip], present[0, clip], strict=True) if ok}
        assert batched == list_clips(lists, kind), clip
        assert all(j < clip for j in batched)  # causal: only earlier clips
        lists.add(tagged(clip), score)


def test_padding_never_enters_a_list() -> None:
    scores = torch.tensor([[0.2, 0.9, 0.99, 0.01]])
    valid = torch.tensor([[True, True, False, False]])
    indices, present = causal_list_indices(scores, valid, "abnormal", k=4)
    chosen = {int(j) for j, ok in zip(indices[0, 3], present[0, 3], strict=True) if ok}
    assert chosen == {0, 1}


X = torch.tensor([1.0, 0.0])
MEMORY = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
BOTH = torch.tensor([True, True])


def test_dot_attention_is_the_papers_product() -> None:
    # (x M^T) M = 1 * [1, 1] + 2 * [2, 0]
    assert torch.allclose(attend(X, MEMORY, BOTH, "dot"), torch.tensor([5.0, 1.0]))


def test_l2_attention_uses_unit_vectors() -> None:
    # x^ = [1, 0]; m^ = [1, 1] / sqrt 2 and [1, 0]; weights 1 / sqrt 2 and 1
    expected = torch.tensor([0.5 + 1.0, 0.5])
    assert torch.allclose(attend(X, MEMORY, BOTH, "l2"), expected)
    assert torch.allclose(attend(10 * X, 3 * MEMORY, BOTH, "l2"), expected)  # scale-free


def test_softmax_attention_is_scaled_dot_product() -> None:
    logits = [1 / math.sqrt(2), 2 / math.sqrt(2)]
    weights = [math.exp(v) / sum(math.exp(u) for u in logits) for v in logits]
    expected = torch.tensor([weights[0] * 1 + weights[1] * 2, weights[0] * 1])
    assert torch.allclose(attend(X, MEMORY, BOTH, "softmax"), expected)


@pytest.mark.parametrize("mode", ["dot", "l2", "softmax"])
def test_absent_items_count_for_nothing(mode: str) -> None:
    one = attend(X, MEMORY, torch.tensor([True, False]), mode)  # type: ignore[arg-type]
    assert torch.allclose(one, attend(X, MEMORY[:1], torch.tensor([True]), mode))  # type: ignore[arg-type]
    assert torch.equal(attend(X, MEMORY, torch.tensor([False, False]), mode), torch.zeros(2))  # type: ignore[arg-type]


def test_attention_batches_over_leading_dimensions() -> None:
    features = clip_features(6).reshape(2, 3, 8)
    memory = clip_features(24, seed=1).reshape(2, 3, 4, 8)
    present = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(2)) > 0.3
    out = attend(features, memory, present, "softmax")
    assert torch.allclose(out[1, 2], attend(features[1, 2], memory[1, 2], present[1, 2], "softmax"))


def ltc_model(lists: tuple[str, ...] = ("normal", "abnormal", "history"), attention: str = "dot") -> VADor:
    """A VADor whose projections are not zero yet, so the context changes the scores."""
    torch.manual_seed(0)
    model = VADor(VADorConfig(dim=8, lists=lists, k=2, attention=attention))  # type: ignore[arg-type]
    with torch.no_grad():
        for projection in model.projections.values():
            projection.fc2.weight.normal_(0, 0.5)
    return model.eval()


@torch.no_grad()
def test_a_clip_never_sees_later_clips() -> None:
    model = ltc_model()
    features = clip_features(10)
    changed = features.clone()
    changed[6:] = clip_features(4, seed=5)
    before, after = model(features[None]).logits[0], model(changed[None]).logits[0]
    assert torch.allclose(before[:6], after[:6])
    assert not torch.allclose(before[6:], after[6:])
    earlier = features.clone()
    earlier[2] += 3.0  # a change before clip 6 does reach it, through the lists
    assert not torch.allclose(model(earlier[None]).logits[0, 6:], before[6:])


@pytest.mark.parametrize("attention", ["dot", "l2", "softmax"])
@torch.no_grad()
def test_online_scores_equal_the_batched_scores(attention: str) -> None:
    model = ltc_model(attention=attention)
    features = clip_features(12, seed=3)
    batched = torch.softmax(model(features[None]).logits[0], dim=-1)[:, 1]
    scorer = OnlineScorer(model)
    online = [scorer.score(f) for f in features]
    assert np.allclose(online, batched.numpy(), atol=1e-6)
    scorer.reset()
    assert scorer.score(features[0]) == pytest.approx(online[0])


@torch.no_grad()
def test_online_steps_give_each_clips_x_and_causal_x_tilde_with_unchanged_scores() -> None:
    model = ltc_model()
    features = clip_features(8, seed=4)
    scorer = OnlineScorer(model)
    steps = [scorer.step(f) for f in features]
    scorer.reset()
    assert [s.score for s in steps] == [scorer.score(f) for f in features]  # score() is step().score
    for step, row in zip(steps, features, strict=True):
        assert torch.equal(step.features, model.standardise(row))
        assert step.score == pytest.approx(torch.softmax(model.predictor(step.enriched), -1)[1].item())
        assert torch.equal(step.pair, torch.cat([step.features, step.enriched]))
    assert not torch.allclose(steps[5].enriched, steps[5].features)
    # x~ of a clip is built from earlier clips only: a different future leaves it as it was.
    changed = torch.cat([features[:5], clip_features(3, seed=9)])
    scorer.reset()
    again = [scorer.step(f) for f in changed]
    assert all(torch.equal(a.enriched, b.enriched) for a, b in zip(steps[:5], again[:5], strict=True))
    baseline = OnlineScorer(ltc_model(lists=())).step(features[0])
    assert torch.equal(baseline.enriched, baseline.features)  # without lists x~ is x


@torch.no_grad()
def test_padding_does_not_change_a_videos_scores() -> None:
    model = ltc_model()
    features = clip_features(5)
    padded = torch.cat([features, torch.zeros(3, 8)])[None]
    valid = torch.tensor([[True] * 5 + [False] * 3])
    assert torch.allclose(model(padded, valid).logits[0, :5], model(features[None]).logits[0])


@torch.no_grad()
def test_phase_two_starts_from_phase_one() -> None:
    features = [clip_features(6, seed=s).numpy() * 4 + 1 for s in range(3)]
    phase1 = build_model(VADorConfig(dim=8), features, None, seed=1)
    phase2 = build_model(VADorConfig(dim=8, lists=("normal", "abnormal")), features, phase1, seed=2)
    for name, tensor in phase1.state_dict().items():
        assert torch.equal(phase2.state_dict()[name], tensor), name
    clips = torch.from_numpy(features[0])[None]
    assert torch.allclose(phase2(clips).logits, phase1(clips).logits)  # the projections start at zero


def test_build_model_standardises_on_the_training_features() -> None:
    features = [np.array([[1.0, 5.0], [3.0, 5.0]], dtype=np.float32)]
    model = build_model(VADorConfig(dim=2), features, None)
    assert torch.allclose(model.feature_mean, torch.tensor([2.0, 5.0]))
    assert torch.allclose(model.feature_std, torch.tensor([1.0, 1.0]))  # a constant feature keeps spread 1


def test_phase_two_refuses_a_phase_one_of_another_width() -> None:
    phase1 = VADor(VADorConfig(dim=4))
    with pytest.raises(CallmError, match="4 wide"):
        build_model(VADorConfig(dim=8, lists=("normal",)), [np.zeros((2, 8), np.float32)], phase1)


def test_config_refuses_unknown_lists_and_attention() -> None:
    with pytest.raises(CallmError, match="context lists"):
        VADorConfig(dim=4, lists=("long",))  # type: ignore[arg-type]
    with pytest.raises(CallmError, match="attention"):
        VADorConfig(dim=4, attention="cosine")  # type: ignore[arg-type]
    config = VADorConfig(dim=4, lists=("normal", "history"), k=3, attention="l2")
    assert VADorConfig.from_dict(config.to_dict()) == config
