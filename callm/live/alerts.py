"""Where event records go besides the store: a webhook (HTTP POST of JSON) and an MQTT broker.

A sink must never slow down or stop the watch: ``send`` only queues, delivery happens in a background thread,
and a receiver that is down, slow or refusing costs retries and counted failures, never an exception in the
caller. What a sink could not deliver is counted (``sent``, ``failed``, ``dropped``), so that the end-of-run
summary says what reached the receiver; the event store remains the complete record.

Webhook: each record is one POST with a JSON body. Connection errors, timeouts, HTTP 5xx and 429 are retried
``retries`` times with exponential backoff (``backoff_s``, doubled each time, at most 30 s); any other HTTP error
is final. Records wait in a bounded queue; when it is full, new ones are dropped rather than held in memory.

MQTT: records are published with QoS 1 to ``PREFIX/CAMERA/events`` (a camera name's ``/``, ``+`` and ``#``
become ``_``). paho-mqtt connects and reconnects in its own thread and keeps up to 1000 unacknowledged
messages while the broker is away; ``sent`` counts those the broker acknowledged.
"""

from __future__ import annotations

import base64
import http.client
import logging
import os
import queue
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from typing import Any, Protocol

from callm.errors import CallmError
from callm.live.store import to_json

log = logging.getLogger("callm.live")

MAX_BACKOFF_S = 30.0
MQTT_MAX_QUEUED = 1000


class Sink(Protocol):
    name: str

    def send(self, record: dict[str, Any]) -> None: ...

    def close(self, timeout_s: float = 5.0) -> None: ...

    def summary(self) -> dict[str, Any]: ...


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is a failure: urllib would follow a POST's 301/302/303 as a GET, silently losing the record."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if isinstance(error, urllib.error.HTTPError) else f"{type(error).__name__}: {text}"


class Webhook:
    """POST every record as JSON to ``url`` from a background thread, retrying what may succeed later."""

    def __init__(
        self, url: str, timeout_s: float = 5.0, retries: int = 5, backoff_s: float = 1.0, max_queue: int = 1000
    ) -> None:
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError:
            parts, port = None, None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise CallmError(f"webhook {url!r} is not an http(s) URL with a host, e.g. http://host:8080/events")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        netloc = host if port is None else f"{host}:{port}"
        self.url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        # Logs and summaries name the receiver without its credentials or query (often a token).
        self.name = f"webhook {parts.scheme}://{netloc}{parts.path}"
        self.headers = {"Content-Type": "application/json", "User-Agent": "callm"}
        if parts.username is not None:  # urllib does not send a URL's user:password itself
            user = urllib.parse.unquote(parts.username) + ":" + urllib.parse.unquote(parts.password or "")
            self.headers["Authorization"] = "Basic " + base64.b64encode(user.encode()).decode()
        self.timeout_s, self.retries, self.backoff_s = timeout_s, max(0, retries), backoff_s
        self._opener = urllib.request.build_opener(_NoRedirect)
        self.sent = self.failed = self.dropped = 0
        self.last_error: str | None = None
        self._counts = threading.Lock()
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=max_queue)
        self._draining = threading.Event()  # close(): deliver what is queued, then stop
        self._stop = threading.Event()  # close()'s time is up: stop now, even mid-backoff
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="callm-webhook", daemon=True)
        self._thread.start()

    def send(self, record: dict[str, Any]) -> None:
        """Queue the record for delivery; never blocks (a full queue drops it, and counts it)."""
        try:
            if self._closed:
                raise queue.Full
            self._queue.put_nowait(to_json(record).encode())
        except queue.Full:
            with self._counts:
                self.dropped += 1
                dropped = self.dropped
            if dropped == 1 or dropped % 100 == 0:
                log.warning("%s: %d record(s) dropped (queue full or closed)", self.name, dropped)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                body = self._queue.get(timeout=0.05)
            except queue.Empty:
                if self._draining.is_set():
                    return
                continue
            self._deliver(body)

    def _deliver(self, body: bytes) -> None:
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
            wait = min(self.backoff_s * 2**attempt, MAX_BACKOFF_S)
            try:
                with self._opener.open(request, timeout=self.timeout_s) as response:
                    response.read()
                with self._counts:
                    self.sent += 1
                return
            except urllib.error.HTTPError as error:
                error.close()
                if error.code != 429 and error.code < 500:
                    return self._fail(_one_line(error), attempt + 1)  # the receiver refuses: retrying won't help
                retry_after = (error.headers or {}).get("Retry-After", "")
                if retry_after.strip().isdigit():
                    wait = min(max(wait, float(retry_after)), MAX_BACKOFF_S)
                reason = _one_line(error)
            except (OSError, http.client.HTTPException) as error:  # refused, reset, timed out, DNS, bad reply
                reason = _one_line(error)
            if attempt < self.retries:
                log.debug("%s: %s; retrying in %.1f s", self.name, reason, wait)
                if self._stop.wait(wait):
                    return self._fail(f"{reason} (closed before the retry)", attempt + 1)
        self._fail(reason, self.retries + 1)

    def _fail(self, reason: str, attempts: int) -> None:
        with self._counts:
            self.failed += 1
            self.last_error = reason
        log.warning("%s: record not delivered after %d attempt(s): %s", self.name, attempts, reason)

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued within ``timeout_s``, then stop; what is left counts as dropped."""
        if self._closed:
            return
        self._closed = True
        self._draining.set()
        self._thread.join(timeout_s)
        self._stop.set()  # cuts a backoff wait short; a POST in progress ends by its own timeout
        self._thread.join(1.0)  # so that the record it was retrying is counted
        left = 0
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
            left += 1
        if left:
            with self._counts:
                self.dropped += left
            log.warning("%s: %d record(s) not sent before closing", self.name, left)

    def summary(self) -> dict[str, Any]:
        with self._counts:
            return {"sent": self.sent, "failed": self.failed, "dropped": self.dropped, "last_error": self.last_error}


def mqtt_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``HOST``, port 1883; ``[::1]:1883`` for IPv6) -> (host, port)."""
    text = address.strip()
    host, port = text, "1883"
    if text.startswith("["):  # [v6 address] or [v6 address]:port
        host, _, rest = text[1:].partition("]")
        if rest:
            port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c in host for c in "/ @"):
        raise CallmError(f"--mqtt {address!r}: expected HOST:PORT (the port defaults to 1883), e.g. localhost:1883")
    return host, int(port)


