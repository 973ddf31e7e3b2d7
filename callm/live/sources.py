"""Live sources: what a camera is (``name=URL``), and a thread per camera that keeps its frames coming.

PyAV reads every kind of source: RTSP (over TCP, which crosses NATs and loses no packets), HTTP(S) streams
(MJPEG, HLS), a capture device through V4L2, and a file. Unlike OpenCV's capture it gives each frame's
timestamp and takes open and read timeouts, so a dead camera is noticed in seconds rather than hanging.

The grabber never lets a slow scorer make memory grow: live frames go into a bounded queue and, when it is
full, the new frame is dropped and counted (``skipped``). Only a file played as fast as possible (no
``--realtime``) waits for the scorer instead, since nothing is lost by waiting. A stream that drops or never
opens is retried with backoff (1 s doubling to 30 s); each outage is reported with its reason.
"""

from __future__ import annotations

import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np

from callm.errors import CallmError

SourceKind = Literal["rtsp", "http", "device", "file"]
OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 5.0
BACKOFF_S, MAX_BACKOFF_S = 1.0, 30.0
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # used in file names and MQTT topics


@dataclass(frozen=True)
class Source:
    name: str
    url: str
    kind: SourceKind
    realtime: bool = False  # a file: played at its own frame rate (live sources always are)

    @property
    def live(self) -> bool:
        """Frames arrive whether or not they are taken: late ones are dropped, never queued."""
        return self.kind != "file" or self.realtime

    @property
    def redacted(self) -> str:
        """The URL without its password, for logs and the store."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        host = parts.hostname or ""
        netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return parts._replace(netloc=netloc).geturl()


def parse_source(text: str, realtime: bool = False) -> Source:
    """``[name=]URL``: rtsp(s)://, http(s)://, /dev/videoN or a device index, or a video file."""
    name, sep, url = text.partition("=")
    if not sep or "://" in name or "/" in name:
        name, url = "", text
    if not url:
        raise CallmError(f"{text!r}: no source after the camera name")
    if name and not NAME.match(name):
        raise CallmError(f"{name!r}: a camera name is letters, digits, '-' and '_' (at most 64)")
    scheme = urlsplit(url).scheme.lower()
    kind: SourceKind
    if scheme in ("rtsp", "rtsps", "http", "https"):
        if not urlsplit(url).hostname:
            raise CallmError(f"{url}: no host in the URL")
        kind = "rtsp" if scheme.startswith("rtsp") else "http"
        default = urlsplit(url).hostname or "camera"
    elif url.isdigit() or url.startswith("/dev/video"):
        kind, url = "device", url if not url.isdigit() else f"/dev/video{url}"
        default = Path(url).name
    elif scheme and len(scheme) > 1:
        raise CallmError(f"{url}: unsupported source (rtsp://, http(s)://, /dev/videoN or a video file)")
    else:
        path = Path(url).expanduser()
        if not path.is_file():
            raise CallmError(f"{url}: no such video file")
        kind, url, default = "file", str(path), path.stem
    name = name or re.sub(r"[^A-Za-z0-9_-]", "-", default)[:64]
    return Source(name, url, kind, realtime and kind == "file")


def parse_sources(texts: list[str], realtime: bool = False) -> list[Source]:
    sources = [parse_source(t, realtime) for t in texts]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise CallmError(f"cameras need distinct names ({', '.join(repeated)} twice): give them as name=URL")
    return sources


def describe_error(source: Source, error: BaseException) -> str:
    """One line on why a source failed: the reason a person can act on, not the library's class name."""
    text = str(error)
    lowered = text.lower()
    if "401" in text or "unauthorized" in lowered or "403" in text or "forbidden" in lowered:
        reason = "refused: wrong or missing credentials"
    elif "404" in text or "not found" in lowered:
        reason = "not found on the server (check the path)"
    elif "connection refused" in lowered:
        reason = "connection refused (nothing listens there)"
    elif "timed out" in lowered or "timeout" in lowered or "etimedout" in lowered:
        reason = "timed out (host unreachable or not answering)"
    elif "unknown host" in lowered or "name or service not known" in lowered or "resolve" in lowered:
        reason = "unknown host"
    else:
        reason = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return f"{source.name} ({source.redacted}): {reason}"


