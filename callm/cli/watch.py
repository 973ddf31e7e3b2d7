"""`callm watch`: live cameras scored as they stream, with events, clips and alerts."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from callm.cli.common import (
    DeviceOpt,
    DtypeOpt,
    Load8bitOpt,
    StrideOpt,
    ThresholdOpt,
    VlmDeviceOpt,
    VlmDtypeOpt,
    app,
    default_weights,
    quiet_transformers,
    user_errors,
)
from callm.cli.stage1 import FollowOpt, MaxGapOpt, MinEventOpt, VlmConfigOpt, _explain_config, _recipe
from callm.console import console, err_console
from callm.errors import CallmError


def _weights_by_camera(values: list[str], cameras: list[str]) -> dict[str, Path]:
    """``--weights DIR`` for every camera, ``--weights NAME=DIR`` for one (its own calibration)."""
    default: Path | None = None
    chosen: dict[str, Path] = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if sep and name in cameras:
            chosen[name] = Path(folder)
        elif sep and not Path(value).exists():
            raise CallmError(f"--weights {value}: no camera named {name!r} (cameras: {', '.join(cameras)})")
        elif default is None:
            default = Path(value)
        else:
            raise CallmError("--weights: one folder for all cameras; others as NAME=DIR")
    return {c: chosen.get(c, default or default_weights()) for c in cameras}


@app.command()
@user_errors
def watch(
    sources: Annotated[
        list[str],
        typer.Argument(help="Cameras: [NAME=]rtsp://..., http(s)://... (MJPEG, HLS), /dev/videoN or N, or a file."),
    ],
    out: Annotated[Path, typer.Option("--out", help="The watch folder: event store, clips, thumbnails.")],
    weights: Annotated[
        list[str] | None,
        typer.Option("--weights", "-w", help="Stage-1 weights: DIR for all cameras, NAME=DIR for one (repeatable)."),
    ] = None,
    realtime: Annotated[bool, typer.Option(help="Play files at their own frame rate, as a camera would.")] = False,
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: until Ctrl-C).")
    ] = None,
    webhook: Annotated[
        list[str] | None, typer.Option(help="POST every event record here as JSON (repeatable).")
    ] = None,
    mqtt: Annotated[str | None, typer.Option(help="Publish records to this MQTT broker, HOST:PORT.")] = None,
    mqtt_topic: Annotated[str, typer.Option(help="Topic prefix: records go to PREFIX/<camera>/events.")] = "callm",
    pad: Annotated[float, typer.Option(help="Seconds of clip before and after each event.")] = 2.0,
    stride: StrideOpt = None,
    threshold: ThresholdOpt = None,
    min_event: MinEventOpt = None,
    max_gap: MaxGapOpt = None,
    follow: FollowOpt = True,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    explain: Annotated[bool, typer.Option(help="Stage 2 explains each closed event, on its own thread.")] = False,
    vlm: VlmConfigOpt = None,
    vlm_dtype: VlmDtypeOpt = None,
    vlm_device: VlmDeviceOpt = None,
    load_8bit: Load8bitOpt = False,
) -> None:
    """Watch live cameras: score every frame as it streams; store, clip and send each event."""
    from callm.live.alerts import Alerts, MqttPublisher, Webhook
    from callm.live.sources import parse_sources
    from callm.live.store import EventStore
    from callm.live.watch import Watch

    if duration is not None and not duration > 0:
        raise CallmError(f"--duration must be a positive number of seconds, got {duration}")
    if not 0 <= pad <= 30:
        raise CallmError(f"--pad must be between 0 and 30 seconds, got {pad}")
    cameras = parse_sources(sources, realtime)
    if out.exists() and not out.is_dir():
        raise CallmError(f"--out {out}: a file, not a folder")
    sinks: list[Any] = [Webhook(url) for url in webhook or []]
    if mqtt is not None:
        sinks.append(MqttPublisher(mqtt, topic_prefix=mqtt_topic))
    alerts = Alerts(sinks)
    folders = _weights_by_camera(weights or [], [c.name for c in cameras])
    built: dict[Path, Any] = {}
    for folder in set(folders.values()):  # one model per weights folder, shared by its cameras
        built[folder] = _recipe(folder, stride, threshold, min_event, max_gap, follow, 10.0, device, dtype).build()
    explainer = None
    if explain:
        from callm.vlm.explain import Explainer

        quiet_transformers()
        explainer = Explainer.from_config(_explain_config(vlm, "event", vlm_dtype, vlm_device, load_8bit))
    elif vlm is not None:
        raise CallmError("--vlm is only used with --explain")
    store = EventStore(out)
    try:
        run = Watch(cameras, {c: built[f] for c, f in folders.items()}, store, alerts, explainer, pad)
        closed = run.close_leftovers()
        if closed:
            err_console.print(f"callm watch: closed {closed} event(s) a previous watch left open", markup=False)
        _run(run, duration)
    finally:
        store.close()
    console.print(f"events in {out}: {sum(r['events'] for r in run.rows())} this run; store {out / 'events.sqlite'}")


def _run(run: Any, duration: float | None) -> None:
    """Until Ctrl-C, SIGTERM, ``duration`` or every source has ended; the live table while it lasts."""
    from rich.live import Live

    from callm.report import cameras_table

    stop = threading.Event()
    handlers = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    began = time.monotonic()
    run.start()
    try:
        with Live(cameras_table(run.rows()), console=console, refresh_per_second=2, transient=False) as live:
            while not stop.wait(0.5) and run.running:
                if duration is not None and time.monotonic() - began >= duration:
                    break
                run.tick()
                live.update(cameras_table(run.rows()))
            run.stop()
            live.update(cameras_table(run.rows()))
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