def _topic_part(camera: str) -> str:
    return "".join("_" if c in "/+#" else c for c in camera) or "_"


class MqttPublisher:
    """Publish every record as JSON with QoS 1 to ``{topic_prefix}/{camera}/events`` on an MQTT broker."""

    def __init__(self, address: str, topic_prefix: str = "callm", timeout_s: float = 5.0) -> None:
        self.host, self.port = mqtt_address(address)
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise CallmError("--mqtt needs paho-mqtt: pip install paho-mqtt") from None
        self.name = f"mqtt {address.strip()}"
        self.topic_prefix = topic_prefix.strip("/")
        if not self.topic_prefix or any(c in self.topic_prefix for c in "+#"):
            raise CallmError(f"MQTT topic prefix {topic_prefix!r}: must be non-empty, without '+' or '#'")
        self.timeout_s = timeout_s
        self.sent = self.failed = 0
        self.last_error: str | None = None
        self.connected = False
        self._counts = threading.Lock()
        self._queued = 0  # messages handed to paho; those not yet acknowledged are ``_queued - sent``
        self._closed = False
        client_id = f"callm-{socket.gethostname()}-{os.getpid()}-{id(self) % 10000}"
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self._client.max_queued_messages_set(MQTT_MAX_QUEUED)
        self._client.reconnect_delay_set(1, 30)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._no_connection = mqtt.MQTT_ERR_NO_CONN
        # Connecting happens in paho's thread: a broker that is down blocks nothing here.
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._note(f"broker refused the connection: {reason_code}")
        else:
            self.connected = True
            log.info("%s: connected", self.name)

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self._note(f"cannot connect to {self.host}:{self.port}; retrying")

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        was = self.connected
        self.connected = False
        if was and not self._closed:
            self._note(f"disconnected ({reason_code}); reconnecting")

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._counts:
            self.sent += 1

    def _note(self, reason: str) -> None:
        """Log a connection problem once, not at every reconnect attempt."""
        with self._counts:
            repeated = reason == self.last_error
            self.last_error = reason
        if not repeated:
            log.warning("%s: %s", self.name, reason)

    def send(self, record: dict[str, Any]) -> None:
        """Queue the record for publishing; never blocks (paho's queue full: counted as failed)."""
        topic = f"{self.topic_prefix}/{_topic_part(str(record.get('camera', '')))}/events"
        try:
            if self._closed:
                raise RuntimeError("publisher closed")
            info = self._client.publish(topic, to_json(record), qos=1)
            if info.rc not in (0, self._no_connection):  # NO_CONN: queued until the broker is back
                raise RuntimeError(f"not queued (paho error {info.rc})")
        except (RuntimeError, ValueError, OSError) as error:
            with self._counts:
                self.failed += 1
                self.last_error = str(error)
            log.warning("%s: record not published: %s", self.name, error)
            return
        with self._counts:
            self._queued += 1

    def close(self, timeout_s: float | None = None) -> None:
        """Wait up to ``timeout_s`` (default: the constructor's) for unacknowledged messages, then disconnect;
        messages still unacknowledged count as failed."""
        if self._closed:
            return
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while self._queued > self.sent and time.monotonic() < deadline:
            time.sleep(0.02)
        self._closed = True
        self._client.disconnect()
        self._client.loop_stop()  # no acknowledgement arrives after this
        self.connected = False
        with self._counts:
            left = max(0, self._queued - self.sent)
            self.failed += left
        if left:
            log.warning("%s: %d record(s) not acknowledged by the broker before closing", self.name, left)

    def summary(self) -> dict[str, Any]:
        with self._counts:
            return {
                "sent": self.sent,
                "failed": self.failed,
                "connected": self.connected,
                "last_error": self.last_error,
            }


class Alerts:
    """Fan each record out to every sink; a sink's trouble is logged and counted, never raised."""

    def __init__(self, sinks: Iterable[Sink] = ()) -> None:
        self.sinks: list[Sink] = list(sinks)

    def add(self, sink: Sink) -> None:
        self.sinks.append(sink)

    def __len__(self) -> int:
        return len(self.sinks)

    def send(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            try:
                sink.send(record)
            except Exception as error:  # a sink bug must not stop the watch
                log.warning("%s: %s", sink.name, _one_line(error))

    def close(self, timeout_s: float = 5.0) -> None:
        """Close every sink, side by side: the whole takes about ``timeout_s``, not that per sink."""
        threads = [threading.Thread(target=sink.close, args=(timeout_s,), daemon=True) for sink in self.sinks]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + timeout_s + 1.0
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def summary(self) -> dict[str, dict[str, Any]]:
        """Sink name -> its counters (``sent``, ``failed``, ...); a name used twice gets `` #2``."""
        found: dict[str, dict[str, Any]] = {}
        for sink in self.sinks:
            name, n = sink.name, 1
            while name in found:
                n += 1
                name = f"{sink.name} #{n}"
            found[name] = sink.summary()
        return found

    def __enter__(self) -> Alerts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
