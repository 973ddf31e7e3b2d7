"""One camera watched: its frames scored as they come, its events opened, updated and closed, its clips cut.

Each connection of a camera is scored as a stream of its own (a window never spans an outage): stage 1's
scorer with one window per batch, the calibration's smoothing delayed by its radius, events found as they grow
(``callm.ae.online``). A frame's score is final ``WINDOW + stride + 4 sigma`` frames after it arrived at most
(32 at the shipped defaults: 1.3 s at 25 fps) and an event opens its shortest length (half a second by default)
after its first frame.

A ring buffer keeps the last seconds of frames as JPEG (bounded by frame count and bytes), so a closed event's
clip starts before the event did. The ``close`` record waits ``pad_s`` after the event's end for the clip's
tail; the watch stopping, or the stream dropping, closes an event at once with the frames there are.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from callm.ae.online import EventChange, StreamScores
from callm.ae.score import ScoredFrame
from callm.cascade import Stage1
from callm.clips import MAX_CLIP_S, annotate, boxes_at, clip_span, clock, thumbnail
from callm.files import atomic_path, write_atomic
from callm.live.sources import Frame, Grabber, Source
from callm.results import Event
from callm.video import Mp4Writer, convert_frame

PAD_S = 2.0  # seconds of clip before and after an event
UPDATE_S = 5.0  # an open event is reported again this often
RING_MAX_BYTES = 96 * 2**20  # per camera: about a minute of 640x480 JPEG
JPEG_QUALITY = 85

Emit = Callable[[dict[str, Any]], None]


@dataclass
class Stored:
    index: int
    stream_s: float
    wall: float
    jpeg: bytes


class Ring:
    """The camera's last frames as JPEG, at most ``max_frames`` and ``max_bytes``: memory stays flat.

    Frames are added on the scorer's reading thread (decoding runs ahead of the model) while the camera's thread
    reads them for clips: a lock keeps the two apart."""

    def __init__(self, max_frames: int, max_bytes: int = RING_MAX_BYTES) -> None:
        self.frames: deque[Stored] = deque()
        self.max_frames, self.max_bytes, self.bytes = max_frames, max_bytes, 0
        self.lock = threading.Lock()

    def add(self, index: int, frame: Frame) -> None:
        ok, encoded = cv2.imencode(".jpg", frame.bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            return
        with self.lock:
            self.frames.append(Stored(index, frame.stream_s, frame.wall, encoded.tobytes()))
            self.bytes += len(self.frames[-1].jpeg)
            while len(self.frames) > self.max_frames or self.bytes > self.max_bytes:
                self.bytes -= len(self.frames.popleft().jpeg)

    def get(self, index: int) -> Stored | None:
        with self.lock:
            if not self.frames or not self.frames[0].index <= index <= self.frames[-1].index:
                return None
            stored = self.frames[index - self.frames[0].index]  # indices run without holes
            return stored if stored.index == index else None

    def span(self, first: int, last: int) -> list[Stored]:
        with self.lock:
            return [s for s in self.frames if first <= s.index <= last]


def rgb(stored: Stored) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(stored.jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@dataclass
class Pending:
    """A closed event waiting for its clip's tail."""

    record: dict[str, Any]
    event: Event
    until: int  # the last frame the clip wants


@dataclass
class CameraStats:
    status: str = "connecting"
    detail: str | None = None
    frames: int = 0
    scored: int = 0
    fps: float = 0.0
    lag_s: float = 0.0
    events: int = 0
    open_event: str | None = None
    times: deque[float] = field(default_factory=lambda: deque(maxlen=50))


