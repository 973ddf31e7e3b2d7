"""Training checkpoints: a model and its optimiser in safetensors beside a JSON state, both written atomically.

No pickle: the optimiser's per-parameter tensors are stored as ``optim.<param index>.<name>``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from callm.files import write_atomic, write_json_atomic

TENSORS_FILE = "state.safetensors"
STATE_FILE = "state.json"


def has_checkpoint(folder: Path) -> bool:
    return (folder / STATE_FILE).is_file() and (folder / TENSORS_FILE).is_file()


def read_state(folder: Path) -> dict[str, Any]:
    """The JSON state alone, to check a run's settings before any tensor is loaded."""
    return json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))


def save_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Tensors first, then the state that names them."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for index, param_state in optimizer.state_dict()["state"].items():
        for name, value in param_state.items():
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    write_atomic(folder / TENSORS_FILE, lambda tmp: save_file(tensors, str(tmp)))
    write_json_atomic(folder / STATE_FILE, state)


def load_checkpoint(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Fill ``model`` and ``optimizer`` from ``folder``; returns the JSON state."""
    tensors = load_file(str(folder / TENSORS_FILE))
    model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            per_param.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({**optimizer.state_dict(), "state": per_param})
    return read_state(folder)
