"""Stage-1 weights on disk: ``ae.safetensors`` (tensors) beside ``ae.json`` (config, calibration, provenance).

No pickle anywhere: a weights file from a stranger can at worst fail to load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from callm.ae.model import AEConfig, ConvAutoencoder3d
from callm.weights_folder import WeightsFolder

FOLDER = WeightsFolder("callm-ae", "callm autoencoder weights", "ae.safetensors", "ae.json", "callm train-ae")
TENSORS_FILE, META_FILE = FOLDER.tensors_file, FOLDER.meta_file


@dataclass
class AEWeights:
    """A loaded stage-1 model with what it needs to score: calibration and provenance."""

    model: ConvAutoencoder3d
    calibration: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> AEConfig:
        return self.model.config


def resolve(path: str | Path) -> tuple[Path, Path]:
    """The (tensors, meta) pair for a weights directory or either of its two files."""
    return FOLDER.files(path)


def save(weights: AEWeights, folder: str | Path) -> None:
    meta = {"config": weights.config.to_dict(), "calibration": weights.calibration, "training": weights.training}
    FOLDER.save(weights.model, folder, meta)


def load(path: str | Path, device: torch.device | str = "cpu") -> AEWeights:
    """Load and validate: refuses another kind of file, a config that does not fit, or damaged tensors."""
    tensors, meta = FOLDER.read_meta(path)
    model = ConvAutoencoder3d(AEConfig.from_dict(meta.get("config", {})))
    FOLDER.load_tensors(model, tensors, device)
    model.to(device).eval()
    return AEWeights(model, meta.get("calibration", {}), meta.get("training", {}))
