"""Alerts: a webhook and an MQTT broker get every record as JSON, and a receiver that is down never blocks the watch."""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from callm.errors import CallmError
from callm.live.alerts import Alerts, MqttPublisher, Webhook, mqtt_address


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def free_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def record(n: int, camera: str = "cam1", **fields: Any) -> dict[str, Any]:
    return {"id": f"{camera}-{n:06d}", "camera": camera, "state": "close", "time": 1000.0 + n, **fields}


class Receiver:
    """A local HTTP server that answers POSTs with the given statuses in turn (then 200) and keeps what it got."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.hits = 0
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.hits += 1
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                if status == 200:
                    receiver.headers.append(dict(self.headers))
                    receiver.received.append(json.loads(body))
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/events"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(*statuses: int) -> Receiver:
        made.append(Receiver(list(statuses)))
        return made[-1]

    yield make
    for server in made:
        server.close()


def test_webhook_posts_records_as_json(receiver: Callable[..., Receiver]) -> None:
    server = receiver()
    hook = Webhook(server.url, backoff_s=0.05)
    hook.send(record(1, peak_score=0.75, clip="clips/cam1-000001.mp4"))
    hook.send(record(2, peak_score=math.nan))
    assert wait_for(lambda: hook.sent == 2)
    hook.close()
    assert server.received == [record(1, peak_score=0.75, clip="clips/cam1-000001.mp4"), record(2, peak_score=None)]
    assert server.headers[0]["Content-Type"] == "application/json"
    assert hook.summary() == {"sent": 2, "failed": 0, "dropped": 0, "last_error": None}


def test_webhook_retries_server_errors(receiver: Callable[..., Receiver]) -> None:
    server = receiver(503, 503)
    hook = Webhook(server.url, backoff_s=0.05)
    hook.send(record(1))
    assert wait_for(lambda: hook.sent == 1)
    hook.close()
    assert server.hits == 3 and server.received == [record(1)]
    assert (hook.failed, hook.dropped) == (0, 0)


def test_webhook_does_not_retry_a_refusal(receiver: Callable[..., Receiver], caplog: pytest.LogCaptureFixture) -> None:
    server = receiver(400, 429, 200, 302)
    hook = Webhook(server.url, backoff_s=0.05)
    with caplog.at_level(logging.WARNING, logger="callm.live"):
        hook.send(record(1))
        assert wait_for(lambda: hook.failed == 1)
        hook.send(record(2))  # 429 (too many requests) is worth a retry
        assert wait_for(lambda: hook.sent == 1)
        assert hook.last_error is not None and "400" in hook.last_error
        hook.send(record(3))  # a redirect would turn the POST into a GET: a failure, not followed
        assert wait_for(lambda: hook.failed == 2)
    hook.close()
    assert server.hits == 4 and server.received == [record(2)]
    assert hook.last_error is not None and "302" in hook.last_error
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert all("\n" not in w.getMessage() and w.exc_info is None for w in warnings)


def test_webhook_unreachable_never_blocks(caplog: pytest.LogCaptureFixture) -> None:
    hook = Webhook(f"http://127.0.0.1:{free_port()}/events", timeout_s=1.0, retries=2, backoff_s=0.01)
    with caplog.at_level(logging.WARNING, logger="callm.live"):
        for n in range(10):
            started = time.perf_counter()
            hook.send(record(n))
            assert time.perf_counter() - started < 0.05
        assert wait_for(lambda: hook.failed == 10)
    hook.close()
    assert hook.sent == 0 and hook.dropped == 0
    assert hook.last_error is not None and "refused" in hook.last_error.lower()
    assert sum("not delivered after 3 attempt(s)" in r.getMessage() for r in caplog.records) == 10


def test_webhook_full_queue_drops_and_close_cuts_backoff_short() -> None:
    hook = Webhook(f"http://127.0.0.1:{free_port()}/", retries=5, backoff_s=10.0, max_queue=2)
    for n in range(10):
        hook.send(record(n))
    assert hook.dropped >= 7
    started = time.perf_counter()
    hook.close(timeout_s=0.2)
    assert time.perf_counter() - started < 2.0
    assert hook.sent == 0 and hook.failed + hook.dropped == 10
    hook.send(record(11))  # after close: counted, not raised
    assert hook.failed + hook.dropped == 11


def test_webhook_close_delivers_what_is_queued(receiver: Callable[..., Receiver]) -> None:
    server = receiver()
    hook = Webhook(server.url)
    for n in range(20):
        hook.send(record(n))
    hook.close(timeout_s=5.0)
    assert hook.sent == 20 and len(server.received) == 20


def test_webhook_credentials_go_in_a_header_not_the_logs(receiver: Callable[..., Receiver]) -> None:
    server = receiver()
    url = server.url.replace("http://", "http://alice:s3cret@") + "?token=abc"
    hook = Webhook(url)
    hook.send(record(1))
    assert wait_for(lambda: hook.sent == 1)
    hook.close()
    assert server.headers[0]["Authorization"] == "Basic YWxpY2U6czNjcmV0"
    assert "s3cret" not in hook.name and "abc" not in hook.name


@pytest.mark.parametrize("url", ["ftp://x", "not a url", "http://", "http://host:99999/x", ""])
def test_webhook_bad_url(url: str) -> None:
    with pytest.raises(CallmError, match="webhook") as error:
        Webhook(url)
    assert "\n" not in str(error.value)


def test_alerts_fan_out_and_summarise(receiver: Callable[..., Receiver]) -> None:
    class Broken:
        name = "broken"

        def send(self, record: dict[str, Any]) -> None:
            raise RuntimeError("boom")

        def close(self, timeout_s: float = 5.0) -> None:
            pass

        def summary(self) -> dict[str, Any]:
            return {"sent": 0}

    first, second = receiver(), receiver()
    alerts = Alerts([Webhook(first.url), Broken()])
    alerts.add(Webhook(second.url))
    alerts.add(Webhook(second.url))
    assert len(alerts) == 4
    alerts.send(record(1))
    alerts.close()
    assert first.received == [record(1)] and second.received == [record(1), record(1)]
    summary = alerts.summary()
    name = f"webhook {second.url}"
    assert list(summary) == [f"webhook {first.url}", "broken", name, f"{name} #2"]
    assert summary[name]["sent"] == summary[f"{name} #2"]["sent"] == 1


def test_mqtt_address() -> None:
    assert mqtt_address("broker.local:1884") == ("broker.local", 1884)
    assert mqtt_address("localhost") == ("localhost", 1883)
    assert mqtt_address("[::1]:1884") == ("::1", 1884)
    for bad in ("", "host:", "host:port", "host:70000", "mqtt://host:1883"):
        with pytest.raises(CallmError, match="HOST:PORT"):
            MqttPublisher(bad)


def test_mqtt_without_a_broker_never_blocks() -> None:
    started = time.perf_counter()
    publisher = MqttPublisher(f"127.0.0.1:{free_port()}", timeout_s=0.2)
    for n in range(5):
        publisher.send(record(n))
    assert time.perf_counter() - started < 0.5
    assert wait_for(lambda: publisher.last_error is not None, 3.0)
    assert not publisher.connected
    publisher.close()
    assert publisher.sent == 0 and publisher.failed == 5


@pytest.fixture
def broker_class() -> type[Any]:
    from live_servers import MqttBroker, mqtt_broker_missing, require

    require(mqtt_broker_missing())
    return MqttBroker


class Subscriber:
    """A paho client subscribed to ``topic``, keeping (topic, JSON) of what arrives."""

    def __init__(self, host: str, port: int, topic: str = "callm/+/events") -> None:
        import paho.mqtt.client as mqtt

        self.received: list[tuple[str, Any]] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-subscriber-{id(self)}")
        self.client.on_connect = lambda client, *_: client.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = lambda client, userdata, msg: self.received.append(
            (msg.topic, json.loads(msg.payload))
        )
        self.client.connect(host, port)
        self.client.loop_start()
        assert self.subscribed.wait(5.0)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_mqtt_publishes_json_to_a_broker(broker_class: type[Any]) -> None:
    with broker_class() as broker:
        subscriber = Subscriber(broker.host, broker.port)
        publisher = MqttPublisher(f"{broker.host}:{broker.port}")
        assert wait_for(lambda: publisher.connected)
        publisher.send(record(1, peak_score=math.nan))
        publisher.send(record(2, camera="door/back"))
        assert wait_for(lambda: len(subscriber.received) == 2)
        publisher.close()
        subscriber.close()
    assert subscriber.received == [
        ("callm/cam1/events", record(1, peak_score=None)),
        ("callm/door_back/events", record(2, camera="door/back")),
    ]
    assert publisher.summary() == {"sent": 2, "failed": 0, "connected": False, "last_error": None}


def test_mqtt_keeps_records_until_the_broker_is_up(broker_class: type[Any]) -> None:
    broker = broker_class()
    publisher = MqttPublisher(f"{broker.host}:{broker.port}", topic_prefix="site/callm/")
    publisher.send(record(1))  # queued: the first connection attempt fails, the next comes in about 1 s
    assert wait_for(lambda: publisher.last_error is not None, 3.0) and publisher.sent == 0
    with broker:
        subscriber = Subscriber(broker.host, broker.port, "site/callm/+/events")
        assert wait_for(lambda: publisher.sent == 1, 10.0)
        assert wait_for(lambda: len(subscriber.received) == 1)
        publisher.close()
        subscriber.close()
    assert subscriber.received == [("site/callm/cam1/events", record(1))]
    assert publisher.failed == 0
