"""Atomic writes: a failure part way leaves the old file whole and no temporary file behind."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from callm.files import write_atomic, write_json_atomic


def test_write_json_atomic_creates_parents_and_plain_permissions(tmp_path: Path) -> None:
    dest = tmp_path / "a" / "b" / "out.json"
    write_json_atomic(dest, {"x": [1, 2]})
    assert json.loads(dest.read_text()) == {"x": [1, 2]}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert [p.name for p in dest.parent.iterdir()] == ["out.json"]


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    dest = tmp_path / "out.json"
    write_json_atomic(dest, {"version": 1})

    def half_then_crash(tmp: Path) -> None:
        tmp.write_text('{"version": ')
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        write_atomic(dest, half_then_crash)
    assert json.loads(dest.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
