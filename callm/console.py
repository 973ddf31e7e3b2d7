"""Terminal output shared by the commands: progress bars and the console for one-line errors."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
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


class FrameBar:
    """A per-video bar for ``Stage1.detect(on_frames=...)``: appears on the first report, gone on ``close``."""

    def __init__(self, progress: Progress, description: str) -> None:
        self.progress = progress
        self.description = description
        self.task: TaskID | None = None

    def __call__(self, done: int, total: int | None) -> None:
        if self.task is None:
            self.task = self.progress.add_task(self.description, total=total)
        self.progress.update(self.task, completed=done)

    def close(self) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None


class ScanBars:
    """Rich bars for ``callm.scan.scan``: one over the videos (frames/s, ETA) and one per video being scored."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.overall: TaskID | None = None
        self.bars: dict[str, FrameBar] = {}
        self.done_frames: dict[str, int] = {}
        self.began = time.perf_counter()

    def start(self, videos_to_scan: int) -> None:
        self.overall = self.progress.add_task("videos", total=videos_to_scan)

    def frames(self, path: str, done: int, total: int | None) -> None:
        self.bars.setdefault(path, FrameBar(self.progress, Path(path).name))(done, total)
        self.done_frames[path] = done
        self._update_rate()

    def video_done(self, record: dict[str, Any]) -> None:
        bar = self.bars.pop(record["path"], None)
        if bar is not None:
            bar.close()
        if record.get("num_frames"):
            self.done_frames[record["path"]] = record["num_frames"]
        if self.overall is not None:
            self.progress.update(self.overall, advance=1)
        self._update_rate()

    def _update_rate(self) -> None:
        if self.overall is not None:
            rate = sum(self.done_frames.values()) / max(time.perf_counter() - self.began, 1e-9)
            self.progress.update(self.overall, info=f"{rate:.0f} frames/s")
