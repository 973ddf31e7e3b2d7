"""Atomic file writes: a kill at any moment leaves either the old file or the new one, never half of one.

Append-only JSON-lines files (resumable outputs) get the same guarantee line by line."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from callm.errors import CallmError


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success it is renamed over ``dest``.

    The temporary file lives in the same directory so the final ``os.replace`` is atomic.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 (and some writers recreate the file); give the result a plain open()'s mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, dest)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_atomic(dest: str | Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result to ``dest`` atomically."""
    with atomic_path(dest) as tmp:
        writer(tmp)


def write_text_atomic(dest: str | Path, text: str) -> None:
    write_atomic(dest, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(dest: str | Path, data: Any) -> None:
    write_text_atomic(dest, json.dumps(data, indent=2) + "\n")


def read_json(path: str | Path) -> Any:
    """A JSON file's content, or a one-line error saying why it cannot be read."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CallmError(f"{path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CallmError(f"{path}: not a JSON file") from None


def read_jsonl(path: str | Path) -> list[Any]:
    """The records of a JSON-lines file written by ``append_jsonl``, repaired after a kill.

    A kill mid-append leaves a last line without its newline: it is cut off the file (its item is simply
    redone). A complete line that is not JSON means the file is not one of ours, or was edited: an error.
    """
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(complete)
            os.fsync(fh.fileno())
    records = []
    for number, line in enumerate(data[:complete].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CallmError(f"{path}: line {number} is not JSON; fix or remove that line") from None
    return records


@contextlib.contextmanager
def append_jsonl(path: str | Path) -> Iterator[Callable[[Any], None]]:
    """Yield a function that appends one record as one line and forces it to disk before returning, so a
    kill loses at most the line being written (which ``read_jsonl`` then drops)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:

        def append(record: Any) -> None:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

        yield append


def file_sha1(path: str | Path) -> str:
    """SHA-1 of a file's bytes, read in blocks."""
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
