"""Stage-1 weights on disk: ``ae.safetensors`` (tensors) beside ``ae.json`` (config, calibration, provenance).

No pickle anywhere: a weights file from a stranger can at worst fail to load.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from callm.ae.model import AEConfig, ConvAutoencoder3d
from callm.errors import CallmError
from callm.files import write_atomic, write_json_atomic

KIND = "callm-ae"
FORMAT_VERSION = 1
TENSORS_FILE = "ae.safetensors"
META_FILE = "ae.json"


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
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not path.exists():
        raise CallmError(f"{path}: weights not found")
    if path.is_file() and path.name not in (TENSORS_FILE, META_FILE):
        raise CallmError(f"{path}: not callm autoencoder weights (expected a folder with {TENSORS_FILE})")
    tensors, meta = folder / TENSORS_FILE, folder / META_FILE
    for needed in (tensors, meta):
        if not needed.is_file():
            raise CallmError(f"{folder}: not callm autoencoder weights ({needed.name} is missing)")
    return tensors, meta


def save(weights: AEWeights, folder: str | Path) -> None:
    """Write both files atomically; tensors first so a reader never sees metadata without its tensors."""
    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in weights.model.state_dict().items()}
    write_atomic(folder / TENSORS_FILE, lambda tmp: save_file(state, str(tmp), metadata={"kind": KIND}))
    meta = {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "config": weights.config.to_dict(),
        "calibration": weights.calibration,
        "training": weights.training,
    }
    write_json_atomic(folder / META_FILE, meta)


def load(path: str | Path, device: torch.device | str = "cpu") -> AEWeights:
    """Load and validate: refuses another kind of file, a config that does not fit, or damaged tensors."""
    tensors_path, meta_path = resolve(path)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CallmError(f"{meta_path}: damaged weights metadata ({exc.__class__.__name__})") from None
    kind = meta.get("kind") if isinstance(meta, dict) else None
    if kind != KIND:
        raise CallmError(f"{meta_path}: not callm autoencoder weights (kind is {kind!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CallmError(
            f"{meta_path}: weights format {meta.get('format_version')} but this callm reads {FORMAT_VERSION}"
        )
    config = AEConfig.from_dict(meta.get("config", {}))
    try:
        state = load_file(str(tensors_path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CallmError(f"{tensors_path}: corrupt or not a safetensors file ({exc})") from None
    model = ConvAutoencoder3d(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CallmError(
            f"{tensors_path}: tensors do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    wrong = [k for k, v in state.items() if v.shape != expected[k].shape]
    if wrong:
        raise CallmError(f"{tensors_path}: tensor shapes do not match the config ({wrong[:3]})")
    model.load_state_dict(state)
    model.to(device).eval()
    return AEWeights(model, meta.get("calibration", {}), meta.get("training", {}))
