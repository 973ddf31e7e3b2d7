"""`callm weights`: inspect weights files of every kind callm reads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from callm.cli.common import app, user_errors
from callm.console import console
from callm.errors import CallmError

weights_app = typer.Typer(help="Inspect weights files.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")


@weights_app.command("check")
@user_errors
def weights_check(
    path: Annotated[Path, typer.Argument(help="A weights file or folder (callm, Video-LLaMA, LAVIS, HF).")],
    vlm: Annotated[Path | None, typer.Option(help="Stage-2 config whose architecture settings apply.")] = None,
) -> None:
    """Say what a weights file or folder is, its size, and whether callm can load it (exit 0 only then)."""
    from callm.inspect import inspect_weights
    from callm.vlm.config import load_config

    if not path.exists():
        raise CallmError(f"{path}: no such file or directory")
    info = inspect_weights(path, load_config(vlm) if vlm else None)
    params = "unknown" if info.parameters is None else f"{info.parameters:,}"
    console.print(f"{info.path}: {info.description}; {params} parameters", markup=False)
    console.print(("loadable: " if info.loadable else "NOT loadable: ") + info.detail, markup=False)
    if not info.loadable:
        raise typer.Exit(1)