class Camera(threading.Thread):
    """Scores one source with ``stage1``; every event record goes to ``emit`` (the watch's store and alerts)."""

    def __init__(
        self,
        source: Source,
        stage1: Stage1,
        folder: Path,
        emit: Emit,
        next_number: Callable[[], int],
        on_status: Callable[[Camera], None],
        pad_s: float = PAD_S,
    ) -> None:
        super().__init__(name=f"camera-{source.name}", daemon=True)
        self.source, self.stage1, self.folder, self.emit = source, stage1, folder, emit
        self.next_number, self.on_status, self.pad_s = next_number, on_status, pad_s
        self.stats = CameraStats()
        self.grabber = Grabber(source, self._status)
        self.fps = 25.0
        self.ring = Ring(max_frames=round((MAX_CLIP_S + 2 * pad_s) * 120))
        self.pending: list[Pending] = []
        self.open_records: dict[int, dict[str, Any]] = {}  # event start frame -> its record
        self.index = 0  # frames of this camera so far, over all its connections
        # Stage 2, when the watch has one: takes a closed event's record, the event and its frames in the ring.
        self.explain: Callable[[dict[str, Any], Event, list[Stored]], None] | None = None

    def _status(self, status: str, detail: str | None) -> None:
        self.stats.status, self.stats.detail = status, detail
        self.on_status(self)

    def stop(self) -> None:
        self.grabber.stop()

    def run(self) -> None:
        self.grabber.start()
        try:
            for segment in self.grabber.segments():
                self._score(segment)
            self._finish_pending(force=True)
        except Exception as error:  # the store or the disk failed: this camera stops, said in one line
            self.grabber.stop()
            self._status("failed", f"{self.source.name}: stopped: {error}")

    # --- scoring ----------------------------------------------------------------------------------------------

    def _score(self, segment: Iterator[Frame]) -> None:
        first = next(segment)
        self.fps = self.grabber.fps or self.fps
        self.ring.max_frames = round((MAX_CLIP_S + 2 * self.pad_s) * self.fps)
        frame_size = first.bgr.shape[:2]
        offset = self.index
        scorer = self.stage1.new_scorer(batch_size=1)
        scores = StreamScores(self.stage1.calibration)
        events = self.stage1.stream_events(self.fps, update_every=round(UPDATE_S * self.fps))
        waiting: dict[int, ScoredFrame] = {}

        def model_frames() -> Iterator[np.ndarray]:
            for frame in itertools.chain((first,), segment):
                self.ring.add(self.index, frame)
                self.index += 1
                self.stats.frames += 1
                self.stats.times.append(frame.wall)
                yield convert_frame(frame.bgr, scorer.size)

        def handle(scored: list[tuple[int, float]]) -> None:
            for frame, score in scored:
                info = waiting.pop(frame)
                self._changes(events.push(offset + frame, score, info.box, info.regions))
                self._note_scored(offset + frame)
            self._finish_pending()

        try:
            for scored_frame in scorer.scored_frames(model_frames(), frame_size, self.source.name):
                waiting[scored_frame.index] = scored_frame
                handle(scores.push(scored_frame.psnr, scored_frame.speed))
            handle(scores.flush())
        except Exception as error:  # a stream too short for a window, or a frame the model cannot take
            self._status("reconnecting", f"{self.source.name}: {error}")
        if self.grabber.stopping.is_set():
            reason = "watch stopped"
        else:
            reason = "stream ended" if self.source.kind == "file" else "stream lost"
        self._changes(events.flush(), reason=reason)
        self._finish_pending(force=True)

    def _note_scored(self, index: int) -> None:
        self.stats.scored += 1
        stored = self.ring.get(index)
        if stored is not None:
            self.stats.lag_s = time.time() - stored.wall
        times = self.stats.times
        if len(times) > 1 and times[-1] > times[0]:
            self.stats.fps = (len(times) - 1) / (times[-1] - times[0])

    # --- events -----------------------------------------------------------------------------------------------

    def _changes(self, changes: list[tuple[EventChange, Event]], reason: str | None = None) -> None:
        for change, event in changes:
            if change == "open":
                record = self._new_record(event)
                self.open_records[event.start_frame] = record
                self.stats.open_event = record["id"]
                self._send(record)
            elif change == "update":
                record = self.open_records[event.start_frame]
                record.update(self._times(event), state="update")
                self._send(record)
            else:
                record = self.open_records.pop(event.start_frame)
                record.update(self._times(event), state="close", track=event.track, tracks=event.tracks)
                if reason is not None:
                    record["closed_because"] = reason
                self.stats.open_event = None
                self.stats.events += 1
                self.pending.append(Pending(record, event, event.end_frame + round(self.pad_s * self.fps)))

    def _new_record(self, event: Event) -> dict[str, Any]:
        number = self.next_number()
        start = self.ring.get(event.start_frame)
        opened = time.time()
        return {
            "id": f"{self.source.name}-{number:06d}",
            "camera": self.source.name,
            "source": self.source.redacted,
            "state": "open",
            "opened_at": opened,
            "started_at": start.wall if start else opened,
            # From the event's first frame arriving to this record: what the watch promises to bound.
            "latency_s": round(opened - start.wall, 3) if start else None,
            "fps": self.fps,
            "threshold": self.stage1.threshold,
            **self._times(event),
        }

    def _times(self, event: Event) -> dict[str, Any]:
        """Where the event is: frames of this camera, seconds of the stream (the source's own timestamps)."""

        def stream_s(index: int, fallback: float) -> float:
            stored = self.ring.get(index)
            return round(stored.stream_s, 3) if stored else fallback

        record = self.open_records.get(event.start_frame, {})
        return {
            "time": time.time(),
            "start_frame": event.start_frame,
            "end_frame": event.end_frame,
            "peak_frame": event.peak_frame,
            "start_s": stream_s(event.start_frame, record.get("start_s", event.start_s)),
            "end_s": round(stream_s(event.end_frame, event.end_s - 1 / self.fps) + 1 / self.fps, 3),  # its end
            "peak_s": stream_s(event.peak_frame, record.get("peak_s", event.start_s)),
            "peak_score": round(event.peak_score, 3),
            "box": event.box,
        }

    def _send(self, record: dict[str, Any]) -> None:
        record["time"] = time.time()
        self.emit(dict(record))

    def _finish_pending(self, force: bool = False) -> None:
        """Cut the clip and thumbnail of each closed event whose tail is in (all of them when ``force``)."""
        for item in [p for p in self.pending if force or self.index > p.until]:
            self.pending.remove(item)
            record = item.record
            record.update(self._media(item.event, record["id"]))
            record["closed_at"] = time.time()
            self._send(record)
            if self.explain is not None:
                self.explain(record, item.event, self.ring.span(item.event.start_frame, item.event.end_frame))

    def _media(self, event: Event, name: str) -> dict[str, Any]:
        span = clip_span(event, self.fps, self.index, self.pad_s)  # frames up to the newest one in
        frames = self.ring.span(span.start, span.stop - 1)
        media: dict[str, Any] = {"clip": None, "thumbnail": None}
        if not frames:
            return media
        boxes = boxes_at(event)
        clip = Path("clips") / f"{name}.mp4"
        with atomic_path(self.folder / clip) as path, Mp4Writer(path, self.fps) as writer:
            for stored in frames:
                in_event = event.start_frame <= stored.index <= event.end_frame
                writer.write(annotate(rgb(stored), boxes.get(stored.index, []), clock(stored.stream_s), in_event))
        media["clip"] = str(clip)
        peak = self.ring.get(event.peak_frame) or frames[len(frames) // 2]
        jpeg = thumbnail(rgb(peak), event)
        if jpeg:
            thumb = Path("thumbs") / f"{name}.jpg"
            write_atomic(self.folder / thumb, lambda tmp: tmp.write_bytes(jpeg))
            media["thumbnail"] = str(thumb)
        return media
