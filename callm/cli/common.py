"""What every ``callm`` command shares: the typer app, one-line user errors, and the common options."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from callm.console import err_console
from callm.errors import CallmError

app = typer.Typer(
    name="callm",
    help="Find abnormal moments in video and explain them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def shipped(name: str) -> Path:
    """A shipped weights folder: inside the installed package (``callm/shipped``, where the wheel puts the
    repository's ``weights/``), or in the repository itself for a source checkout."""
    package = Path(__file__).resolve().parents[1]
    for root in (package / "shipped", package.parent / "weights"):
        if (root / name).is_dir():
            return root / name
    raise CallmError(f"the shipped weights {name!r} are not installed; pass --weights")


def user_errors(func: F) -> F:
    """Turn a ``CallmError`` into one line on stderr and exit 1; Ctrl-C into exit 130."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CallmError as exc:
            err_console.print(f"callm: error: {exc}", markup=False)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("callm: interrupted", markup=False)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def default_weights() -> Path:
    env = os.environ.get("CALLM_WEIGHTS")
    return Path(env) if env else shipped("ped2")


WeightsOpt = Annotated[
    Path | None,
    typer.Option("--weights", "-w", help="Stage-1 weights folder (default: $CALLM_WEIGHTS or the shipped Ped2 model)."),
]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda, cuda:N, or auto (CUDA when present).")]
DtypeOpt = Annotated[
    str,
    typer.Option(
        help="Precision: auto (the fastest on this machine: bf16 where the CPU or GPU runs it fast), bf16, fp16, fp32."
    ),
]
FpsOpt = Annotated[float, typer.Option("--fps", help="Frame rate of frame folders (videos carry their own).")]
StrideOpt = Annotated[
    int | None,
    typer.Option(
        help="Frames between windows; each window scores its middle STRIDE frames (1 = the paper). "
        "Default: the stride the weights were calibrated at.",
        min=1,
        max=16,
    ),
]
ThresholdOpt = Annotated[
    float | None, typer.Option(help="Gate threshold on the calibrated score (default: the calibrated one).")
]
VlmDtypeOpt = Annotated[str | None, typer.Option(help="Override the config's stage-2 dtype.")]
VlmDeviceOpt = Annotated[str | None, typer.Option(help="Override the config's stage-2 device.")]
Load8bitOpt = Annotated[bool, typer.Option("--8bit", help="Load the LLM in 8 bits (needs callm[8bit]).")]
VlmOpt = Annotated[Path, typer.Option("--vlm", help="Stage-2 config (TOML) naming its weights.")]


def check_output_file(path: Path | None, option: str) -> None:
    """Refuse, before any work, an output file that cannot be written: a folder, or under a file."""
    if path is None:
        return
    if path.is_dir():
        raise CallmError(f"{option} {path}: is a folder; give a file name")
    if any(parent.is_file() for parent in path.parents):
        raise CallmError(f"{option} {path}: a part of the path is a file, not a folder")


def check_output_folder(path: Path, option: str = "--out") -> None:
    """Refuse, before any work, an output folder that is a file (or under one)."""
    if path.exists() and not path.is_dir():
        raise CallmError(f"{option} {path}: exists and is not a folder")
    if any(parent.is_file() for parent in path.parents):
        raise CallmError(f"{option} {path}: a part of the path is a file, not a folder")


def check_quantile(quantile: float) -> None:
    """A calibration quantile is a share of normal frames or clips strictly between none and all."""
    if not 0 < quantile < 1:
        raise CallmError(f"--quantile must be between 0 and 1, got {quantile}")


def quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars show the work


def vlm_config(path: Path, dtype: str | None, device: str | None, load_8bit: bool) -> Any:
    """A stage-2 config file with the command line's overrides applied (a ``VLMConfig``)."""
    import dataclasses

    from callm.vlm.config import load_config

    overrides: dict[str, Any] = {"load_in_8bit": True} if load_8bit else {}
    if dtype is not None:
        overrides["dtype"] = dtype
    if device is not None:
        overrides["device"] = device
    return dataclasses.replace(load_config(path), **overrides)
