"""The loopback servers that the live-stream tests stand on: a real RTSP camera and a real MQTT broker."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import av
import paho.mqtt.client as mqtt
import pytest
from live_servers import MqttBroker, RtspServer, mqtt_broker_missing, require, rtsp_server_missing, write_h264
from synthetic import make_frames

FPS = 25
FRAMES = 50  # 2 s of video
# TCP: one connection carries RTSP and RTP, as most cameras behind NAT are read; timeout = (open s, read s).
OPEN = {"options": {"rtsp_transport": "tcp"}, "timeout": (10.0, 5.0)}


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(rtsp_server_missing())
    return write_h264(tmp_path_factory.mktemp("rtsp") / "cam.mp4", make_frames(FRAMES, (120, 160)), fps=FPS)


def read_frames(url: str, count: int) -> tuple[list[av.VideoFrame], float]:
    """The first `count` frames (or all, if the stream ends first) and the seconds from av.open to the last one."""
    started = time.monotonic()
    frames: list[av.VideoFrame] = []
    with av.open(url, **OPEN) as container:
        for frame in container.decode(video=0):
            frames.append(frame)
            if len(frames) == count:
                break
    return frames, time.monotonic() - started


def test_rtsp_server_streams_the_video_at_its_frame_rate(video: Path) -> None:
    with RtspServer(video) as camera:
        assert camera.url == f"rtsp://127.0.0.1:{camera.port}/cam"
        frames, seconds = read_frames(camera.url, FRAMES + 10)

    assert len(frames) == FRAMES  # the whole video, then the end of the stream
    assert (frames[-1].width, frames[-1].height) == (160, 120)
    # FFmpeg gives the first frame of an RTSP session no pts; the others count 90 kHz ticks from near the session's
    # start (not from the first frame: here they begin at 0.12 s), increasing, one frame apart.
    pts = [frame.pts for frame in frames if frame.pts is not None]
    assert len(pts) >= FRAMES - 1
    assert pts == sorted(set(pts))
    assert float((pts[-1] - pts[0]) * frames[-1].time_base) == pytest.approx((len(pts) - 1) / FPS, abs=0.01)
    # Sent live, one frame every 1/25 s: a burst would be over in a fraction of a second.
    assert seconds > 0.75 * FRAMES / FPS


def test_a_client_reconnects_after_the_server_restarts(video: Path) -> None:
    with RtspServer(video, loop=True) as camera:
        with av.open(camera.url, **OPEN) as container:
            stream = container.streams.video[0]
            decoded = 0
            ended = False
            try:
                for _frame in container.decode(stream):
                    decoded += 1
                    if decoded == 5:
                        camera.restart()  # drops the connection, as a rebooting camera does
                    if decoded > 5 + FRAMES:  # more than what was buffered before the drop
                        break
                else:
                    ended = True  # over TCP a dead server most often looks like the end of the stream
            except av.error.FFmpegError:
                ended = True
            assert ended, "the stream went on after the server restarted"

        # A new client is served again, and (loop=True) on past the video's end with timestamps still increasing.
        frames, _ = read_frames(camera.url, FRAMES + 10)
    assert len(frames) == FRAMES + 10
    pts = [frame.pts for frame in frames if frame.pts is not None]
    assert pts == sorted(set(pts))
    assert float((pts[-1] - pts[0]) * frames[-1].time_base) > (FRAMES - 1) / FPS


def test_mqtt_broker_carries_a_message() -> None:
    require(mqtt_broker_missing())
    subscribed = threading.Event()
    received: list[mqtt.MQTTMessage] = []
    arrived = threading.Event()

    def on_connect(client: mqtt.Client, _userdata: object, _flags: object, reason_code: object, _props: object) -> None:
        client.subscribe("callm/test/#", qos=1)

    def on_subscribe(_client: mqtt.Client, _userdata: object, _mid: int, _codes: object, _props: object) -> None:
        subscribed.set()

    def on_message(_client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        received.append(message)
        arrived.set()

    with MqttBroker() as broker:
        subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        subscriber.on_connect = on_connect
        subscriber.on_subscribe = on_subscribe
        subscriber.on_message = on_message
        subscriber.connect(broker.host, broker.port)
        subscriber.loop_start()
        publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        try:
            assert subscribed.wait(5), "no SUBACK from the broker"
            publisher.connect(broker.host, broker.port)
            publisher.loop_start()
            publisher.publish("callm/test/event", b'{"score": 0.9}', qos=1).wait_for_publish(5)
            assert arrived.wait(5), "the message did not come through the broker"
        finally:
            publisher.loop_stop()
            publisher.disconnect()
            subscriber.loop_stop()
            subscriber.disconnect()

    assert received[0].topic == "callm/test/event"
    assert received[0].payload == b'{"score": 0.9}'