@dataclass
class Frame:
    """One decoded frame: BGR pixels, its time in the stream and when it arrived."""

    bgr: np.ndarray
    stream_s: float
    wall: float


# Put in the queue when a connection ends: the scorer closes what it had (a gap is no place for a window).
END_OF_SEGMENT = None
StatusCallback = Callable[[str, str | None], None]


def open_container(source: Source) -> Any:
    import av

    host = urlsplit(source.url).hostname if source.kind in ("rtsp", "http") else None
    if host:  # FFmpeg reports a name that does not resolve as a bare I/O error
        try:
            socket.getaddrinfo(host, None)
        except socket.gaierror:
            raise ConnectionError(f"unknown host {host}") from None

    options = {"rtsp_transport": "tcp"} if source.kind == "rtsp" else {}
    fmt = "v4l2" if source.kind == "device" else None
    return av.open(source.url, format=fmt, options=options, timeout=(OPEN_TIMEOUT_S, READ_TIMEOUT_S))


class Grabber(threading.Thread):
    """Decodes one camera into ``frames`` (bounded), reconnecting when it drops; ``on_status(status, detail)``
    follows it: connecting, streaming, reconnecting (with the reason), stopped (a file's end, or the watch's)."""

    def __init__(self, source: Source, on_status: StatusCallback, max_queue: int = 64) -> None:
        super().__init__(name=f"grab-{source.name}", daemon=True)
        self.source = source
        self.on_status = on_status
        self.frames: queue.Queue[Frame | None] = queue.Queue(maxsize=max_queue)
        self.stopping = threading.Event()
        self.skipped = 0
        self.decoded = 0
        self.fps: float | None = None
        self.ended = threading.Event()  # set when the grabber has put its last frame

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        backoff = BACKOFF_S
        status = "connecting"
        while not self.stopping.is_set():
            self.on_status(status, None)
            try:
                container = open_container(self.source)
            except Exception as error:  # any failure to open is a reason to retry, reported in one line
                status = "reconnecting"
                self.on_status(status, describe_error(self.source, error))
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            try:
                with container:
                    got = self._stream(container)
            except Exception as error:  # a dropped stream: the error is the reason, then reconnect
                got, reason = True, describe_error(self.source, error)
            else:
                reason = f"{self.source.name}: the stream ended"
            self._put(END_OF_SEGMENT, wait=True)
            if self.source.kind == "file":
                self.on_status("stopped", "end of file")
                break
            if got:
                backoff = BACKOFF_S
            status = "reconnecting"
            self.on_status(status, reason)
            self.stopping.wait(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
        self.ended.set()
        if self.stopping.is_set():
            self.on_status("stopped", "watch stopped")

    def _stream(self, container: Any) -> bool:
        """Decode until the stream ends or the watch stops; True when any frame came."""
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else None
        self.on_status("streaming", None)
        began, first_s = time.monotonic(), None
        got = False
        for decoded in container.decode(stream):
            if self.stopping.is_set():
                break
            stream_s = float(decoded.time) if decoded.time is not None else self.decoded / (self.fps or 25.0)
            if self.source.realtime:  # a file played as a camera would send it
                first_s = stream_s if first_s is None else first_s
                delay = began + (stream_s - first_s) - time.monotonic()
                if delay > 0:
                    self.stopping.wait(delay)
            frame = Frame(decoded.to_ndarray(format="bgr24"), stream_s, time.time())
            self.decoded += 1
            got = True
            self._put(frame, wait=not self.source.live)
        return got

    def _put(self, item: Frame | None, wait: bool) -> None:
        if not wait:
            try:
                self.frames.put_nowait(item)
            except queue.Full:
                self.skipped += 1
            return
        while not self.stopping.is_set():
            try:
                self.frames.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def segments(self) -> Iterator[Iterator[Frame]]:
        """The frames as one iterator per connection; ends when the grabber has ended and all is taken."""
        while not (self.ended.is_set() and self.frames.empty()):
            first = self._take()
            if first is None:
                continue
            yield self._segment(first)

    def _take(self) -> Frame | None:
        while True:
            try:
                return self.frames.get(timeout=0.2)
            except queue.Empty:
                if self.ended.is_set() or self.stopping.is_set():
                    return None

    def _segment(self, first: Frame) -> Iterator[Frame]:
        yield first
        while (frame := self._take()) is not None:
            yield frame
