"""``callm chat``: a conversation with the stage-2 model about a video's events, in the terminal or scripted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.prompt import Prompt
from rich.table import Table

from callm.cli.common import (
    DeviceOpt,
    DtypeOpt,
    FpsOpt,
    Load8bitOpt,
    ThresholdOpt,
    VlmDeviceOpt,
    VlmDtypeOpt,
    VlmOpt,
    WeightsOpt,
    app,
    default_weights,
    quiet_transformers,
    user_errors,
    vlm_config,
)
from callm.console import FrameBar, console, err_console, make_progress
from callm.errors import CallmError
from callm.video import Video

if TYPE_CHECKING:
    from callm.results import Detection
    from callm.vlm.chat import Chat

SLASH_COMMANDS = {
    "/events": "list stage 1's events",
    "/event N": "ask about event N (its frames, focused on its box); event 1 to begin with",
    "/video": "ask about the whole video, sampled uniformly",
    "/at A-B": "ask about the seconds A to B, e.g. /at 12.5-20s",
    "/reset": "forget the conversation so far (the clip stays)",
    "/save FILE": "write the transcript as JSON (--resume FILE continues it)",
    "/quit": "leave (Ctrl-D and Ctrl-C too)",
}


@app.command()
@user_errors
def chat(
    video: Annotated[Path, typer.Argument(help="A video file or frame folder.")],
    vlm: VlmOpt,
    report: Annotated[
        Path | None, typer.Option(help="This video's callm detect --json file: its events, without running stage 1.")
    ] = None,
    ask: Annotated[
        list[str] | None,
        typer.Option("--ask", help="Ask this (or run this /command), in order, then exit; repeatable."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="With --ask: print the transcript as JSON.")] = False,
    resume: Annotated[Path | None, typer.Option(help="Continue the conversation of a /save transcript.")] = None,
    max_length: Annotated[
        int | None, typer.Option(min=1, help="Tokens the LLM attends to, answer included (default: its context).")
    ] = None,
    weights: WeightsOpt = None,
    threshold: ThresholdOpt = None,
    fps: FpsOpt = 10.0,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    vlm_dtype: VlmDtypeOpt = None,
    vlm_device: VlmDeviceOpt = None,
    load_8bit: Load8bitOpt = False,
) -> None:
    """Ask the stage-2 video LLM about a video's events, one question after another.

    Stage 1 finds the events (or --report reads them). /help in the conversation lists its commands.
    """
    from callm.report import detection_summary, events_table
    from callm.vlm.chat import Chat, read_turns
    from callm.vlm.explain import Explainer

    if json_out and not ask:
        raise CallmError("--json prints the answers to --ask questions; add --ask")
    Video(video, folder_fps=fps)  # a missing or unreadable video fails here, before any model loads
    config = vlm_config(vlm, vlm_dtype, vlm_device, load_8bit)
    history = read_turns(resume) if resume is not None else []
    detection = _report(report, video) if report is not None else _detect(video, weights, threshold, fps, device, dtype)
    quiet_transformers()
    conversation = Chat(Explainer.from_config(config), detection, history, max_length)
    # With --json, stdout holds the JSON alone: everything else goes to stderr.
    ui = err_console if json_out else console
    if not json_out:
        if detection.events:
            ui.print(events_table(detection))
        ui.print(detection_summary(detection), markup=False)
    ui.print(f"asking about {conversation.view.describe()}", markup=False)
    if ask is None:
        ui.print("type a question, or /help for the commands", style="dim")
        _converse(conversation, ui)
        return
    failed = False
    for line in ask:
        try:
            _run(conversation, line, ui, stream=not json_out)
        except CallmError as exc:
            err_console.print(f"callm: error: {exc}", markup=False)
            failed = True
    if json_out:
        typer.echo(json.dumps(conversation.transcript(), indent=2))
    if failed:
        raise typer.Exit(1)


def _report(path: Path, video: Path) -> Detection:
    from callm.results import read_detection

    detection = read_detection(path)
    if Path(detection.video).name != video.name:
        raise CallmError(f"{path}: is the report of {Path(detection.video).name}, not of {video.name}")
    detection.video = str(video)  # the report may name it relative to another folder
    return detection


def _detect(
    video: Path, weights: Path | None, threshold: float | None, fps: float, device: str, dtype: str
) -> Detection:
    from callm.cascade import DetectOptions, Stage1Recipe

    options = DetectOptions(threshold=threshold, folder_fps=fps)
    stage1 = Stage1Recipe(str(weights or default_weights()), options, device, dtype).build()
    with make_progress() as progress:
        bar = FrameBar(progress, video.name)
        detection = stage1.detect(video, bar)
        bar.close()
    return detection


def _converse(conversation: Chat, ui: Console) -> None:
    """The interactive loop: a bad command or question is a message, and the conversation goes on."""
    while True:
        try:
            if not _run(conversation, Prompt.ask("[bold cyan]you[/]", console=ui), ui, stream=True):
                return
        except CallmError as exc:
            err_console.print(f"callm: error: {exc}", markup=False)
        except (EOFError, KeyboardInterrupt):  # Ctrl-D or Ctrl-C, at the prompt or during an answer
            ui.print()
            return


def _run(conversation: Chat, line: str, ui: Console, stream: bool) -> bool:
    """Answer a question or carry out a /command; False when it is time to leave."""
    from callm.report import events_table
    from callm.vlm.chat import parse_range

    command, _, argument = line.strip().partition(" ")
    argument = argument.strip()
    if not command:
        return True
    if not command.startswith("/"):
        _answer(conversation, line, ui, stream)
        return True
    match command:
        case "/quit" | "/exit":
            return False
        case "/help":
            table = Table(show_header=False, box=None)
            for name, what in SLASH_COMMANDS.items():
                table.add_row(name, what)
            ui.print(table)
        case "/events":
            if not conversation.detection.events:
                raise CallmError("stage 1 found no events in this video: use /video or /at A-B")
            ui.print(events_table(conversation.detection))
        case "/event":
            if not argument.isdigit():
                raise CallmError("/event takes an event number, e.g. /event 2")
            _show_view(conversation.select_event(int(argument)).describe(), ui)
        case "/video":
            _show_view(conversation.select_video().describe(), ui)
        case "/at":
            _show_view(conversation.select_range(*parse_range(argument)).describe(), ui)
        case "/reset":
            conversation.reset()
            ui.print("conversation cleared")
        case "/save":
            if not argument:
                raise CallmError("/save needs a file name, e.g. /save chat.json")
            conversation.save(argument)
            ui.print(f"saved {argument}", markup=False)
        case _:
            raise CallmError(f"unknown command {command}: /help lists the commands")
    return True


def _show_view(description: str, ui: Console) -> None:
    ui.print(f"now asking about {description}", markup=False)


def _answer(conversation: Chat, question: str, ui: Console, stream: bool) -> None:
    if stream:
        ui.print("[bold green]callm[/]: ", end="")
        turn = conversation.ask(
            question, on_text=lambda text: ui.print(text, end="", markup=False, highlight=False, soft_wrap=True)
        )
        ui.print()
    else:
        turn = conversation.ask(question)
    if turn.turns_left_out:
        ui.print(f"({turn.turns_left_out} oldest turn(s) left out to fit the model's context)", style="dim")
