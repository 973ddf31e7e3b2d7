"""`callm watch` on files and dead sources: the same events as `callm detect`, stored, sent, and kept through kills."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import av
import pytest
from click.testing import Result
from helpers import assert_user_error
from synthetic import make_frames, write_video
from typer.testing import CliRunner

from callm.cli import app
from callm.live.store import EventStore

FPS = 25.0


@pytest.fixture(scope="module")
def intruder_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six seconds at 25 fps; an intruder from 2 s to 3.6 s."""
    folder = tmp_path_factory.mktemp("watch")
    return write_video(folder / "gate.mp4", make_frames(150, seed=10, intruder=(50, 90)), fps=FPS)


def closed(folder: Path) -> list[dict]:
    lines = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    return [r for r in lines if r["state"] == "close"]


@contextlib.contextmanager
def serving(handler: Callable[..., BaseHTTPRequestHandler]) -> Iterator[int]:
    """An HTTP server on a free loopback port, in a thread, for as long as the block lasts: yields the port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


def watch_http(runner: CliRunner, handler: Callable[..., BaseHTTPRequestHandler], source: str, *args: str) -> Result:
    """``callm watch`` of ``source`` (``NAME=http://127.0.0.1:{port}/...``) served by ``handler``."""
    with serving(handler) as port:
        return runner.invoke(app, ["watch", source.format(port=port), *args])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_watching_a_file_finds_the_events_detect_finds(
    runner: CliRunner, weights_dir: Path, intruder_mp4: Path, tmp_path: Path
) -> None:
    out = tmp_path / "watch"
    result = runner.invoke(app, ["watch", str(intruder_mp4), "--out", str(out), "-w", str(weights_dir)])
    assert result.exit_code == 0, result.output
    detected = tmp_path / "d.json"
    assert (
        runner.invoke(app, ["detect", str(intruder_mp4), "-w", str(weights_dir), "--json", str(detected)]).exit_code
        == 0
    )
    events = json.loads(detected.read_text())["events"]
    live = closed(out)
    assert events and len(live) == len(events)
    for record, event in zip(live, events, strict=True):
        for key in ("start_frame", "end_frame", "peak_frame", "box"):
            assert record[key] == event[key], key
        assert record["peak_score"] == pytest.approx(event["peak_score"], abs=1e-3)
        assert record["start_s"] == pytest.approx(event["start_s"], abs=1e-3)
        assert record["end_s"] == pytest.approx(event["end_s"], abs=1e-3)
        assert record["tracks"] == event["tracks"]
        with av.open(str(out / record["clip"])) as clip:  # the clip has its padding and plays
            frames = sum(1 for _ in clip.decode(video=0))
        pad = round(2.0 * FPS)
        first, last = max(0, event["start_frame"] - pad), min(149, event["end_frame"] + pad)
        assert frames == last - first + 1
        assert (out / record["thumbnail"]).stat().st_size > 0
    with EventStore(out, readonly=True) as store:
        assert [e["id"] for e in store.events()] == [r["id"] for r in live]
        assert store.unclosed() == []
    # The report shows the camera's timeline and plays each event's clip.
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0
    page = (out / "report.html").read_text()
    assert page.count("<video") == len(live) and 'class="event-span"' in page
    # Watching again into the same folder continues the store: new ids, old events kept.
    again = runner.invoke(app, ["watch", f"gate={intruder_mp4}", "--out", str(out), "-w", str(weights_dir)])
    assert again.exit_code == 0, again.output
    assert len(closed(out)) == 2 * len(events)
    assert len({r["id"] for r in closed(out)}) == 2 * len(events)


class Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_the_webhook_gets_every_record_and_a_dead_source_does_not_stop_the_others(
    runner: CliRunner, weights_dir: Path, intruder_mp4: Path, tmp_path: Path
) -> None:
    Hook.received = []
    out = tmp_path / "watch"
    with serving(Hook) as port:
        # Picked while the webhook holds its port: picked before, the closed port could be handed to the webhook,
        # and the "dead" camera would then reach an HTTP server instead of a refused connection.
        dead = f"dead=rtsp://127.0.0.1:{free_port()}/cam"
        result = runner.invoke(
            app,
            ["watch", str(intruder_mp4), dead, "--out", str(out), "-w", str(weights_dir), "--duration", "8",
             "--webhook", f"http://127.0.0.1:{port}/events"],
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert records and [r["id"] + r["state"] for r in Hook.received] == [r["id"] + r["state"] for r in records]
    assert {r["camera"] for r in records} == {"gate"}
    with EventStore(out, readonly=True) as store:
        dead_stats = store.latest_stats()["dead"]
        gaps = store.gaps("dead")
    assert dead_stats["status"] in ("reconnecting", "stopped")
    assert gaps and "connection refused" in gaps[0]["reason"]


def watch_process(video: Path, weights: Path, out: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "callm.cli", "watch", str(video), "--out", str(out), "-w", str(weights)]
    return subprocess.Popen([*command, "--realtime", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(folder: Path, state: str, first_frame: int = 0, timeout_s: float = 60.0) -> dict:
    """The first record in ``state`` of an event starting at ``first_frame`` or later, once it is written."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        log = folder / "events.jsonl"
        if log.exists():
            for line in log.read_text().splitlines():
                record = json.loads(line) if line.endswith("}") else {}
                if record.get("state") == state and record["start_frame"] >= first_frame:
                    return record
        time.sleep(0.1)
    raise AssertionError(f"no {state} record in {timeout_s} s")


def test_sigterm_closes_the_open_event_and_exits_0_and_latency_is_bounded(weights_dir: Path, tmp_path: Path) -> None:
    # The intruder stays to the end of the video: its event is open when the watch is told to stop.
    video = write_video(tmp_path / "long.mp4", make_frames(200, seed=10, intruder=(50, 200)), fps=FPS)
    out = tmp_path / "watch"
    # The tiny test model calibrates on four short videos; a threshold well above this video's normal frames and
    # well below the intruder's keeps the test about stopping and latency, not about that calibration.
    process = watch_process(video, weights_dir, out, "--threshold", "25")
    try:
        opened = wait_for(out, "open", first_frame=40)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err.decode()
    # Played in real time: from the event's first frame to its open record, at most a window plus 2 s.
    assert 0 <= opened["latency_s"] <= 16 / FPS + 2.0
    last = [r for r in closed(out) if r["id"] == opened["id"]][-1]
    assert last["closed_because"] == "watch stopped" and last["clip"]
    with EventStore(out, readonly=True) as store:
        assert store.unclosed() == []


def test_kill_9_loses_no_closed_event_and_a_restart_closes_what_was_open(
    runner: CliRunner, weights_dir: Path, intruder_mp4: Path, tmp_path: Path
) -> None:
    out = tmp_path / "watch"
    process = watch_process(intruder_mp4, weights_dir, out)
    try:
        wait_for(out, "close")
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    before = closed(out)
    assert before
    with EventStore(out, readonly=True) as store:
        stored = {e["id"]: e for e in store.events()}
    assert all(stored[r["id"]]["state"] == "close" for r in before)
    result = runner.invoke(app, ["watch", str(intruder_mp4), "--out", str(out), "-w", str(weights_dir)])
    assert result.exit_code == 0, result.output
    with EventStore(out, readonly=True) as store:
        assert store.unclosed() == []


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("ftp://host/cam", "unsupported source"),
        ("rtsp:///cam", "no host"),
        ("missing.mp4", "no such video file"),
        ("bad name=missing.mp4", "camera name"),
    ],
)
def test_bad_sources_get_one_line(runner: CliRunner, tmp_path: Path, source: str, message: str) -> None:
    result = runner.invoke(app, ["watch", source, "--out", str(tmp_path / "w")])
    assert_user_error(result, message)


def test_two_cameras_need_two_names(runner: CliRunner, intruder_mp4: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["watch", str(intruder_mp4), str(intruder_mp4), "--out", str(tmp_path / "w")])
    assert_user_error(result, "distinct names")


class Locked(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="camera"')
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_wrong_credentials_get_one_line_and_the_watch_goes_on(runner: CliRunner, tmp_path: Path) -> None:
    url = "door=http://user:secret@127.0.0.1:{port}/video.mjpg"
    result = watch_http(runner, Locked, url, "--out", str(tmp_path / "w"), "--duration", "3")
    assert result.exit_code == 0, result.output
    told = [line for line in result.stderr.splitlines() if "door" in line]
    assert len(told) == 1 and "credentials" in told[0] and "secret" not in told[0], result.stderr
    assert "Traceback" not in result.output


def mjpeg_handler(frames: list[bytes], fps: float) -> type[BaseHTTPRequestHandler]:
    class Mjpeg(BaseHTTPRequestHandler):
        """An IP camera's MJPEG stream: multipart JPEGs, one per frame, at the camera's rate."""

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            try:
                for jpeg in frames:
                    head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                    self.wfile.write(head.encode() + jpeg + b"\r\n")
                    time.sleep(1 / fps)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args: object) -> None:
            pass

    return Mjpeg


def test_an_http_mjpeg_camera_is_watched(runner: CliRunner, weights_dir: Path, tmp_path: Path) -> None:
    import cv2

    frames = make_frames(100, seed=10, intruder=(30, 60))
    jpegs = [cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))[1].tobytes() for f in frames]
    out = tmp_path / "w"
    url = "lobby=http://127.0.0.1:{port}/video.mjpg"
    args = ["--out", str(out), "-w", str(weights_dir), "--duration", "7"]
    result = watch_http(runner, mjpeg_handler(jpegs, 25.0), url, *args)
    assert result.exit_code == 0, result.output
    with EventStore(out, readonly=True) as store:
        assert store.latest_stats()["lobby"]["frames"] >= 90
    assert closed(out), "the intruder on the MJPEG stream raised no event"


def test_the_ring_can_be_read_for_clips_while_frames_are_added() -> None:
    """Frames go in on the reading thread while the camera's thread cuts clips from the ring."""
    import numpy as np

    from callm.live.camera import Ring
    from callm.live.sources import Frame

    ring = Ring(max_frames=50)
    frame = Frame(np.zeros((8, 8, 3), np.uint8), 0.0, 0.0)
    done = threading.Event()
    errors: list[BaseException] = []

    def add() -> None:
        for index in range(5000):
            ring.add(index, frame)
        done.set()

    def read() -> None:
        try:
            while not done.is_set():
                span = ring.span(0, 10**9)
                assert len(span) <= 50 and [s.index for s in span] == sorted(s.index for s in span)
                ring.get(span[-1].index if span else 0)
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=add), threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [s.index for s in ring.span(0, 10**9)] == list(range(4950, 5000))
    assert ring.get(4999) is not None and ring.get(4949) is None


def test_an_hls_stream_is_watched(runner: CliRunner, weights_dir: Path, tmp_path: Path) -> None:
    """HLS (a playlist of short segments over HTTP, as NVRs and cloud cameras publish): written by FFmpeg's own
    HLS muxer, served by a plain HTTP server."""
    from functools import partial
    from http.server import SimpleHTTPRequestHandler

    import numpy as np

    folder = tmp_path / "hls"
    folder.mkdir()
    frames = make_frames(100, seed=10, intruder=(30, 60))
    with av.open(str(folder / "live.m3u8"), "w", format="hls", options={"hls_time": "1", "hls_list_size": "0"}) as hls:
        stream = hls.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for frame in frames:
            hls.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="gray")))
        hls.mux(stream.encode(None))
    handler = partial(SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    out = tmp_path / "w"
    url = "nvr=http://127.0.0.1:{port}/live.m3u8"
    result = watch_http(runner, handler, url, "--out", str(out), "-w", str(weights_dir), "--duration", "6")
    assert result.exit_code == 0, result.output
    with EventStore(out, readonly=True) as store:
        assert store.latest_stats()["nvr"]["frames"] >= 100
    assert closed(out), "the intruder in the HLS stream raised no event"


def test_an_unknown_host_gets_one_line(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["watch", "x=rtsp://no-such-camera.invalid/cam", "--out", str(tmp_path / "w"), "--duration", "2"]
    )
    assert result.exit_code == 0, result.output
    told = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(told) == 1 and "unknown host" in told[0], result.stderr


def test_each_camera_can_have_its_own_calibration(
    runner: CliRunner, weights_dir: Path, intruder_mp4: Path, tmp_path: Path
) -> None:
    import shutil

    strict = tmp_path / "strict"
    shutil.copytree(weights_dir, strict)
    meta = json.loads((strict / "ae.json").read_text())
    meta["calibration"]["threshold"] = 1000.0  # this camera's gate: nothing reaches it
    (strict / "ae.json").write_text(json.dumps(meta))
    out = tmp_path / "w"
    args = ["watch", f"a={intruder_mp4}", f"b={intruder_mp4}", "--out", str(out), "-w", str(weights_dir)]
    result = runner.invoke(app, [*args, "-w", f"b={strict}"])
    assert result.exit_code == 0, result.output
    assert {r["camera"] for r in closed(out)} == {"a"}
    bad = runner.invoke(app, [*args, "-w", f"c={strict}"])
    assert_user_error(bad, "no camera named 'c'")
