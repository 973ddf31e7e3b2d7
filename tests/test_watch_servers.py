"""`callm watch` against real servers on loopback: an RTSP camera (gst-rtsp-server) and an MQTT broker (mosquitto)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from live_servers import MqttBroker, RtspServer, mqtt_broker_missing, require, rtsp_server_missing, write_h264
from synthetic import make_frames
from typer.testing import CliRunner

from callm.cli import app
from callm.live.store import EventStore

FPS = 25


@pytest.fixture(scope="module")
def camera_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six seconds at 25 fps, H.264 as cameras send it; an intruder from 2 s to 3.6 s."""
    require(rtsp_server_missing())
    frames = make_frames(150, seed=10, intruder=(50, 90))
    return write_h264(tmp_path_factory.mktemp("rtsp") / "cam.mp4", frames, fps=FPS)


def lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]


def test_an_rtsp_camera_gives_the_event_detect_finds_at_the_same_time(
    runner: CliRunner, weights_dir: Path, camera_video: Path, tmp_path: Path
) -> None:
    out, detected = tmp_path / "watch", tmp_path / "d.json"
    assert (
        runner.invoke(app, ["detect", str(camera_video), "-w", str(weights_dir), "--json", str(detected)]).exit_code
        == 0
    )
    events = json.loads(detected.read_text())["events"]
    assert events
    with RtspServer(camera_video) as server:
        args = ["watch", f"cam={server.url}", "--out", str(out), "-w", str(weights_dir), "--duration", "12"]
        result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    closed = [r for r in lines(out) if r["state"] == "close"]
    assert closed, lines(out)
    first, expected = closed[0], events[0]
    # The stream's own timestamps (RTSP's start a little after 0) put the event where the file has it.
    assert abs(first["start_s"] - expected["start_s"]) <= 0.25
    assert abs(first["start_frame"] - expected["start_frame"]) <= 2
    assert first["peak_score"] == pytest.approx(expected["peak_score"], rel=0.1)
    assert (out / first["clip"]).stat().st_size > 0
    # Live: the event opened while the stream played, within a window and 2 s of its first frame.
    opened = next(r for r in lines(out) if r["state"] == "open")
    assert opened["latency_s"] <= 16 / FPS + 2.0


def test_a_camera_restarted_mid_stream_is_reconnected_and_the_gap_recorded(
    weights_dir: Path, camera_video: Path, tmp_path: Path
) -> None:
    out = tmp_path / "watch"
    with RtspServer(camera_video, loop=True) as server:
        command = [sys.executable, "-m", "callm.cli", "watch", f"cam={server.url}", "--out", str(out)]
        process = subprocess.Popen(
            [*command, "-w", str(weights_dir), "--duration", "22"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            time.sleep(4.0)
            server.stop()  # the camera loses power mid-stream
            time.sleep(1.5)
            server.start()
            restarted = time.time()
            _, err = process.communicate(timeout=90)
        finally:
            process.kill()
    assert process.returncode == 0, err.decode()
    with EventStore(out, readonly=True) as store:
        gaps = store.gaps("cam")
        events = store.events("cam")
    assert gaps and gaps[0]["ended_at"] is not None and gaps[0]["ended_at"] >= restarted - 0.5
    # Watched again after the restart: the looping stream's intruder makes an event once the camera is back.
    assert any(e["started_at"] > restarted and e["state"] == "close" for e in events), events


def test_every_record_is_published_over_mqtt(
    runner: CliRunner, weights_dir: Path, tmp_path: Path, camera_video: Path
) -> None:
    require(mqtt_broker_missing())
    received: list[tuple[str, dict]] = []
    subscribed = threading.Event()
    with MqttBroker() as broker:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        client.on_connect = lambda c, *_: c.subscribe("callm/+/events", qos=1)
        client.on_subscribe = lambda *_: subscribed.set()
        client.on_message = lambda _c, _u, m: received.append((m.topic, json.loads(m.payload)))
        client.connect(broker.host, broker.port)
        client.loop_start()
        try:
            assert subscribed.wait(10)
            out = tmp_path / "watch"
            args = ["watch", f"gate={camera_video}", "--out", str(out), "-w", str(weights_dir)]
            result = runner.invoke(app, [*args, "--mqtt", f"{broker.host}:{broker.port}"])
            assert result.exit_code == 0, result.output
            records = lines(out)
            deadline = time.monotonic() + 10
            while len(received) < len(records) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            client.loop_stop()
            client.disconnect()
    assert records
    assert [(t, r["id"], r["state"]) for t, r in received] == [
        ("callm/gate/events", r["id"], r["state"]) for r in records
    ]
