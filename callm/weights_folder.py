"""callm's own weights on disk: a folder with ``NAME.safetensors`` (tensors) beside ``NAME.json`` (kind, format
version, config, calibration, provenance). The autoencoder, the VADor and the phase-3 adaptor all use it.

No pickle anywhere: a weights folder from a stranger can at worst fail to load, with one clear line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from callm.errors import CallmError
from callm.files import write_atomic, write_json_atomic


@dataclass(frozen=True)
class WeightsFolder:
    """One kind of callm weights: its file names, the ``kind`` its JSON says, and how messages name it."""

    kind: str
    name: str  # in messages, after "not": "callm autoencoder weights", "a VADor adaptor"
    tensors_file: str
    meta_file: str
    made_by: str  # the command that makes them, so a refusal says where good ones come from
    format_version: int = 1

    def save(self, module: nn.Module, folder: str | Path, meta: dict[str, Any]) -> None:
        """Tensors first, then the metadata: a reader never sees metadata without its tensors."""
        folder = Path(folder)
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        write_atomic(folder / self.tensors_file, lambda tmp: save_file(state, str(tmp), metadata={"kind": self.kind}))
        write_json_atomic(folder / self.meta_file, {"kind": self.kind, "format_version": self.format_version, **meta})

    def files(self, path: str | Path) -> tuple[Path, Path]:
        """The (tensors, meta) pair for a weights folder or either of its two files."""
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        if not path.exists():
            raise CallmError(f"{path}: weights not found")
        if path.is_file() and path.name not in (self.tensors_file, self.meta_file):
            raise CallmError(
                f"{path}: not {self.name} (expected a folder with {self.tensors_file}; see {self.made_by})"
            )
        tensors, meta = folder / self.tensors_file, folder / self.meta_file
        for needed in (tensors, meta):
            if not needed.is_file():
                raise CallmError(f"{folder}: not {self.name} ({needed.name} is missing; see {self.made_by})")
        return tensors, meta

    def claims(self, path: Path) -> bool:
        """Whether ``path`` says it is this kind (its metadata's ``kind``), loadable or not."""
        folder = path if path.is_dir() else path.parent
        meta = folder / self.meta_file
        if not meta.is_file() or (path.is_file() and path.name not in (self.meta_file, self.tensors_file)):
            return False
        try:
            return json.loads(meta.read_text(encoding="utf-8")).get("kind") == self.kind
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            return False

    def read_meta(self, path: str | Path) -> tuple[Path, dict[str, Any]]:
        """The tensors file and the validated metadata of a weights folder (or either file in it)."""
        tensors, meta_path = self.files(path)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CallmError(f"{meta_path}: damaged weights metadata ({exc.__class__.__name__})") from None
        kind = meta.get("kind") if isinstance(meta, dict) else None
        if kind != self.kind:
            raise CallmError(f"{meta_path}: not {self.name} (kind is {kind!r})")
        if meta.get("format_version") != self.format_version:
            raise CallmError(
                f"{meta_path}: weights format {meta.get('format_version')} but this callm reads {self.format_version}"
            )
        return tensors, meta

    def load_tensors(self, module: nn.Module, tensors: Path, device: torch.device | str = "cpu") -> None:
        """Fill ``module`` from the tensors file, refusing names or shapes its config does not give."""
        try:
            state = load_file(str(tensors), device=str(device))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CallmError(f"{tensors}: corrupt or not a safetensors file ({exc})") from None
        expected = module.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise CallmError(
                f"{tensors}: tensors do not match the config in {self.meta_file} "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        wrong = [k for k, v in state.items() if v.shape != expected[k].shape]
        if wrong:
            raise CallmError(f"{tensors}: tensor shapes do not match the config in {self.meta_file} ({wrong[:3]})")
        module.load_state_dict(state)
