"""Checking mapped tensors against a module and adopting them: one ``CallmError`` line naming the component and
the keys that do not fit, and a ``LoadReport`` of what each source gave.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn
from transformers import (
    PretrainedConfig,
)

from callm.errors import CallmError
from callm.vlm.weights.keys import MappedWeights

ConfigT = TypeVar("ConfigT", bound=PretrainedConfig)


@dataclass(frozen=True)
class LoadReport:
    """What one load took from one source, and what it deliberately left there."""

    component: str
    source: str
    tensors: int
    parameters: int
    ignored: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = f"{self.component}: {self.tensors} tensors, {self.parameters:,} parameters from {self.source}"
        return text + (f" ({len(self.ignored)} unused tensors ignored)" if self.ignored else "")


def listing(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _owner(key: str, parts: list[MappedWeights]) -> MappedWeights | None:
    """The part whose longest prefix matches: a LAVIS Q-Former file owns post_layernorm inside vision_model."""
    best: tuple[int, MappedWeights | None] = (-1, None)
    for part in parts:
        for prefix in part.owns:
            if key.startswith(prefix) and len(prefix) > best[0]:
                best = (len(prefix), part)
    return best[1]


def _mismatch(part: MappedWeights, owned: list[str], expected: Mapping[str, torch.Size]) -> str | None:
    missing = [k for k in owned if k not in part.tensors]
    unexpected = part.unexpected + [part.origins[k] for k in part.tensors if k not in expected]
    wrong = [
        f"{part.origins[k]} {tuple(t.shape)} vs {tuple(expected[k])}"
        for k, t in part.tensors.items()
        if k in expected and t.shape != expected[k]
    ]
    problems = [
        f"{label} {listing(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape (file vs model)", wrong))
        if keys
    ]
    return f"{part.component} ({part.source}) does not match: {'; '.join(problems)}" if problems else None


def check_parts(module: nn.Module, parts: list[MappedWeights]) -> list[str]:
    """One message per part whose tensors do not fit the keys it owns in ``module``."""
    expected = {k: v.shape for k, v in module.state_dict().items()}
    owned: dict[int, list[str]] = {id(part): [] for part in parts}
    for key in expected:
        owner = _owner(key, parts)
        if owner is not None:
            owned[id(owner)].append(key)
    problems = [_mismatch(part, owned[id(part)], expected) for part in parts]
    return [p for p in problems if p]


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def assemble(build: Callable[[], ModuleT], parts: list[MappedWeights]) -> tuple[ModuleT, list[LoadReport]]:
    """Build the module without allocating it, check every part, then adopt the parts' tensors as its weights.

    Returns the module in eval mode, with one report per part.
    """
    with torch.device("meta"):
        module = build()
    problems = check_parts(module, parts)
    unowned = [k for k in module.state_dict() if _owner(k, parts) is None]
    if unowned:
        sources = " + ".join(f"{p.component} ({p.source})" for p in parts)
        problems.append(f"{sources} leave {listing(unowned)} unfilled: pair LAVIS files with LAVIS files")
    if problems:
        raise CallmError("; ".join(problems))
    state: dict[str, torch.Tensor] = {}
    reports = []
    for part in parts:
        taken = {k: t for k, t in part.tensors.items() if _owner(k, parts) is part}
        state.update(taken)
        # Tensors a part carries for a key another part owns (HF's post_layernorm next to LAVIS's ln_vision).
        shadowed = [part.origins[k] for k in part.tensors if k not in taken]
        reports.append(
            LoadReport(
                part.component,
                part.source,
                len(taken),
                sum(t.numel() for t in taken.values()),
                tuple(part.ignored + shadowed),
            )
        )
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval(), reports  # for inference: dropout off (a trainer switches it back on)


def arch_config(
    config_class: type[ConfigT], defaults: Mapping[str, Any], overrides: Mapping[str, Any], table: str
) -> ConfigT:
    """A transformers config from callm's defaults and the ``[vlm.<table>]`` overrides; unknown names refused."""
    unknown = sorted(set(overrides) - set(config_class().to_dict()))
    if unknown:
        raise CallmError(f"[vlm.{table}]: unknown setting(s) {', '.join(unknown)}")
    return config_class(**{**defaults, **overrides})


def token_count(tensor: torch.Tensor | None, default: int) -> int:
    """Rows of a (1, N, width) query-token tensor or an (N, width) embedding; ``default`` when absent."""
    return int(tensor.shape[-2]) if tensor is not None and tensor.ndim >= 2 else default
