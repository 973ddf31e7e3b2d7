"""Batch scans: many videos into one run folder, resumable, fault-isolated, on local processes or on Ray.

Layout of a run folder::

    RUN_DIR/videos/<name>.json     the stage-1 (and stage-2) result of each video, as `callm detect --json`
    RUN_DIR/thumbs/<name>-<k>.jpg  the peak frame of event k, its boxes and its main track's path drawn
    RUN_DIR/clips/<name>-<k>.mp4   event k from 1.5 s before to 1.5 s after, its tracked boxes drawn
    RUN_DIR/summary.jsonl          one line per video: path, key, status, error, duration, events, peak score
    RUN_DIR/summary.csv            the same as a table
    RUN_DIR/report.html            the page people look at (see callm.report.html)

    RUN_DIR/run.json               the settings that change a result (weights, threshold, stride, explainers)
    RUN_DIR/scan.lock              held by the scan writing to the folder

Only the main process writes to the run folder, one video at a time and atomically, so workers (local or on
other machines) only compute. A video is done when its summary line exists and its JSON reads back; the line is
written last, so a video interrupted anywhere before (or whose JSON was since deleted or damaged) is simply
scanned again. A rerun with other settings is refused: its results would sit beside results of the old ones.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import cv2

from callm.clips import event_clips
from callm.errors import CallmError
from callm.files import (
    append_jsonl,
    file_sha1,
    read_json,
    read_jsonl,
    write_atomic,
    write_json_atomic,
    write_text_atomic,
)
from callm.video import find_videos

if TYPE_CHECKING:
    from callm.cascade import Stage1, Stage1Recipe
    from callm.results import Detection

Engine = Literal["local", "ray"]
ExplainStep = Callable[["Detection"], None]  # adds its findings to a stage-1 detection
SUMMARY = "summary.jsonl"
RUN_FILE = "run.json"
LOCK_FILE = "scan.lock"
SUMMARY_CSV = "summary.csv"
VIDEOS_DIR = "videos"
THUMBS_DIR = "thumbs"
CLIPS_DIR = "clips"
CSV_FIELDS = (
    "path", "status", "error", "duration_s", "num_frames", "fps", "events", "anomalies", "peak_score",
    "threshold", "windows_gated", "windows_total", "ltc_events", "seconds", "json",
)  # fmt: skip


def source_key(path: Path) -> str:
    """What makes a scan result current: the resolved path, its size and its modification time."""
    stat = path.stat()
    size = stat.st_size if path.is_file() else sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return f"{path.resolve()}|{size}|{stat.st_mtime_ns}"


def output_name(path: Path) -> str:
    """A file-name-safe, unique, readable name for a video's outputs."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", path.name).strip("._") or "video"
    return f"{safe}-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"


@dataclass
class VideoResult:
    """What a worker sends back for one video; picklable, so it can cross processes and machines."""

    path: str
    key: str
    detection: Detection | None = None
    thumbnails: list[bytes] = field(default_factory=list)  # JPEG of each event's peak frame, boxes drawn
    clips: list[bytes] = field(default_factory=list)  # mp4 of each event, tracked boxes drawn
    error: str | None = None
    seconds: float = 0.0


def scan_video(
    stage1: Stage1, path: Path, key: str, on_frames: Callable[[int, int | None], None] | None
) -> VideoResult:
    """Stage 1, thumbnails and clips for one video; any failure becomes the result's error, never an exception."""
    began = time.perf_counter()
    try:
        detection = stage1.detect(path, on_frames)
        clips, thumbs = event_clips(detection)
        return VideoResult(str(path), key, detection, thumbs, clips, seconds=time.perf_counter() - began)
    except CallmError as exc:
        error = str(exc)
    except (cv2.error, OSError, ValueError, RuntimeError) as exc:
        # A decoder or file-system failure on one file must not end a scan of hundreds.
        error = f"{path}: {exc.__class__.__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    return VideoResult(str(path), key, error=error, seconds=time.perf_counter() - began)


