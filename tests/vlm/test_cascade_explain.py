"""`callm detect --explain`: stage 2 sees exactly the gated events, and stays unloaded without the flag."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import assert_user_error
from synthetic import make_frames, write_video

from callm.cli import app
from callm.results import read_detection
from callm.vlm.explain import Explainer

# A threshold below the intruder's peak, and no merging: several events, so counting means something.
MANY_EVENTS = ["--threshold", "20", "--max-gap", "0", "--min-event", "1", "--device", "cpu", "--dtype", "fp32"]


def detect(runner, clip: Path, weights_dir: Path, out: Path, *extra: str):
    args = ["detect", str(clip), "-w", str(weights_dir), "--json", str(out), *MANY_EVENTS, *extra]
    return runner.invoke(app, args)


@pytest.fixture(scope="module")
def two_intruders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """128 frames of one scene with two separate intruders: at least two events for stage 2."""
    first = make_frames(128, seed=10, intruder=(20, 36))
    second = make_frames(128, seed=10, intruder=(84, 100))
    first[64:] = second[64:]  # same seed, same walkers: only the intruder differs
    return write_video(tmp_path_factory.mktemp("two") / "two.avi", first)


@pytest.fixture
def counted_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[int, ...], list]]:
    """Records the frames' shape and the boxes of every stage-2 call while still running the real model."""
    calls: list[tuple[tuple[int, ...], list]] = []
    real = Explainer.explain_sampled

    def counting(self, frames, timestamps, boxes=None, question=None):
        calls.append((tuple(frames.shape), [list(b) for b in boxes]))
        return real(self, frames, timestamps, boxes, question)

    monkeypatch.setattr(Explainer, "explain_sampled", counting)
    return calls


def test_every_gated_event_gets_one_call_with_a_verdict_and_an_explanation(
    runner, two_intruders: Path, weights_dir: Path, lavis_config: Path, tmp_path: Path, counted_calls
) -> None:
    out = tmp_path / "d.json"
    result = detect(runner, two_intruders, weights_dir, out, "--explain", "--vlm", str(lavis_config))
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    events = data["events"]
    assert len(events) >= 2
    assert data["vlm_calls"] == len(events) == len(counted_calls)
    for event in events:
        assert event["verdict"] in ("anomaly", "normal")
        assert isinstance(event["explanation"], str)
        # The model saw only gated windows that overlap this event, and frames sampled from inside them.
        assert event["vlm_windows"] and set(event["vlm_windows"]) <= set(data["gated_window_starts"])
        first, last = min(event["vlm_windows"]), max(event["vlm_windows"]) + 16
        assert all(first <= f < last for f in event["vlm_frames"])
        assert any(s <= event["end_frame"] and s + 16 > event["start_frame"] for s in event["vlm_windows"])
    # Frames reach stage 2 at the video's own size and in colour, each with its box from the event's track.
    assert all(shape[1:] == (48, 64, 3) for shape, _ in counted_calls)
    tracked = read_detection(out).events
    for event, data_event, (_, boxes) in zip(tracked, events, counted_calls, strict=True):
        assert event.tracks and boxes == [event.box_at(f) for f in data_event["vlm_frames"]]


def test_window_grouping_calls_once_per_gated_window_of_each_event(
    runner, two_intruders: Path, weights_dir: Path, lavis_config: Path, tmp_path: Path, counted_calls
) -> None:
    out = tmp_path / "d.json"
    args = ["--explain", "--vlm", str(lavis_config), "--vlm-calls", "window"]
    result = detect(runner, two_intruders, weights_dir, out, *args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    expected = sum(
        sum(1 for s in data["gated_window_starts"] if s <= e["end_frame"] and s + 16 > e["start_frame"])
        for e in data["events"]
    )
    assert data["vlm_calls"] == expected == len(counted_calls)
    assert expected > len(data["events"])  # otherwise this test would not tell the groupings apart


def test_explain_needs_a_config(runner, clip_dir: Path, weights_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CALLM_VLM_CONFIG", raising=False)
    result = runner.invoke(app, ["detect", str(clip_dir / "normal.avi"), "-w", str(weights_dir), "--explain"])
    assert_user_error(result, "--vlm")


def test_a_broken_config_is_one_line(runner, clip_dir: Path, weights_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[vlm]\nvision = "nowhere.pth"\nqformer = "q.pth"\nvideo_llama = "v.pth"\nllm = "llm"\n')
    result = runner.invoke(
        app, ["detect", str(clip_dir / "normal.avi"), "-w", str(weights_dir), "--explain", "--vlm", str(config)]
    )
    assert_user_error(result, "nowhere.pth")


def test_detect_without_explain_never_imports_stage_2(clip_dir: Path, weights_dir: Path) -> None:
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from callm.cli import app\n"
        f"r = CliRunner().invoke(app, ['detect', {str(clip_dir / 'intruder.avi')!r}, '-w', {str(weights_dir)!r},"
        " '--device', 'cpu'])\n"
        "assert r.exit_code == 0, r.output\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('callm.vlm', 'transformers')))\n"
        "print(loaded)\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_missing_stage2_weights_fail_before_stage1_scores(
    runner, clip_dir: Path, weights_dir: Path, lavis_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re

    from callm.cascade import Stage1

    config = tmp_path / "broken.toml"
    text = lavis_config.read_text()
    config.write_text(re.sub(r'(?m)^video_llama = ".*"$', f'video_llama = "{tmp_path / "gone.pth"}"', text))
    assert config.read_text() != text
    monkeypatch.setattr(Stage1, "detect", lambda *a, **k: pytest.fail("scored before loading stage 2"))
    args = ["detect", str(clip_dir / "intruder.avi"), "-w", str(weights_dir), "--explain", "--vlm", str(config)]
    result = runner.invoke(app, [*args, "--device", "cpu", "--dtype", "fp32"])
    assert_user_error(result, "gone.pth")
