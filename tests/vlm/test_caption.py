"""`callm caption`: one valid JSON line per window, and a rerun after a kill completes the file without duplicates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import assert_user_error
from synthetic import make_frames, write_frame_folder, write_video

from callm.cli import app
from callm.errors import CallmError
from callm.files import append_jsonl, read_jsonl
from callm.vlm.caption import CAPTION_KEYS, Blip2Captioner

# A 40-frame folder (windows at 0, 16 and the final one at 24) and a 48-frame video (windows at 0, 16, 32).
EXPECTED_WINDOWS = {"cam": [0, 16, 24], "walk.avi": [0, 16, 32]}


@pytest.fixture(scope="module")
def footage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("footage")
    write_frame_folder(root / "site" / "cam", make_frames(40, seed=1))
    write_video(root / "site" / "walk.avi", make_frames(48, seed=2))
    return root / "site"


def caption_args(footage: Path, captioner_dir: Path, out: Path) -> list[str]:
    return ["caption", str(footage), "--model", str(captioner_dir), "--out", str(out), "--batch-size", "2"]


def lines_of(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_one_line_per_window_and_a_killed_run_resumes_without_duplicates(
    runner, footage: Path, captioner_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unbroken = tmp_path / "unbroken.jsonl"
    result = runner.invoke(app, caption_args(footage, captioner_dir, unbroken))
    assert result.exit_code == 0, result.output
    expected = lines_of(unbroken)
    assert all(tuple(line) == CAPTION_KEYS for line in expected)
    windows: dict[str, list[int]] = {}
    for line in expected:
        windows.setdefault(Path(line["video"]).name, []).append(line["window"][0])
    assert windows == EXPECTED_WINDOWS
    for line in expected:
        start, end = line["window"]
        assert end - start == 16 and line["frame"] == start + 8
        assert line["time_s"] == pytest.approx(line["frame"] / line["fps"], abs=1e-3) and line["fps"] == 10.0
        assert isinstance(line["caption"], str) and line["caption"]

    # The kill: the captioner dies on its second batch, after the first two lines are on disk ...
    real = Blip2Captioner.__call__
    calls: list[int] = []

    def dying(self, images):
        calls.append(len(images))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, images)

    out = tmp_path / "captions.jsonl"
    monkeypatch.setattr(Blip2Captioner, "__call__", dying)
    result = runner.invoke(app, caption_args(footage, captioner_dir, out))
    assert result.exit_code == 130
    assert lines_of(out) == expected[:2]
    # ... and, as a kill mid-write would, it left half a line behind.
    with open(out, "a", encoding="utf-8") as fh:
        fh.write('{"video": "' + expected[2]["video"] + '", "fps": 10.0, "fra')

    calls.clear()
    monkeypatch.setattr(
        Blip2Captioner, "__call__", lambda self, images: calls.append(len(images)) or real(self, images)
    )
    result = runner.invoke(app, caption_args(footage, captioner_dir, out))
    assert result.exit_code == 0, result.output
    assert "4 new caption(s), 2 already there, 2 video(s)" in " ".join(result.stdout.split())
    assert sum(calls) == 4  # only the missing windows were captioned
    assert lines_of(out) == expected  # same lines, same order, nothing twice, no broken line

    calls.clear()
    result = runner.invoke(app, caption_args(footage, captioner_dir, out))
    assert result.exit_code == 0 and calls == [] and lines_of(out) == expected


def test_every_n_frames_and_a_prompt(runner, footage: Path, captioner_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "every.jsonl"
    args = [*caption_args(footage / "walk.avi", captioner_dir, out), "--every", "8", "--prompt", "what is happening ?"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert [line["frame"] for line in lines_of(out)] == [8, 16, 24, 32, 40]


def test_read_jsonl_drops_a_cut_line_and_refuses_a_broken_one(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    with append_jsonl(path) as append:
        append({"a": 1})
        append({"b": "é"})
    path.write_bytes(path.read_bytes() + b'{"c": ')
    assert read_jsonl(path) == [{"a": 1}, {"b": "é"}]
    assert path.read_bytes().endswith(b"}\n")  # the cut line is gone from the file too
    path.write_text('{"a": 1}\nnot json\n{"b": 2}\n')
    with pytest.raises(CallmError, match="line 2 is not JSON"):
        read_jsonl(path)


def test_bad_inputs_are_one_line(runner, footage: Path, captioner_dir: Path, llm_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.jsonl"
    assert_user_error(runner.invoke(app, caption_args(footage, llm_dir, out)), "is not a BLIP-2 model")
    offline = caption_args(footage, Path("callm-tests/no-such-blip2"), out)
    assert_user_error(runner.invoke(app, offline), "config.json of hub repository callm-tests/no-such-blip2")
    out.write_text('{"video": "x"}\n')
    assert_user_error(runner.invoke(app, caption_args(footage, captioner_dir, out)), "not a callm caption file")
    assert_user_error(runner.invoke(app, [*caption_args(footage, captioner_dir, tmp_path / "d.jsonl"), "--fps", "0"]),
                      "--fps must be a positive number")  # fmt: skip
