"""VAD-LLaMA's Table 3 on the data at hand: which context lists help the anomaly predictor.

Rows: the phase-1 baseline, then phase 2 from the same phase-1 weights with the normal list (+N), the abnormal
list (+A), both (+N+A, the LTC) and both plus the short-term history (+N+A+H, the LSTC). Phase 2 trains longer
than the baseline did, so a control row trains the plain predictor for the same phase-2 steps: a list helps only
if it beats that row, not just the baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.progress import Progress

from callm.vador.evaluate import evaluate
from callm.vador.labels import Labelled
from callm.vador.model import Attention, ListKind, VADor, VADorConfig
from callm.vador.train import TrainSettings, build_model, train

TABLE3: tuple[tuple[str, tuple[ListKind, ...]], ...] = (
    ("+N", ("normal",)),
    ("+A", ("abnormal",)),
    ("+N+A", ("normal", "abnormal")),
    ("+N+A+H", ("normal", "abnormal", "history")),
)
BASELINE = "baseline"
CONTROL = "AP, phase-2 steps"


@dataclass(frozen=True)
class AblationRow:
    name: str
    attention: Attention | None  # None for the rows without lists
    auc_o: float
    auc_a: float | None
    final_loss: float

    @property
    def label(self) -> str:
        return self.name if self.attention is None else f"{self.name} ({self.attention})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "row": self.name,
            "attention": self.attention,
            "auc_o": self.auc_o,
            "auc_a": self.auc_a,
            "final_loss": self.final_loss,
        }


def ablation(
    features: Sequence[np.ndarray],
    labels: Sequence[int],
    test: Labelled,
    phase1: TrainSettings,
    phase2: TrainSettings,
    k: int = 4,
    attentions: Sequence[Attention] = ("dot",),
    rows: Sequence[tuple[str, tuple[ListKind, ...]]] = TABLE3,
    progress: Progress | None = None,
) -> list[AblationRow]:
    """Train the baseline once, then each row's phase 2 from it with each attention; evaluate all on ``test``."""
    dim = int(features[0].shape[1])
    task = progress.add_task("ablation", total=2 + len(rows) * len(attentions)) if progress else None
    found: list[AblationRow] = []

    def run(
        name: str, lists: tuple[ListKind, ...], settings: TrainSettings, init: VADor | None, attention: Attention
    ) -> VADor:
        config = VADorConfig(dim, lists=lists, k=k, attention=attention)
        result = train(features, labels, build_model(config, features, init, settings.seed), settings)
        metrics = evaluate(result.model, test)
        shown = attention if lists else None
        found.append(AblationRow(name, shown, metrics["auc_o"], metrics["auc_a"], result.losses[-1]))
        if progress is not None and task is not None:
            progress.update(task, advance=1, info=found[-1].label)
        return result.model

    baseline = run(BASELINE, (), phase1, None, "dot")
    run(CONTROL, (), phase2, baseline, "dot")
    for attention in attentions:
        for name, lists in rows:
            run(name, lists, phase2, baseline, attention)
    return found
