"""``--dtype auto``: the precision follows what the CPU runs fast, timed once per CPU and cached."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import callm.device as device_module
from callm.device import fastest_dtype, parse_dtype
from callm.errors import CallmError

CPU = torch.device("cpu")


@pytest.fixture
def cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A CPU with the flags a test gives, timings it decides, and a cache of its own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    timed: list[torch.dtype] = []

    def configure(flags: set[str], seconds: dict[torch.dtype, float] | None = None) -> list[torch.dtype]:
        monkeypatch.setattr(device_module, "_cpu_flags", lambda: ("Test CPU", flags))

        def fake_time(dtype: torch.dtype) -> float:
            timed.append(dtype)
            return (seconds or {})[dtype]

        monkeypatch.setattr(device_module, "_time_dtype", fake_time)
        return timed

    return configure


def test_amx_means_bf16_without_timing(cpu) -> None:
    timed = cpu({"avx512f", "amx_bf16", "avx512_bf16"})
    assert fastest_dtype(CPU) == torch.bfloat16 and timed == []


def test_no_bf16_instructions_means_fp32_without_timing(cpu) -> None:
    timed = cpu({"avx2", "fma"})
    assert fastest_dtype(CPU) == torch.float32 and timed == []


@pytest.mark.parametrize(
    ("fp32", "bf16", "expected"),
    [(1.0, 0.4, torch.bfloat16), (1.0, 0.9, torch.float32), (0.5, 1.0, torch.float32)],
    ids=["bf16 much faster", "near a tie: the exact one", "bf16 slower"],
)
def test_avx512_bf16_without_amx_is_timed_once_and_cached(cpu, fp32: float, bf16: float, expected) -> None:
    timed = cpu({"avx512f", "avx512_bf16"}, {torch.float32: fp32, torch.bfloat16: bf16})
    assert fastest_dtype(CPU) == expected
    assert fastest_dtype(CPU) == expected
    assert sorted(map(str, timed)) == ["torch.bfloat16", "torch.float32"]  # the second call read the cache


def test_parse_dtype_names(cpu) -> None:
    cpu({"avx2"})
    assert parse_dtype("auto", CPU) == torch.float32
    assert parse_dtype("bf16") == torch.bfloat16 and parse_dtype("fp32") == torch.float32
    with pytest.raises(CallmError, match="unknown dtype 'fp8': use one of auto, bf16, fp16, fp32"):
        parse_dtype("fp8")
