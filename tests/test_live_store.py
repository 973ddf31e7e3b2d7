"""The watch folder's event store: one row per event, every record logged, nothing closed lost to kill -9."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from callm.errors import CallmError
from callm.live.store import EventStore, event_id, to_json

ROOT = Path(__file__).resolve().parent.parent


def rec(camera: str, number: int, state: str, at: float, **fields: Any) -> dict[str, Any]:
    record = {"id": event_id(camera, number), "camera": camera, "state": state, "time": at}
    record.update(fields)
    return record


def log_lines(folder: Path) -> list[dict[str, Any]]:
    text = (folder / "events.jsonl").read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_records_round_trip_and_one_row_per_event(tmp_path: Path) -> None:
    with EventStore(tmp_path / "watch") as store:
        store.record(rec("cam1", 1, "open", 100.0, start_s=3.0, peak_s=3.5, peak_score=0.7))
        store.record(rec("cam1", 1, "update", 101.0, start_s=3.0, end_s=4.0, peak_s=3.9, peak_score=0.9))
        closed = rec(
            "cam1",
            1,
            "close",
            102.0,
            start_s=3.0,
            end_s=5.0,
            peak_s=3.9,
            peak_score=0.9,
            clip="clips/cam1-000001.mp4",
            thumbnail="clips/cam1-000001.jpg",
            explanation_state="pending",
            extra={"boxes": [[1, 2, 3, 4]]},
        )
        store.record(closed)
        store.record(rec("cam2", 1, "open", 101.5, start_s=1.0))
        assert store.events() == [closed, rec("cam2", 1, "open", 101.5, start_s=1.0)]
        assert store.events("cam1") == [closed]
        assert store.cameras() == ["cam1", "cam2"]
        assert [r["id"] for r in store.unclosed()] == ["cam2-000001"]

    db = sqlite3.connect(tmp_path / "watch" / "events.sqlite")
    row = db.execute("SELECT state, opened_at, closed_at, end_s, clip, explanation_state FROM events").fetchone()
    assert row == ("close", 100.0, 102.0, 5.0, "clips/cam1-000001.mp4", "pending")
    assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 2
    states = db.execute("SELECT event_id, state FROM records ORDER BY seq").fetchall()
    assert states == [("cam1-000001", s) for s in ("open", "update", "close")] + [("cam2-000001", "open")]
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "1"
    db.close()
    assert [line["state"] for line in log_lines(tmp_path / "watch")] == ["open", "update", "close", "open"]


def test_bad_records_are_refused(tmp_path: Path) -> None:
    with EventStore(tmp_path) as store:
        with pytest.raises(ValueError, match="time"):
            store.record({"id": "cam1-000001", "camera": "cam1", "state": "open"})
        with pytest.raises(ValueError, match="state"):
            store.record(rec("cam1", 1, "opened", 1.0))
        assert store.events() == []


def test_nan_becomes_null(tmp_path: Path) -> None:
    with EventStore(tmp_path) as store:
        store.record(rec("cam1", 1, "close", 5.0, peak_score=math.nan, end_s=math.inf, scores=[1.0, -math.inf]))
        (event,) = store.events()
        assert event["peak_score"] is None and event["end_s"] is None and event["scores"] == [1.0, None]
    assert "NaN" not in (tmp_path / "events.jsonl").read_text()
    assert "Infinity" not in (tmp_path / "events.jsonl").read_text()
    assert to_json({"x": float("nan"), "p": Path("a/b")}) == '{"x": null, "p": "a/b"}'


def test_restart_continues_numbering_and_lists_unclosed(tmp_path: Path) -> None:
    with EventStore(tmp_path) as store:
        assert store.next_number("cam1") == 1
        store.record(rec("cam1", 1, "close", 1.0))
        store.record(rec("cam1", 2, "close", 2.0))
        store.record(rec("cam1", 3, "open", 3.0, start_s=9.0))
        store.record(rec("cam2", 1, "open", 3.5))
    with EventStore(tmp_path) as store:
        assert store.next_number("cam1") == 4
        assert store.next_number("cam2") == 2
        assert store.next_number("cam3") == 1
        left = store.unclosed()
        assert [r["id"] for r in left] == ["cam1-000003", "cam2-000001"]
        store.record({**left[0], "state": "close", "time": 10.0, "reason": "watch restarted"})
        assert [r["id"] for r in store.unclosed()] == ["cam2-000001"]
        (row,) = [e for e in store.events("cam1") if e["id"] == "cam1-000003"]
        assert row["reason"] == "watch restarted"


def test_one_writer_per_folder_and_readers_alongside(tmp_path: Path) -> None:
    with EventStore(tmp_path) as store:
        store.record(rec("cam1", 1, "open", 1.0))
        with pytest.raises(CallmError, match="another"):
            EventStore(tmp_path)
        with EventStore(tmp_path, readonly=True) as reader:
            assert [e["id"] for e in reader.events()] == ["cam1-000001"]
            with pytest.raises(RuntimeError):
                reader.record(rec("cam1", 2, "open", 2.0))
    with EventStore(tmp_path) as store:  # the lock went with the first store
        assert store.next_number("cam1") == 2


def test_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "events.sqlite").write_text("hello, this is not sqlite\n" * 100)
    with pytest.raises(CallmError, match="not a callm event store"):
        EventStore(tmp_path)
    with pytest.raises(CallmError, match=r"no events\.sqlite"):
        EventStore(tmp_path / "nowhere", readonly=True)


def test_stats_and_gaps(tmp_path: Path) -> None:
    with EventStore(tmp_path) as store:
        store.stats("cam1", None, None, 0, 0, "connecting")
        store.stats("cam1", 24.8, 0.3, 250, 2, "streaming")
        store.stats("cam2", math.nan, None, 0, 0, "reconnecting", detail="connection refused")
        with pytest.raises(ValueError):
            store.stats("cam1", 1.0, 0.0, 1, 0, "sleeping")
        latest = store.latest_stats()
        assert latest["cam1"]["status"] == "streaming" and latest["cam1"]["fps"] == 24.8
        assert latest["cam1"]["frames"] == 250 and latest["cam1"]["skipped"] == 2
        assert latest["cam2"] == {**latest["cam2"], "fps": None, "detail": "connection refused"}
        gap = store.gap_started("cam2", "connection refused")
        other = store.gap_started("cam1", "stalled")
        store.gap_ended(gap)
        gaps = {g["id"]: g for g in store.gaps()}
        assert gaps[gap]["ended_at"] >= gaps[gap]["started_at"] and gaps[gap]["reason"] == "connection refused"
        assert gaps[other]["ended_at"] is None
        assert store.cameras() == ["cam1", "cam2"]


def test_many_threads_share_the_store(tmp_path: Path) -> None:
    with EventStore(tmp_path) as store:

        def camera(name: str) -> None:
            for n in range(1, 21):
                store.record(rec(name, n, "close", float(n)))
                store.stats(name, 25.0, 0.1, n, 0, "streaming")

        threads = [threading.Thread(target=camera, args=(f"cam{i}",)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(store.events()) == 80
    assert len(log_lines(tmp_path)) == 80


def test_partial_last_line_is_cut_and_missing_lines_restored(tmp_path: Path) -> None:
    with EventStore(tmp_path) as store:
        for n in (1, 2, 3):
            store.record(rec("cam1", n, "close", float(n)))
    log = tmp_path / "events.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    # A kill between the commit and the append of record 3, then one mid-write of record 4's line.
    log.write_bytes(b"".join(lines[:2]) + b'{"id": "cam1-000004", "cam')
    with EventStore(tmp_path) as store:
        assert [r["id"] for r in log_lines(tmp_path)] == ["cam1-000001", "cam1-000002", "cam1-000003"]
        store.record(rec("cam1", 4, "close", 4.0))
    assert [r["id"] for r in log_lines(tmp_path)] == [event_id("cam1", n) for n in (1, 2, 3, 4)]
    log.unlink()
    EventStore(tmp_path).close()  # a deleted log is rebuilt from the database
    assert len(log_lines(tmp_path)) == 4


KILLED = """
import sys, time
from callm.live.store import EventStore, event_id
store = EventStore(sys.argv[1])
for n in range(1, int(sys.argv[2]) + 1):
    base = {"id": event_id("cam1", n), "camera": "cam1", "start_s": float(n)}
    store.record({**base, "state": "open", "time": 1000.0 + n})
    store.record({**base, "state": "close", "time": 1000.5 + n, "end_s": n + 0.5, "peak_score": 0.5})
print("ready", flush=True)
time.sleep(60)
"""


def test_closed_events_survive_kill_9(tmp_path: Path) -> None:
    count = 25
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(tmp_path), str(count)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    with EventStore(tmp_path) as store:  # the dead process's lock is gone with it
        events = store.events("cam1")
        assert [e["id"] for e in events] == [event_id("cam1", n) for n in range(1, count + 1)]
        assert all(e["state"] == "close" for e in events)
        assert store.unclosed() == []
        assert store.next_number("cam1") == count + 1
    lines = log_lines(tmp_path)
    assert len(lines) == 2 * count  # an open and a close line per event
    assert [line["id"] for line in lines if line["state"] == "close"] == [e["id"] for e in events]
