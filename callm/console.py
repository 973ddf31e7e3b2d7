"""Terminal output shared by the commands: progress bars and the console for one-line errors."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console()
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class InfoColumn(ProgressColumn):
    """Free text a task carries in its ``info`` field (loss, clips/s, frames/s); empty when it has none."""

    def render(self, task: Task) -> Text:
        return Text(str(task.fields.get("info", "")), style="cyan")


def make_progress() -> Progress:
    # Progress goes to stderr so that stdout stays clean for tables and JSON. Off when stderr is not a
    # terminal: there rich prints the bars' final state, which would bury a one-line error in a log.
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        InfoColumn(),
        console=err_console,
        disable=not err_console.is_terminal,
    )
