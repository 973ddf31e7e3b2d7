"""VADor weights on disk: ``vador.safetensors`` (tensors) beside ``vador.json`` (config, features, training).

``features`` in the JSON is the encoder settings of the features it was trained on, so scoring can refuse
features from another encoder. No pickle anywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from callm.errors import CallmError
from callm.files import write_atomic, write_json_atomic
from callm.vador.model import VADor, VADorConfig

KIND = "callm-vador"
FORMAT_VERSION = 1
TENSORS_FILE = "vador.safetensors"
META_FILE = "vador.json"


@dataclass
class VADorWeights:
    model: VADor
    features: dict[str, Any]  # encoder settings of the training features (see callm.vador.features)
    training: dict[str, Any] = field(default_factory=dict)

    def check_features(self, encoder: dict[str, Any], source: str) -> None:
        """Refuse features another encoder (or another setting of it) made: the AP would score noise."""
        if encoder != self.features:
            raise CallmError(
                f"{source}: features from encoder {encoder.get('kind')} {_differences(encoder, self.features)}, "
                "but the VADor was trained on others; extract them with the same encoder and options"
            )


def _differences(found: dict[str, Any], expected: dict[str, Any]) -> str:
    names = sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k))
    return "(" + ", ".join(f"{k}={found.get(k)!r} not {expected.get(k)!r}" for k in names[:3]) + ")"


def save(weights: VADorWeights, folder: str | Path) -> None:
    """Tensors first, then the metadata: a reader never sees metadata without its tensors."""
    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in weights.model.state_dict().items()}
    write_atomic(folder / TENSORS_FILE, lambda tmp: save_file(state, str(tmp), metadata={"kind": KIND}))
    meta = {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "config": weights.model.config.to_dict(),
        "features": weights.features,
        "training": weights.training,
    }
    write_json_atomic(folder / META_FILE, meta)


def load(path: str | Path) -> VADorWeights:
    """A VADor folder (or either file in it); one-line errors for another kind of file or damaged tensors."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    tensors_path, meta_path = folder / TENSORS_FILE, folder / META_FILE
    if not tensors_path.is_file() or not meta_path.is_file():
        raise CallmError(f"{path}: not VADor weights (expected {TENSORS_FILE} and {META_FILE}; see train-vador)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CallmError(f"{meta_path}: damaged VADor metadata ({exc.__class__.__name__})") from None
    kind = meta.get("kind") if isinstance(meta, dict) else None
    if kind != KIND:
        raise CallmError(f"{meta_path}: not VADor weights (kind is {kind!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CallmError(f"{meta_path}: VADor format {meta.get('format_version')}, this callm reads {FORMAT_VERSION}")
    model = VADor(VADorConfig.from_dict(meta.get("config", {})))
    try:
        state = load_file(str(tensors_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CallmError(f"{tensors_path}: corrupt or not a safetensors file ({exc})") from None
    expected = model.state_dict()
    if set(state) != set(expected) or any(v.shape != expected[k].shape for k, v in state.items()):
        raise CallmError(f"{tensors_path}: tensors do not match the VADor config in {META_FILE}")
    model.load_state_dict(state)
    return VADorWeights(model.eval(), meta.get("features", {}), meta.get("training", {}))
