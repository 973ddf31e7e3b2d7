"""`callm watch`: several cameras in one process, one model per weights folder, every event stored and sent.

Each camera is a ``Camera`` thread (its grabber thread beside it); the model's forward passes release the GIL,
so cameras share the CPU without a process each. Every event record goes, in order: into the store (on disk
when ``record`` returns), then to the alert sinks (their own threads: a slow webhook never holds a camera
back), then, for a closed event with ``--explain``, onto the stage-2 queue. That queue is bounded: when it is
full the event is marked ``unexplained`` instead of waiting. The stage-2 thread records the verdict as a
second ``close`` record of the event, with ``explanation_state`` ``done`` (or ``failed``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from callm.cascade import Stage1
from callm.console import err_console
from callm.live.alerts import Alerts
from callm.live.camera import Camera, Stored, rgb
from callm.live.sources import Source
from callm.live.store import EventStore
from callm.results import Event

STATS_EVERY_S = 10.0
EXPLAIN_QUEUE = 8


@dataclass
class ExplainJob:
    record: dict[str, Any]
    frames: np.ndarray  # (n, H, W, 3) RGB
    times: list[float]
    boxes: list[list[int]]


class ExplainWorker(threading.Thread):
    """Stage 2 on its own thread: closed events in, verdicts recorded as they come."""

    def __init__(self, explainer: Any, emit: Callable[[dict[str, Any]], None], size: int) -> None:
        super().__init__(name="stage2", daemon=True)
        self.explainer, self.emit = explainer, emit
        self.jobs: queue.Queue[ExplainJob | None] = queue.Queue(maxsize=size)
        self.done = self.failed = 0

    @property
    def frames_wanted(self) -> int:
        return int(self.explainer.config.frames)

    def offer(self, job: ExplainJob) -> bool:
        try:
            self.jobs.put_nowait(job)
            return True
        except queue.Full:
            return False

    def run(self) -> None:
        while (job := self.jobs.get()) is not None:
            record = job.record
            try:
                answer = self.explainer.explain_sampled(job.frames, job.times, job.boxes)
            except Exception as error:  # one event's failure is recorded; the next is tried
                record.update(explanation_state="failed", explanation=f"stage 2 failed: {error}")
                self.failed += 1
            else:
                record.update(explanation_state="done", verdict=answer.verdict, explanation=answer.text)
                self.done += 1
            record["time"] = time.time()
            self.emit(record)

    def close(self) -> None:
        self.jobs.put(None)
        self.join()


class Watch:
    """The cameras, the store and the sinks of one ``callm watch``."""

    def __init__(
        self,
        sources: list[Source],
        stage1_of: dict[str, Stage1],
        store: EventStore,
        alerts: Alerts,
        explainer: Any = None,
        pad_s: float = 2.0,
    ) -> None:
        self.store, self.alerts, self.folder = store, alerts, Path(store.folder)
        self.lock = threading.Lock()
        self.numbers = {s.name: store.next_number(s.name) for s in sources}
        self.gaps: dict[str, int] = {}
        self.told: dict[str, str] = {}
        self.worker = ExplainWorker(explainer, self._emit, EXPLAIN_QUEUE) if explainer is not None else None
        self.cameras = [
            Camera(
                source,
                stage1_of[source.name],
                self.folder,
                self._emit_camera,
                lambda name=source.name: self._number(name),
                self._status,
                pad_s,
            )
            for source in sources
        ]
        if self.worker is not None:
            for camera in self.cameras:
                camera.explain = self._explain
        self.last_stats = 0.0

    def _number(self, camera: str) -> int:
        with self.lock:
            number = self.numbers[camera]
            self.numbers[camera] += 1
            return number

    def close_leftovers(self) -> int:
        """Events a killed watch left open: closed now, with the reason, so the store has no event open forever."""
        left = self.store.unclosed()
        for record in left:
            record.update(state="close", closed_at=time.time(), time=time.time(), closed_because="watch restarted")
            self._emit(record)
        return len(left)

    def _emit(self, record: dict[str, Any]) -> None:
        self.store.record(record)
        self.alerts.send(record)

    def _emit_camera(self, record: dict[str, Any]) -> None:
        if record["state"] == "close" and self.worker is not None and "explanation_state" not in record:
            record["explanation_state"] = "pending"
        self._emit(record)

    def _explain(self, record: dict[str, Any], event: Event, frames: list[Stored]) -> None:
        """Queue a closed event for stage 2 (``frames``: its frames still in the ring); a full queue marks it."""
        assert self.worker is not None
        wanted = self.worker.frames_wanted
        picked = [frames[round(i)] for i in np.linspace(0, len(frames) - 1, wanted)] if frames else []
        job = ExplainJob(
            dict(record),
            np.stack([rgb(s) for s in picked]) if picked else np.zeros((0, 1, 1, 3), np.uint8),
            [s.stream_s for s in picked],
            [event.box_at(s.index) for s in picked],
        )
        if not picked or not self.worker.offer(job):
            record.update(explanation_state="unexplained", time=time.time())
            self._emit(dict(record))

    def _status(self, camera: Camera) -> None:
        stats, name = camera.stats, camera.source.name
        if stats.status in ("reconnecting", "failed") and stats.detail and stats.detail != self.told.get(name):
            self.told[name] = stats.detail  # each new reason once, not at every retry
            again = "; retrying" if stats.status == "reconnecting" else ""
            err_console.print(f"callm watch: {stats.detail}{again}", markup=False)
        if stats.status == "reconnecting" and name not in self.gaps:
            self.gaps[name] = self.store.gap_started(name, stats.detail or "stream lost")
        elif stats.status == "streaming" and name in self.gaps:
            self.store.gap_ended(self.gaps.pop(name))
        self._write_stats(camera)

    def _write_stats(self, camera: Camera) -> None:
        s = camera.stats
        self.store.stats(
            camera.source.name, round(s.fps, 2), round(s.lag_s, 3), s.frames, camera.grabber.skipped, s.status,
            s.detail,
        )  # fmt: skip

    def start(self) -> None:
        if self.worker is not None:
            self.worker.start()
        for camera in self.cameras:
            camera.start()

    def tick(self) -> None:
        """Called by the caller's loop: the cameras' health into the store every ``STATS_EVERY_S``."""
        now = time.monotonic()
        if now - self.last_stats >= STATS_EVERY_S:
            self.last_stats = now
            for camera in self.cameras:
                self._write_stats(camera)

    def rows(self) -> list[dict[str, Any]]:
        """Each camera's state as the live table shows it."""
        return [
            {
                "camera": c.source.name,
                "status": c.stats.status,
                "fps": c.stats.fps,
                "lag_s": c.stats.lag_s,
                "frames": c.stats.frames,
                "skipped": c.grabber.skipped,
                "events": c.stats.events,
                "open": c.stats.open_event or "",
                "detail": c.stats.detail or "",
            }
            for c in self.cameras
        ]

    @property
    def running(self) -> bool:
        return any(c.is_alive() for c in self.cameras)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the cameras (their open events close with what they have), then stage 2, then the sinks."""
        for camera in self.cameras:
            camera.stop()
        deadline = time.monotonic() + timeout_s
        for camera in self.cameras:
            camera.join(max(0.1, deadline - time.monotonic()))
        for camera in self.cameras:
            self._write_stats(camera)
        for name, gap in list(self.gaps.items()):
            self.store.gap_ended(gap)
            del self.gaps[name]
        if self.worker is not None:
            self.worker.close()
        self.alerts.close()
