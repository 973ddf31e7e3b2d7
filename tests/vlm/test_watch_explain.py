"""`callm watch --explain`: stage 2 explains closed events on its own thread, and never holds scoring back."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from synthetic import make_frames, write_video

import callm.live.watch
from callm.cli import app
from callm.vlm.explain import Explainer

# A low threshold and no merging: several events from one intruder, so a queue of one overflows.
MANY_EVENTS = ["--threshold", "20", "--max-gap", "0", "--min-event", "1", "--device", "cpu", "--dtype", "fp32"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four intruders, far apart in time, in one scene: four events."""
    frames = make_frames(200, seed=10)
    for start in (20, 65, 110, 155):
        frames[start : start + 12] = make_frames(200, seed=10, intruder=(start, start + 12))[start : start + 12]
    return write_video(tmp_path_factory.mktemp("watch") / "four.mp4", frames)


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]


def test_each_closed_event_gets_its_verdict_in_a_later_record(
    runner, clip: Path, weights_dir: Path, lavis_config: Path, tmp_path: Path
) -> None:
    out = tmp_path / "w"
    args = ["watch", str(clip), "--out", str(out), "-w", str(weights_dir), "--explain", "--vlm", str(lavis_config)]
    result = runner.invoke(app, [*args, *MANY_EVENTS])
    assert result.exit_code == 0, result.output
    lines = records(out)
    closes = [r for r in lines if r["state"] == "close" and r.get("explanation_state") == "pending"]
    explained = {r["id"]: r for r in lines if r.get("explanation_state") == "done"}
    assert closes and set(explained) == {r["id"] for r in closes}
    for record in explained.values():
        assert record["verdict"] in ("anomaly", "normal") and isinstance(record["explanation"], str)
        assert record["clip"]  # the later record is the whole event again, not just the verdict


def test_a_full_stage2_queue_marks_events_unexplained_instead_of_waiting(
    runner, clip: Path, weights_dir: Path, lavis_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(callm.live.watch, "EXPLAIN_QUEUE", 1)
    release = threading.Event()
    real = Explainer.explain_sampled

    def slow(self, frames, timestamps, boxes=None, question=None):
        release.wait(3.0)  # stage 2 busy: the queue fills behind it
        return real(self, frames, timestamps, boxes, question)

    monkeypatch.setattr(Explainer, "explain_sampled", slow)
    out = tmp_path / "w"
    args = ["watch", str(clip), "--out", str(out), "-w", str(weights_dir), "--explain", "--vlm", str(lavis_config)]
    result = runner.invoke(app, [*args, *MANY_EVENTS])
    release.set()
    assert result.exit_code == 0, result.output
    states: dict[str, str] = {}
    for record in records(out):
        states[record["id"]] = record.get("explanation_state") or ""
    assert len(states) >= 3, states
    assert "unexplained" in states.values() and "done" in states.values()
