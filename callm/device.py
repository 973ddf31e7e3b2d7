"""Device and precision choice, shared by every stage."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from callm.errors import CallmError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def pick_device(name: str | None = None) -> torch.device:
    """``name`` if given (``cpu``, ``cuda``, ``cuda:1``), else CUDA when present, else CPU."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise CallmError(f"unknown device {name!r}: use cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CallmError(f"device {name!r} asked for, but this torch build sees no CUDA GPU")
    return device


def parse_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise CallmError(f"unknown dtype {name!r}: use one of {', '.join(_DTYPES)}") from None


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Mixed precision where it pays (bf16 runs on AMX on recent Xeons, fp16/bf16 on GPUs); fp32 is a no-op."""
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
