"""The watch folder's event store: what `callm watch` found, kept so that a kill at any moment loses nothing closed.

``DIR/events.sqlite`` (SQLite, WAL journal, ``synchronous=FULL``) is the truth: once ``EventStore.record`` returns,
the record is on disk and survives kill -9 of the process (and a power cut). ``DIR/events.jsonl`` is a convenience
log for ``tail -f`` and scripts: one JSON line per record, in the order of the ``records`` table. It is appended
after the database commit, so a kill between the two leaves it a line short; the next ``EventStore`` on the folder
cuts a partial last line (a kill mid-write) and appends the lines the database has and the log lacks. A deleted
log is rebuilt whole. One process writes a folder at a time (a lock file, ``DIR/events.lock``, says which);
readers open the store with ``readonly=True``.

Schema (``schema_version`` 1, in the ``meta`` table; times are unix seconds, ``*_s`` are seconds into the stream):

``meta(key TEXT PRIMARY KEY, value TEXT)``
    ``schema_version``.
``events``: one row per event, its latest state
    ``id TEXT PRIMARY KEY`` (``cam1-000007``: camera, dash, number), ``camera TEXT``,
    ``state TEXT`` ('open' | 'update' | 'close'), ``opened_at REAL`` (the first record's; kept by later ones),
    ``closed_at REAL NULL`` (set by a 'close' record: its ``closed_at``, else its ``time``),
    ``start_s REAL``, ``end_s REAL``, ``peak_s REAL``, ``peak_score REAL``, ``clip TEXT NULL`` and
    ``thumbnail TEXT NULL`` (paths relative to DIR), ``explanation_state TEXT NULL``
    ('pending' | 'done' | 'unexplained' | 'failed'), ``verdict TEXT NULL``, ``record TEXT`` (the latest record,
    JSON). Each record is the event's whole state: a column its record lacks is NULL.
``records``: every record ever written, append-only
    ``seq INTEGER PRIMARY KEY AUTOINCREMENT``, ``event_id TEXT``, ``camera TEXT``, ``state TEXT``, ``time REAL``,
    ``record TEXT`` (JSON; the same text as the matching line of events.jsonl).
``camera_stats``: each camera's health, one row per report
    ``camera TEXT``, ``time REAL``, ``fps REAL``, ``lag_s REAL``, ``frames INTEGER``, ``skipped INTEGER``,
    ``status TEXT`` ('connecting' | 'streaming' | 'reconnecting' | 'failed' | 'stopped'), ``detail TEXT NULL``.
``gaps``: stretches a camera was not watched
    ``camera TEXT``, ``started_at REAL``, ``ended_at REAL NULL`` (NULL: still open, or the run was killed during
    it), ``reason TEXT``.

JSON never holds NaN or infinities (not JSON, and most parsers reject them): they are written as null.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from callm.errors import CallmError

try:  # POSIX; elsewhere the one-writer rule goes unenforced
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

SCHEMA_VERSION = 1
STATES = ("open", "update", "close")
EXPLANATION_STATES = ("pending", "done", "unexplained", "failed")
CAMERA_STATUSES = ("connecting", "streaming", "reconnecting", "failed", "stopped")
EVENT_COLUMNS = (
    "id",
    "camera",
    "state",
    "opened_at",
    "closed_at",
    "start_s",
    "end_s",
    "peak_s",
    "peak_score",
    "clip",
    "thumbnail",
    "explanation_state",
    "verdict",
    "record",
)
STATS_COLUMNS = ("camera", "time", "fps", "lag_s", "frames", "skipped", "status", "detail")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY, camera TEXT NOT NULL, state TEXT NOT NULL, opened_at REAL, closed_at REAL,
    start_s REAL, end_s REAL, peak_s REAL, peak_score REAL, clip TEXT, thumbnail TEXT,
    explanation_state TEXT, verdict TEXT, record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_camera ON events (camera, opened_at);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, camera TEXT NOT NULL, state TEXT NOT NULL,
    time REAL NOT NULL, record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS camera_stats (
    camera TEXT NOT NULL, time REAL NOT NULL, fps REAL, lag_s REAL, frames INTEGER, skipped INTEGER,
    status TEXT NOT NULL, detail TEXT
);
CREATE INDEX IF NOT EXISTS camera_stats_by_camera ON camera_stats (camera, time);
CREATE TABLE IF NOT EXISTS gaps (camera TEXT NOT NULL, started_at REAL NOT NULL, ended_at REAL, reason TEXT);
"""


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float (at any depth of dicts, lists and tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def _plain(value: Any) -> Any:
    """JSON for what ``json`` does not know: paths as text, numpy scalars and arrays as Python numbers."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if callable(getattr(value, "tolist", None)):
        return finite(value.tolist())
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def to_json(record: Any) -> str:
    """One line of JSON, non-finite floats as null (``allow_nan=False`` guards the rule)."""
    return json.dumps(finite(record), ensure_ascii=False, allow_nan=False, default=_plain)


def event_id(camera: str, number: int) -> str:
    """``cam1``, 7 -> ``cam1-000007``: the id ``EventStore.next_number`` counts in."""
    return f"{camera}-{number:06d}"


def _number(identifier: str) -> int:
    """The number at the end of an event id, 0 if it has none."""
    tail = identifier.rpartition("-")[2]
    return int(tail) if tail.isdigit() else 0


class EventStore:
    """Events, camera health and gaps of one watch folder; every method may be called from any thread."""

    def __init__(self, folder: str | Path, readonly: bool = False) -> None:
        self.folder = Path(folder)
        self.path = self.folder / "events.sqlite"
        self.log_path = self.folder / "events.jsonl"
        self.readonly = readonly
        self._lock = threading.Lock()
        self._lock_file: TextIO | None = None
        self._log: Any = None
        if readonly:
            if not self.path.is_file():
                raise CallmError(f"{self.folder}: no events.sqlite here; is it a `callm watch` folder?")
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._take_folder()
        self._db: sqlite3.Connection | None = None
        try:
            self._db = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._setup()
            if not readonly:
                self._repair_log()
                self._log = open(self.log_path, "ab")  # noqa: SIM115 (held open until close())
        except sqlite3.DatabaseError as error:
            self.close()
            raise CallmError(f"{self.path}: not a callm event store ({error})") from None
        except BaseException:
            self.close()
            raise

    # -- opening ---------------------------------------------------------------------------------------------

    def _take_folder(self) -> None:
        """The one-writer lock: two watches on one folder would hand out the same event ids."""
        self._lock_file = open(self.folder / "events.lock", "a")  # noqa: SIM115 (held until close())
        if fcntl is None:  # pragma: no cover
            return
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            self._lock_file = None
            raise CallmError(f"{self.folder}: another `callm watch` is writing to this folder") from None

    def _release_folder(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing the file drops the lock (a killed process's too)
            self._lock_file = None

    def _setup(self) -> None:
        db = self._db
        assert db is not None
        db.execute("PRAGMA busy_timeout = 10000")
        if self.readonly:
            db.execute("PRAGMA query_only = ON")
        else:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            with db:
                db.executescript(SCHEMA)
                db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise CallmError(
                f"{self.path}: written by a newer callm (schema {version}, this one reads {SCHEMA_VERSION}); "
                "upgrade callm or use another folder"
            )

    def _repair_log(self) -> None:
        """Cut a partial last line of events.jsonl, then append the records it lacks (see the module docstring)."""
        lines, complete, size = 0, 0, 0
        if self.log_path.is_file():
            with open(self.log_path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    if (count := block.count(b"\n")) > 0:
                        lines += count
                        complete = size + block.rfind(b"\n") + 1
                    size += len(block)
        if complete < size:
            with open(self.log_path, "r+b") as fh:
                fh.truncate(complete)
                os.fsync(fh.fileno())
        assert self._db is not None
        missing = self._db.execute("SELECT record FROM records ORDER BY seq LIMIT -1 OFFSET ?", (lines,)).fetchall()
        if missing or complete < size:
            with open(self.log_path, "ab") as fh:
                fh.write(b"".join(row[0].encode() + b"\n" for row in missing))
                fh.flush()
                os.fsync(fh.fileno())

    # -- writing ---------------------------------------------------------------------------------------------

    def record(self, record: dict[str, Any]) -> None:
        """Store one state of an event (keys ``id``, ``camera``, ``state``, ``time``, and the ``events`` columns
        it knows); on return it is on disk in events.sqlite, and its line is in events.jsonl."""
        missing = [key for key in ("id", "camera", "state", "time") if record.get(key) is None]
        if missing:
            raise ValueError(f"event record without {', '.join(missing)}: {record!r}")
        if record["state"] not in STATES:
            raise ValueError(f"event state {record['state']!r} is not one of {STATES}")
        if record.get("explanation_state") not in (None, *EXPLANATION_STATES):
            raise ValueError(f"explanation_state {record['explanation_state']!r} is not one of {EXPLANATION_STATES}")
        line = to_json(record)
        clean = json.loads(line)  # plain values for the columns: paths as text, NaN as None
        closing = clean["state"] == "close"
        row = {column: clean.get(column) for column in EVENT_COLUMNS}
        if row["opened_at"] is None:
            row["opened_at"] = clean["time"]  # a later record's stand-in never replaces the first (see updates)
        if row["closed_at"] is None or not closing:
            row["closed_at"] = clean["time"] if closing else None
        row["record"] = line
        names = ", ".join(EVENT_COLUMNS)
        updates = ", ".join(
            f"{c} = COALESCE(events.opened_at, excluded.opened_at)" if c == "opened_at" else f"{c} = excluded.{c}"
            for c in EVENT_COLUMNS[1:]
        )
        with self._lock:
            db = self._writable()
            with db:
                db.execute(
                    f"INSERT INTO events ({names}) VALUES ({', '.join(':' + c for c in EVENT_COLUMNS)}) "
                    f"ON CONFLICT (id) DO UPDATE SET {updates}",
                    row,
                )
                db.execute(
                    "INSERT INTO records (event_id, camera, state, time, record) VALUES (?, ?, ?, ?, ?)",
                    (clean["id"], clean["camera"], clean["state"], clean["time"], line),
                )
            # One write of the whole line: a kill leaves at most this line partial, which the next open cuts.
            self._log.write(line.encode() + b"\n")
            self._log.flush()
            os.fsync(self._log.fileno())

    def stats(
        self,
        camera: str,
        fps: float | None,
        lag_s: float | None,
        frames: int,
        skipped: int,
        status: str,
        detail: str | None = None,
    ) -> None:
        """Record a camera's health now: frames read per second, how far behind live, counts, and its status."""
        if status not in CAMERA_STATUSES:
            raise ValueError(f"camera status {status!r} is not one of {CAMERA_STATUSES}")
        values = (camera, time.time(), finite(fps), finite(lag_s), int(frames), int(skipped), status, detail)
        with self._lock:
            db = self._writable()
            with db:
                db.execute(f"INSERT INTO camera_stats VALUES ({', '.join('?' * len(values))})", values)

    def gap_started(self, camera: str, reason: str) -> int:
        """Note that the camera stopped being watched now; returns the gap's id for ``gap_ended``."""
        with self._lock:
            db = self._writable()
            with db:
                cursor = db.execute("INSERT INTO gaps VALUES (?, ?, NULL, ?)", (camera, time.time(), reason))
            return int(cursor.lastrowid or 0)

    def gap_ended(self, rowid: int) -> None:
        """Note that the gap ``rowid`` ended now (a gap already ended keeps its end)."""
        with self._lock:
            db = self._writable()
            with db:
                db.execute("UPDATE gaps SET ended_at = ? WHERE rowid = ? AND ended_at IS NULL", (time.time(), rowid))

    def _writable(self) -> sqlite3.Connection:
        if self.readonly:
            raise RuntimeError(f"{self.path} is open read-only")
        if self._log is None or self._db is None:
            raise RuntimeError(f"{self.path} is closed")
        return self._db

    # -- reading ---------------------------------------------------------------------------------------------

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            if self._db is None:
                raise RuntimeError(f"{self.path} is closed")
            return self._db.execute(sql, params).fetchall()

    def events(self, camera: str | None = None) -> list[dict[str, Any]]:
        """The latest record of each event (of one camera, or all), oldest first."""
        where, params = ("WHERE camera = ?", (camera,)) if camera is not None else ("", ())
        rows = self._query(f"SELECT record FROM events {where} ORDER BY opened_at, id", params)
        return [json.loads(row[0]) for row in rows]

    def unclosed(self) -> list[dict[str, Any]]:
        """The latest records of events never closed (a killed run's), oldest first, for a restart to close."""
        rows = self._query("SELECT record FROM events WHERE state != 'close' ORDER BY opened_at, id")
        return [json.loads(row[0]) for row in rows]

    def next_number(self, camera: str) -> int:
        """1 + the highest number in the camera's event ids, so that a restart continues the numbering."""
        rows = self._query("SELECT id FROM events WHERE camera = ?", (camera,))
        return 1 + max((_number(row[0]) for row in rows), default=0)

    def cameras(self) -> list[str]:
        """Every camera the folder has events, stats or gaps of, sorted."""
        rows = self._query(
            "SELECT camera FROM events UNION SELECT camera FROM camera_stats UNION SELECT camera FROM gaps"
        )
        return sorted(row[0] for row in rows)

    def latest_stats(self) -> dict[str, dict[str, Any]]:
        """Camera -> its last ``stats`` row (``time``, ``fps``, ``lag_s``, ``frames``, ``skipped``, ``status``,
        ``detail``)."""
        rows = self._query(
            "SELECT * FROM camera_stats WHERE rowid IN (SELECT MAX(rowid) FROM camera_stats GROUP BY camera)"
        )
        return {row["camera"]: {key: row[key] for key in STATS_COLUMNS[1:]} for row in rows}

    def gaps(self, camera: str | None = None) -> list[dict[str, Any]]:
        """Every gap (``id``, ``camera``, ``started_at``, ``ended_at``, ``reason``), oldest first."""
        where, params = ("WHERE camera = ?", (camera,)) if camera is not None else ("", ())
        rows = self._query(f"SELECT rowid AS id, * FROM gaps {where} ORDER BY started_at, rowid", params)
        return [dict(row) for row in rows]

    # -- closing ---------------------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._log is not None:
                self._log.close()
                self._log = None
            if self._db is not None:
                self._db.close()
                self._db = None
            self._release_folder()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
