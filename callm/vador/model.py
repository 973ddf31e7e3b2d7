"""The VADor as plain modules: the anomaly predictor (AP) and the Long-Term Context (LTC) around it.

For clip features x_1..x_T of one video the AP g maps each clip to two logits (normal, abnormal). The LTC keeps,
for clip i, lists built only from clips before it:

* N: the K clips with the lowest AP scores so far (the video's most normal moments),
* A: the K clips with the highest AP scores so far (its most abnormal moments),
* H: the last K clips (short-term history; LTC plus H is "LSTC").

Each list M attends to the clip, c_i = attend(x_i, M), plain dot product as in the paper: c_i = (x_i M^T) M. The
clip is then scored as g(x~_i) with x~_i = x_i + w_n(n_i) + w_a(a_i) (+ w_h(h_i)). The lists are ranked by the
AP's score of the plain clip, g(x_i), as in the reference code, so the lists never depend on the LTC's own output.

``VADor.forward`` scores whole (padded) videos at once for training, vectorised over clips; ``ContextLists`` is
the same causal selection kept incrementally for a stream (``callm.vador.online``). Ties between equal scores go to
the earlier clip in both.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from callm.errors import CallmError

ListKind = Literal["normal", "abnormal", "history"]
LIST_KINDS: tuple[ListKind, ...] = ("normal", "abnormal", "history")
Attention = Literal["dot", "l2", "softmax"]
ATTENTIONS: tuple[Attention, ...] = ("dot", "l2", "softmax")


@dataclass(frozen=True)
class VADorConfig:
    """Shape of a VADor; saved with its weights so a file rebuilds its own model."""

    dim: int  # feature width of one clip
    hidden: int = 64  # width inside the predictor and each context projection (the reference code's)
    lists: tuple[ListKind, ...] = ()  # () = the phase-1 baseline; ("normal", "abnormal") = LTC; + "history" = LSTC
    k: int = 4  # items per list
    attention: Attention = "dot"

    def __post_init__(self) -> None:
        unknown = [kind for kind in self.lists if kind not in LIST_KINDS]
        if unknown or len(set(self.lists)) != len(self.lists):
            raise CallmError(f"context lists must be distinct names from {', '.join(LIST_KINDS)}, got {self.lists}")
        if self.attention not in ATTENTIONS:
            raise CallmError(f"unknown attention {self.attention!r}: use one of {', '.join(ATTENTIONS)}")
        if self.dim < 1 or self.hidden < 1 or self.k < 1:
            raise CallmError(f"VADor dim, hidden and k must be positive, got {self.dim}, {self.hidden}, {self.k}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["lists"] = list(self.lists)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VADorConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise CallmError(f"VADor config has unknown fields: {sorted(unknown)}")
        return cls(**{**data, "lists": tuple(data.get("lists", ()))})


class AnomalyPredictor(nn.Module):
    """g: two fully connected layers, (..., dim) clip features -> (..., 2) logits (normal, abnormal)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.norm(self.fc1(features))))


class ContextProjection(nn.Module):
    """w: a list's attended feature -> the residual added to the clip.

    The LayerNorm in the bottleneck absorbs the scale of the plain dot-product attention, which grows with the
    cube of the feature norm. The output layer starts at zero, so a phase-2 model starts as its phase-1 AP.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, attended: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(self.fc1(attended)))


def attend(features: torch.Tensor, memory: torch.Tensor, present: torch.Tensor, mode: Attention) -> torch.Tensor:
    """A list's summary for each clip: features (..., D), memory (..., K, D), present (..., K) -> (..., D).

    ``dot``: sum_j (x . m_j) m_j, the paper's (x M^T) M. ``l2``: the same on L2-normalised x and m_j (cosine
    weights on unit vectors, as the reference code does). ``softmax``: scaled dot-product attention,
    sum_j softmax_j(x . m_j / sqrt(D)) m_j. Absent items (a list not yet full) count for nothing; an empty list
    gives zeros.
    """
    if mode == "l2":
        features, memory = F.normalize(features, dim=-1), F.normalize(memory, dim=-1)
    weights = torch.einsum("...d,...kd->...k", features, memory)
    if mode == "softmax":
        weights = weights / features.shape[-1] ** 0.5
        weights = torch.softmax(weights.masked_fill(~present, float("-inf")), dim=-1)
        weights = torch.nan_to_num(weights, nan=0.0)  # an all-absent row is all -inf: softmax gives NaN
    elif mode not in ("dot", "l2"):
        raise CallmError(f"unknown attention {mode!r}: use one of {', '.join(ATTENTIONS)}")
    weights = weights * present
    return torch.einsum("...k,...kd->...d", weights, memory)


def causal_list_indices(
    scores: torch.Tensor, valid: torch.Tensor, kind: ListKind, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which earlier clips form list ``kind`` for every clip: scores, valid (B, T) -> indices, present (B, T, K').

    Clip i sees only clips j < i (and valid ones, so padding never enters). K' = min(k, T).
    """
    batch, length = scores.shape
    width = min(k, length)
    clips = torch.arange(length, device=scores.device)
    if kind == "history":
        indices = clips[:, None] - width + torch.arange(width, device=scores.device)[None, :]
        present = (indices >= 0).expand(batch, -1, -1)
        return indices.clamp(min=0).expand(batch, -1, -1), present
    earlier = (clips[None, :] < clips[:, None])[None] & valid[:, None, :]  # (B, T_i, T_j)
    fill = float("inf") if kind == "normal" else float("-inf")
    ranked = scores[:, None, :].expand(-1, length, -1).masked_fill(~earlier, fill)
    # A stable sort keeps equal scores in clip order, so ties go to the earlier clip.
    order = torch.sort(ranked, dim=-1, descending=kind == "abnormal", stable=True).indices[..., :width]
    return order, torch.gather(earlier, 2, order)


