"""Device and precision choice, shared by every stage."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from callm.errors import CallmError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES = ("auto", *_DTYPES)


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


def parse_dtype(name: str, device: torch.device | None = None) -> torch.dtype:
    """A precision by name; ``auto`` is the fastest for ``device`` (see ``fastest_dtype``)."""
    if name == "auto":
        return fastest_dtype(device or torch.device("cpu"))
    try:
        return _DTYPES[name]
    except KeyError:
        raise CallmError(f"unknown dtype {name!r}: use one of {', '.join(DTYPE_NAMES)}") from None


def _cpu_flags() -> tuple[str, set[str]]:
    """The CPU's model name and feature flags (Linux; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor(), set()
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return fields.get("model name", platform.processor()), set(fields.get("flags", "").split())


def _time_dtype(dtype: torch.dtype) -> float:
    """Seconds for a few forward passes of a small Conv3d stack shaped like the autoencoder's first layers."""
    layers = torch.nn.Sequential(
        torch.nn.Conv3d(1, 16, 3, stride=(1, 2, 2), padding=1),
        torch.nn.LeakyReLU(0.2),
        torch.nn.Conv3d(16, 32, 3, stride=2, padding=1),
    ).to(memory_format=torch.channels_last_3d)
    x = torch.randn(4, 1, 16, 64, 96).contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode(), autocast(torch.device("cpu"), dtype):
        layers(x)  # warm-up: oneDNN picks and compiles its kernels
        began = time.perf_counter()
        for _ in range(3):
            layers(x)
    return time.perf_counter() - began


def _cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "callm" / "precision.json"


def fastest_dtype(device: torch.device) -> torch.dtype:
    """bf16 where it is faster than fp32, else fp32 (exact).

    GPUs: bf16 where supported. CPUs differ: with AMX, bf16 is several times faster; without any bf16
    instructions it is emulated and slower; with AVX-512 BF16 but no AMX it depends on the CPU and the kernels,
    so a second of timing decides, once per CPU and torch version (cached in ~/.cache/callm/precision.json).
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type != "cpu":
        return torch.float32
    model, flags = _cpu_flags()
    if "amx_bf16" in flags:
        return torch.bfloat16
    if "avx512_bf16" not in flags:
        return torch.float32
    key = hashlib.sha1(f"{model}|{sorted(flags)}|{torch.__version__}|{torch.get_num_threads()}".encode()).hexdigest()
    cache = _cache_file()
    try:
        known = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict) or known.get(key) not in _DTYPES:
        fp32, bf16 = _time_dtype(torch.float32), _time_dtype(torch.bfloat16)
        known = known if isinstance(known, dict) else {}
        known[key] = "bf16" if bf16 < 0.85 * fp32 else "fp32"  # near a tie, the exact one
        with contextlib.suppress(OSError):
            from callm.files import write_json_atomic

            write_json_atomic(cache, known)
    return _DTYPES[known[key]]


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Mixed precision where it pays (bf16 runs on AMX on recent Xeons, fp16/bf16 on GPUs); fp32 is a no-op."""
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