class RunFolder:
    """The run folder on disk: what is done, and the atomic writes of each new result."""

    def __init__(self, root: Path) -> None:
        self.root = root
        if root.exists() and not root.is_dir():
            raise CallmError(f"{root}: exists and is not a folder")
        (root / VIDEOS_DIR).mkdir(parents=True, exist_ok=True)
        (root / THUMBS_DIR).mkdir(exist_ok=True)
        (root / CLIPS_DIR).mkdir(exist_ok=True)
        self.records = self.read_summary()

    @property
    def summary_path(self) -> Path:
        return self.root / SUMMARY

    def read_summary(self) -> dict[str, dict[str, Any]]:
        """Records by key; a line cut by a kill is dropped by ``read_jsonl``, so its video is simply redone."""
        records = read_jsonl(self.summary_path)
        if not all(isinstance(r, dict) and "key" in r and "status" in r for r in records):
            raise CallmError(f"{self.summary_path}: not a callm scan summary; use another --out folder")
        return {r["key"]: r for r in records}

    def is_done(self, key: str, retry_errors: bool) -> bool:
        record = self.records.get(key)
        if record is None or (retry_errors and record["status"] == "error"):
            return False
        return record["status"] == "error" or self.result(record) is not None

    def result(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """A done video's JSON, or None when it was deleted or damaged since (the video is then scanned again)."""
        try:
            data = read_json(self.root / record["json"])
        except (CallmError, KeyError, TypeError):
            return None
        fields = ("scores", "events", "threshold")
        return data if isinstance(data, dict) and all(f in data for f in fields) else None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder for one scan; a second one is told who holds it. The lock dies with its process."""
        with open(self.root / LOCK_FILE, "a+", encoding="utf-8") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                raise CallmError(
                    f"{self.root}: another scan is writing to this folder ({holder}); wait for it to end or use "
                    "another --out"
                ) from None
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            fh.flush()
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def check_settings(self, settings: dict[str, Any]) -> None:
        """Refuse to add results made with other settings than the folder's; record them for a new folder."""
        path = self.root / RUN_FILE
        stored: Any = None
        if path.is_file():
            try:
                stored = read_json(path)
            except CallmError:
                stored = None
        if self.records and stored != settings:
            if not isinstance(stored, dict):
                why = f"its {RUN_FILE} is missing or damaged, so the settings of its results are unknown"
            else:
                names = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
                why = "it was scanned with other " + ", ".join(names)
            raise CallmError(
                f"{self.root}: {why}; scan into another --out folder (or delete {SUMMARY} there to rescan everything)"
            )
        write_json_atomic(path, settings)

    def save(self, result: VideoResult) -> dict[str, Any]:
        """Write a video's JSON, thumbnails and clips, then its summary line (last, so it marks the video done)."""
        path = Path(result.path)
        name = output_name(path)
        record: dict[str, Any] = {"path": result.path, "key": result.key, "seconds": round(result.seconds, 3)}
        detection = result.detection
        if detection is None:
            record.update(status="error", error=result.error)
        else:
            data = detection.to_dict()
            for kind, folder, suffix in (("thumbnails", THUMBS_DIR, "jpg"), ("clips", CLIPS_DIR, "mp4")):
                files = []
                for index, content in enumerate(getattr(result, kind)):
                    relative = f"{folder}/{name}-{index}.{suffix}"
                    write_atomic(self.root / relative, lambda tmp, b=content: tmp.write_bytes(b))
                    files.append(relative)
                data[kind] = files
            write_json_atomic(self.root / VIDEOS_DIR / f"{name}.json", data)
            explained = detection.explanations
            record.update(
                status="ok",
                error=None,
                json=f"{VIDEOS_DIR}/{name}.json",
                duration_s=round(detection.num_frames / detection.fps, 3),
                num_frames=detection.num_frames,
                fps=detection.fps,
                events=len(detection.events),
                anomalies=len(detection.events)
                if explained is None
                else sum(e.verdict == "anomaly" for e in explained),
                peak_score=round(float(detection.scores.max()), 4),
                threshold=round(detection.threshold, 4),
                windows_gated=len(detection.gated_starts),
                windows_total=len(detection.window_starts),
            )
            if detection.ltc is not None:
                record["ltc_events"] = len(detection.ltc.events)
        if result.key in self.records:  # a retried error: replace its line rather than add a second one
            self.records[result.key] = record
            write_text_atomic(self.summary_path, "".join(json.dumps(r) + "\n" for r in self.records.values()))
        else:
            self.records[result.key] = record
            with append_jsonl(self.summary_path) as append:
                append(record)
        return record

    def write_csv(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for record in self.records.values():
            writer.writerow(record)
        write_text_atomic(self.root / SUMMARY_CSV, buffer.getvalue())


# Progress of a video: (path, frames done, frames total or None).
ProgressFn = Callable[[str, int, int | None], None]


class ScanProgress(Protocol):
    """What a scan reports as it goes (the CLI draws it; tests count it)."""

    def start(self, videos_to_scan: int) -> None: ...

    def frames(self, path: str, done: int, total: int | None) -> None: ...

    def video_done(self, record: dict[str, Any]) -> None: ...


def _serial(recipe: Stage1Recipe, todo: Sequence[tuple[Path, str]], on_frames: ProgressFn) -> Iterator[VideoResult]:
    stage1 = recipe.build()
    for path, key in todo:
        yield scan_video(stage1, path, key, lambda done, total, p=str(path): on_frames(p, done, total))


_WORKER: dict[str, Any] = {}


def _die_with(parent: int) -> None:
    """End this worker when the scan that started it is gone, even killed with SIGKILL: an orphaned worker holds
    a model's memory for nothing. Linux delivers a signal at once; elsewhere a thread notices within a second."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _init_worker(recipe: Stage1Recipe, threads: int, queue: Any, parent: int) -> None:
    import torch

    _die_with(parent)
    torch.set_num_threads(threads)
    cv2.setNumThreads(1)
    _WORKER["stage1"] = recipe.build()
    _WORKER["queue"] = queue


def _scan_in_worker(path: Path, key: str) -> VideoResult:
    queue = _WORKER["queue"]
    return scan_video(_WORKER["stage1"], path, key, lambda done, total: queue.put((str(path), done, total)))


def _processes(
    recipe: Stage1Recipe, todo: Sequence[tuple[Path, str]], workers: int, on_frames: ProgressFn
) -> Iterator[VideoResult]:
    """Videos in ``workers`` processes; torch's threads are split between them so they do not fight for cores."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # fork after torch has started threads can deadlock
    queue = context.Queue()  # a plain queue, not a Manager: a manager's server process would outlive a killed scan
    threads = max(1, (os.cpu_count() or 1) // workers)
    executor = ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(recipe, threads, queue, os.getpid())
    )
    try:
        pending: set[Future[VideoResult]] = {executor.submit(_scan_in_worker, path, key) for path, key in todo}
        while pending:
            finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            while not queue.empty():
                on_frames(*queue.get_nowait())
            for future in finished:
                yield future.result()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        queue.close()


_RAY_STAGE1: dict[Stage1Recipe, Stage1] = {}


def _scan_on_ray(recipe: Stage1Recipe, path: str, key: str) -> VideoResult:
    # Ray reuses its worker processes: build the model once per process, not once per video.
    if recipe not in _RAY_STAGE1:
        _RAY_STAGE1[recipe] = recipe.build()
    return scan_video(_RAY_STAGE1[recipe], Path(path), key, None)


def _ray(recipe: Stage1Recipe, todo: Sequence[tuple[Path, str]], address: str | None) -> Iterator[VideoResult]:
    """One Ray task per video; without an address a local Ray instance is started (and stopped after)."""
    try:
        import ray
    except ImportError:
        raise CallmError("--engine ray needs Ray: pip install 'callm[ray]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        task = ray.remote(num_cpus=1)(_scan_on_ray)
        refs = [task.remote(recipe, str(path), key) for path, key in todo]
        while refs:
            ready, refs = ray.wait(refs, num_returns=1)
            yield ray.get(ready[0])
    finally:
        if started:
            ray.shutdown()


@dataclass
class ScanSummary:
    videos: int  # found
    scanned: int  # scored in this run
    skipped: int  # already done in an earlier run
    failed: int  # in the run folder with status "error", this run or before
    with_events: int
    total_events: int
    seconds: float
    interrupted: bool = False
    failures: list[tuple[str, str]] = field(default_factory=list)


def scan(
    paths: Sequence[str | Path],
    run_dir: Path,
    recipe: Stage1Recipe,
    engine: Engine = "local",
    workers: int = 1,
    address: str | None = None,
    retry_errors: bool = False,
    explainers: Sequence[ExplainStep] = (),
    progress: ScanProgress | None = None,
    explain_settings: dict[str, Any] | None = None,
) -> ScanSummary:
    """Scan every video under ``paths`` into ``run_dir``; Ctrl-C stops after saving what is done.

    ``explainers`` (stage 2, the VADor path) run here, in the driver, on each video stage 1 scored: they hold
    large models that should be loaded once, not once per worker. ``explain_settings`` names what they are, so a
    rerun with other explainers is told apart."""
    began = time.perf_counter()
    videos = find_videos(paths)
    folder = RunFolder(run_dir)
    with folder.lock():
        folder.records = folder.read_summary()  # what another scan may have added before the lock was ours
        folder.check_settings(run_settings(recipe, explain_settings or {}))
        return _scan_locked(videos, folder, recipe, engine, workers, address, retry_errors, explainers, progress, began)


def run_settings(recipe: Stage1Recipe, explain_settings: dict[str, Any]) -> dict[str, Any]:
    """What changes a scan's results: the weights' contents, the detection options, the explainers."""
    from callm.ae.weights import resolve

    tensors, meta = resolve(recipe.weights)
    options = recipe.options
    return {
        "weights": {"tensors_sha1": file_sha1(tensors), "meta_sha1": file_sha1(meta)},
        "stride": options.stride,
        "threshold": options.threshold,
        "min_event_frames": options.min_event_frames,
        "max_gap": options.max_gap,
        "follow_objects": options.follow_objects,
        "folder_fps": options.folder_fps,
        "explainers": explain_settings,
    }


def _scan_locked(
    videos: list[Path], folder: RunFolder, recipe: Stage1Recipe, engine: Engine, workers: int, address: str | None,
    retry_errors: bool, explainers: Sequence[ExplainStep], progress: ScanProgress | None, began: float,
) -> ScanSummary:  # fmt: skip
    todo = [(p, k) for p, k in ((p, _safe_key(p)) for p in videos) if not folder.is_done(k, retry_errors)]
    report: ProgressFn = progress.frames if progress is not None else lambda *_: None
    if progress is not None:
        progress.start(len(todo))
    if not todo:
        results: Iterable[VideoResult] = []
    elif engine == "ray":
        results = _ray(recipe, todo, address)
    elif workers > 1 and len(todo) > 1:
        results = _processes(recipe, todo, workers, report)
    else:
        results = _serial(recipe, todo, report)
    scanned, interrupted = 0, False
    try:
        for result in results:
            record = folder.save(_explained(result, explainers))
            scanned += 1
            if progress is not None:
                progress.video_done(record)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        folder.write_csv()
    keys = {_safe_key(p) for p in videos}
    records = [r for k, r in folder.records.items() if k in keys]
    ok = [r for r in records if r["status"] == "ok"]
    return ScanSummary(
        videos=len(videos),
        scanned=scanned,
        skipped=len(videos) - len(todo),
        failed=sum(r["status"] == "error" for r in records),
        with_events=sum(r["events"] > 0 for r in ok),
        total_events=sum(r["events"] for r in ok),
        seconds=time.perf_counter() - began,
        interrupted=interrupted,
        failures=[(r["path"], r["error"]) for r in records if r["status"] == "error"],
    )


def _explained(result: VideoResult, explainers: Sequence[ExplainStep]) -> VideoResult:
    """The result with every explainer's findings added; a video an explainer cannot read becomes an error."""
    if result.detection is None:
        return result
    try:
        for explain in explainers:
            explain(result.detection)
    except CallmError as exc:
        return VideoResult(result.path, result.key, error=str(exc), seconds=result.seconds)
    return result


def _safe_key(path: Path) -> str:
    try:
        return source_key(path)
    except OSError:
        return f"{path.resolve()}|unreadable"