class VADorOutput(NamedTuple):
    plain_logits: torch.Tensor  # (B, T, 2) g(x): the AP alone; ranks the lists
    logits: torch.Tensor  # (B, T, 2) g(x~): with the context (equal to plain_logits without lists)


def abnormal_probability(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.float(), dim=-1)[..., 1]


class VADor(nn.Module):
    """Anomaly predictor plus optional context lists over standardised clip features (..., dim).

    The feature mean and spread of the training set are buffers, so the model takes raw encoder features.
    """

    def __init__(self, config: VADorConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("feature_mean", torch.zeros(config.dim))
        self.register_buffer("feature_std", torch.ones(config.dim))
        self.predictor = AnomalyPredictor(config.dim, config.hidden)
        self.projections = nn.ModuleDict({kind: ContextProjection(config.dim, config.hidden) for kind in config.lists})

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.feature_mean) / self.feature_std

    def contextual(self, features: torch.Tensor, lists: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """x~ = x + sum over lists of w(attend(x, list)); ``lists`` maps a kind to (memory, present)."""
        enriched = features
        for kind, projection in self.projections.items():
            memory, present = lists[kind]
            enriched = enriched + projection(attend(features, memory, present, self.config.attention))
        return enriched

    def forward(self, features: torch.Tensor, valid: torch.Tensor | None = None) -> VADorOutput:
        """Score whole videos: raw features (B, T, dim), valid (B, T) marking real clips (False = padding)."""
        x = self.standardise(features)
        plain = self.predictor(x)
        if not self.config.lists:
            return VADorOutput(plain, plain)
        if valid is None:
            valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        scores = abnormal_probability(plain.detach())
        every_clip = x[:, None].expand(-1, x.shape[1], -1, -1)  # (B, T_i, T_j, dim), a view
        lists = {}
        for kind in self.config.lists:
            indices, present = causal_list_indices(scores, valid, kind, self.config.k)
            memory = torch.gather(every_clip, 2, indices[..., None].expand(-1, -1, -1, x.shape[-1]))
            lists[kind] = (memory, present)  # memory (B, T, K', dim): clip i's list items
        return VADorOutput(plain, self.predictor(self.contextual(x, lists)))


class ContextLists:
    """The LTC lists of one stream, updated clip by clip in bounded memory (K items per list).

    ``lists()`` gives what the next clip may see; ``add`` then files that clip. Selection matches
    ``causal_list_indices``: (score, arrival) order, earlier clip first among equal scores.
    """

    def __init__(self, kinds: tuple[ListKind, ...], k: int) -> None:
        self.kinds = kinds
        self.k = k
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.normal: list[tuple[float, int, torch.Tensor]] = []
        self.abnormal: list[tuple[float, int, torch.Tensor]] = []
        self.history: deque[torch.Tensor] = deque(maxlen=self.k)

    def add(self, features: torch.Tensor, score: float) -> None:
        item = (score, self.count, features)
        self.normal = sorted([*self.normal, item], key=lambda it: (it[0], it[1]))[: self.k]
        self.abnormal = sorted([*self.abnormal, item], key=lambda it: (-it[0], it[1]))[: self.k]
        self.history.append(features)
        self.count += 1

    def items(self, kind: ListKind) -> list[torch.Tensor]:
        if kind == "history":
            return list(self.history)
        return [features for _, _, features in (self.normal if kind == "normal" else self.abnormal)]

    def lists(self, like: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """kind -> (memory (K', dim), present (K',)) for a clip like ``like`` (dim,); an empty list: one absent row."""
        found = {}
        for kind in self.kinds:
            items = self.items(kind)
            if items:
                found[kind] = (torch.stack(items), torch.ones(len(items), dtype=torch.bool, device=like.device))
            else:
                found[kind] = (torch.zeros_like(like)[None], torch.zeros(1, dtype=torch.bool, device=like.device))
        return found
