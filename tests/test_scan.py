"""Batch folder scans: outputs, fault isolation, resuming, kills, parallel and Ray engines, the HTML report."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import assert_user_error
from synthetic import make_frames, write_frame_folder, write_video

from callm.cascade import DetectOptions, Stage1, Stage1Recipe
from callm.cli import app
from callm.errors import CallmError
from callm.results import Detection
from callm.scan import SUMMARY, VIDEOS_DIR, scan

SCAN_ARGS = ["--device", "cpu", "--dtype", "fp32"]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Nested camera folders: three good videos, a frame folder, a truncated file and a text file named .mp4."""
    root = tmp_path_factory.mktemp("archive")
    write_video(root / "cam1.avi", make_frames(40, seed=1))
    write_video(root / "nested" / "deeper" / "cam2.mp4", make_frames(40, seed=2, intruder=(10, 30)))
    write_video(root / "nested" / "cam3.avi", make_frames(36, seed=3))
    write_frame_folder(root / "nested" / "frames4", make_frames(32, seed=4))
    good = write_video(root / "broken.avi", make_frames(40, seed=5)).read_bytes()
    (root / "broken.avi").write_bytes(good[: len(good) // 3])
    (root / "notes.mp4").write_text("this is not a video\n")
    return root


GOOD = {"cam1.avi", "cam2.mp4", "cam3.avi", "frames4"}
BAD = {"broken.avi", "notes.mp4"}


@pytest.fixture
def detect_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = Stage1.detect

    def counting(self, path, on_frames=None):
        calls.append(Path(path).name)
        return real(self, path, on_frames)

    monkeypatch.setattr(Stage1, "detect", counting)
    return calls


def summary_lines(run: Path) -> list[dict]:
    text = (run / SUMMARY).read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def by_name(lines: list[dict]) -> dict[str, dict]:
    return {Path(line["path"]).name: line for line in lines}


def test_scan_isolates_bad_files_and_a_rerun_does_no_work(
    runner, archive: Path, weights_dir: Path, tmp_path: Path, detect_calls: list[str]
) -> None:
    run = tmp_path / "run"
    result = runner.invoke(app, ["scan", str(archive), "--out", str(run), "-w", str(weights_dir), *SCAN_ARGS])
    assert result.exit_code == 1, result.output  # some files failed
    assert "Traceback" not in result.output
    records = by_name(summary_lines(run))
    assert set(records) == GOOD | BAD
    for name in GOOD:
        record = records[name]
        assert record["status"] == "ok" and record["error"] is None
        data = json.loads((run / record["json"]).read_text())
        assert data["num_frames"] == record["num_frames"] and len(data["scores"]) == data["num_frames"]
        assert {"video", "fps", "threshold", "events", "windows_total", "windows_gated"} <= set(data)
        # Every event has its thumbnail and its clip, beside the JSON in the run folder.
        for kind in ("thumbnails", "clips"):
            assert len(data[kind]) == len(data["events"]) and all((run / f).stat().st_size for f in data[kind])
    assert "truncated" in records["broken.avi"]["error"]
    assert "not a readable video" in records["notes.mp4"]["error"]
    assert all(records[n]["status"] == "error" for n in BAD)
    assert len(list((run / VIDEOS_DIR).glob("*.json"))) == len(GOOD)
    csv_lines = (run / "summary.csv").read_text().splitlines()
    assert csv_lines[0].startswith("path,status,error") and len(csv_lines) == 1 + len(GOOD | BAD)
    assert (run / "report.html").is_file()
    assert sorted(detect_calls) == sorted(GOOD | BAD)

    detect_calls.clear()
    again = runner.invoke(app, ["scan", str(archive), "--out", str(run), "-w", str(weights_dir), *SCAN_ARGS])
    assert again.exit_code == 1  # the failures are still there, and still reported
    assert detect_calls == []  # but nothing was scanned again
    assert len(summary_lines(run)) == len(GOOD | BAD)

    retry = runner.invoke(
        app, ["scan", str(archive), "--out", str(run), "-w", str(weights_dir), "--retry-errors", *SCAN_ARGS]
    )
    assert retry.exit_code == 1
    assert sorted(detect_calls) == sorted(BAD)  # only the failed files are tried again
    assert len(summary_lines(run)) == len(GOOD | BAD)  # replaced, not duplicated


def two_videos(tmp_path: Path) -> Path:
    """A folder ``in`` with two short videos, a.avi and b.avi."""
    folder = tmp_path / "in"
    write_video(folder / "a.avi", make_frames(32, seed=1))
    write_video(folder / "b.avi", make_frames(32, seed=2))
    return folder


def test_a_changed_file_is_scanned_again(runner, weights_dir: Path, tmp_path: Path, detect_calls: list[str]) -> None:
    folder = two_videos(tmp_path)
    run = tmp_path / "run"
    args = ["scan", str(folder), "--out", str(run), "-w", str(weights_dir), *SCAN_ARGS]
    assert runner.invoke(app, args).exit_code == 0
    write_video(folder / "b.avi", make_frames(40, seed=3))  # new size and mtime
    detect_calls.clear()
    assert runner.invoke(app, args).exit_code == 0
    assert detect_calls == ["b.avi"]
    assert by_name(summary_lines(run))["b.avi"]["num_frames"] == 40


def test_a_video_an_explainer_cannot_handle_is_recorded_and_the_scan_goes_on(weights_dir: Path, tmp_path: Path) -> None:
    folder = two_videos(tmp_path)
    seen: list[str] = []

    def explain(detection: Detection) -> None:
        seen.append(Path(detection.video).name)
        if detection.video.endswith("a.avi"):
            raise CallmError(f"{detection.video}: the explainer cannot read it")
        detection.settings["explained"] = True

    recipe = Stage1Recipe(str(weights_dir), DetectOptions(), "cpu", "fp32")
    summary = scan([folder], tmp_path / "run", recipe, explainers=[explain])
    assert seen == ["a.avi", "b.avi"] and summary.failed == 1 and summary.failures[0][1].endswith("cannot read it")
    records = by_name(summary_lines(tmp_path / "run"))
    assert records["a.avi"]["status"] == "error" and records["b.avi"]["status"] == "ok"
    assert json.loads((tmp_path / "run" / records["b.avi"]["json"]).read_text())["settings"]["explained"]


def test_a_line_cut_by_a_kill_is_dropped_and_redone(runner, weights_dir: Path, tmp_path: Path) -> None:
    folder = two_videos(tmp_path)
    run = tmp_path / "run"
    args = ["scan", str(folder), "--out", str(run), "-w", str(weights_dir), *SCAN_ARGS]
    assert runner.invoke(app, args).exit_code == 0
    lines = (run / SUMMARY).read_text().splitlines()
    (run / SUMMARY).write_text(lines[0] + "\n" + lines[1][:25])  # the second line half written
    assert runner.invoke(app, args).exit_code == 0
    assert sorted(by_name(summary_lines(run))) == ["a.avi", "b.avi"]


def test_a_scan_killed_midway_completes_on_rerun_without_duplicates(weights_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    for i in range(8):
        write_video(folder / f"v{i}.avi", make_frames(160, seed=i))
    run = tmp_path / "run"
    command = [sys.executable, "-m", "callm.cli", "scan", str(folder), "--out", str(run), "-w", str(weights_dir)]
    command += [*SCAN_ARGS, "--stride", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (run / SUMMARY).is_file() and (run / SUMMARY).read_text().count("\n") >= 2:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the scan finished before it could be killed; make the videos longer"
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = (run / SUMMARY).read_text().count("\n")
    assert 2 <= done_before < 8
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    lines = summary_lines(run)
    assert len(lines) == 8 and len({line["path"] for line in lines}) == 8
    assert all(line["status"] == "ok" for line in lines)
    assert len(list((run / VIDEOS_DIR).glob("*.json"))) == 8
    assert not list(run.rglob("*.tmp"))


def _comparable(run: Path) -> dict[str, tuple]:
    return {
        Path(r["path"]).name: (r["status"], r.get("events"), r.get("peak_score"), r.get("num_frames"))
        for r in summary_lines(run)
    }


def test_two_workers_give_the_same_summary_as_one(runner, archive: Path, weights_dir: Path, tmp_path: Path) -> None:
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    base = ["scan", str(archive), "-w", str(weights_dir), *SCAN_ARGS]
    assert runner.invoke(app, [*base, "--out", str(serial)]).exit_code == 1
    assert runner.invoke(app, [*base, "--out", str(parallel), "--workers", "2"]).exit_code == 1
    assert _comparable(parallel) == _comparable(serial)


def test_the_ray_engine_gives_the_same_summary_as_local(
    runner, archive: Path, weights_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("ray")
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    base = ["scan", str(archive), "-w", str(weights_dir), *SCAN_ARGS]
    assert runner.invoke(app, [*base, "--out", str(local)]).exit_code == 1
    result = runner.invoke(app, [*base, "--out", str(on_ray), "--engine", "ray"])
    assert result.exit_code == 1, result.output
    assert _comparable(on_ray) == _comparable(local)
    for name, record in by_name(summary_lines(on_ray)).items():
        if record["status"] == "ok":
            assert (on_ray / record["json"]).is_file(), name


def test_detect_is_for_one_video_and_points_a_folder_to_scan(runner, archive: Path, weights_dir: Path) -> None:
    assert_user_error(runner.invoke(app, ["detect", str(archive), "-w", str(weights_dir)]), "callm scan")
    result = runner.invoke(app, ["scan", str(archive), "-w", str(weights_dir)])
    assert result.exit_code == 2 and "--out" in result.output  # scan's --out is required by the command itself


def test_report_rebuilds_from_the_run_folder(runner, archive: Path, weights_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    runner.invoke(app, ["scan", str(archive), "--out", str(run), "-w", str(weights_dir), *SCAN_ARGS])
    (run / "report.html").unlink()
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    page = (run / "report.html").read_text()
    assert page.count('<tr class="video"') == len(GOOD) and page.count('<tr class="failed"') == len(BAD)
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing to fetch
    # Each curve shows the threshold and, below it, the level events last above (the weights' event hold).
    assert page.count('class="threshold"') == len(GOOD) and page.count('class="hold"') == len(GOOD)


def test_the_curve_draws_the_hold_only_below_the_threshold() -> None:
    from callm.report.html import CURVE_HEIGHT, curve_svg

    scores = [0.0, 1.0, 3.0, 1.0]
    assert 'class="hold"' in curve_svg(scores, 2.0, [], hold=0.5)
    assert 'class="hold"' not in curve_svg(scores, 2.0, [], hold=2.0)  # no hold: events end at the threshold
    assert 'class="hold"' not in curve_svg(scores, 2.0, [])  # results from before the hold
    low = curve_svg(scores, 2.0, [], hold=-4.0)  # a hold below every score still lies inside the picture
    y = float(low.split('class="hold"')[1].split('y1="')[1].split('"')[0])
    assert 0 <= y <= CURVE_HEIGHT


def test_a_rerun_with_other_settings_is_refused(
    runner, weights_dir: Path, tmp_path: Path, detect_calls: list[str]
) -> None:
    """Results of another threshold, stride or model must not sit silently beside the old ones."""
    folder = two_videos(tmp_path)
    run = tmp_path / "run"
    args = ["scan", str(folder), "--out", str(run), "-w", str(weights_dir), *SCAN_ARGS]
    assert runner.invoke(app, args).exit_code == 0
    for extra, named in ((["--threshold", "5"], "threshold"), (["--stride", "4"], "stride")):
        result = runner.invoke(app, [*args, *extra])
        assert_user_error(result, "it was scanned with other " + named, "another --out")
    other = tmp_path / "other-weights"
    shutil.copytree(weights_dir, other)
    meta = json.loads((other / "ae.json").read_text())
    meta["calibration"]["threshold"] += 1
    (other / "ae.json").write_text(json.dumps(meta))
    other_args = ["scan", str(folder), "--out", str(run), "-w", str(other), *SCAN_ARGS]
    assert_user_error(runner.invoke(app, other_args), "it was scanned with other weights")
    detect_calls.clear()
    assert runner.invoke(app, args).exit_code == 0  # the same settings again: nothing to redo
    assert detect_calls == []


def test_a_deleted_or_damaged_result_is_scanned_again(
    runner, weights_dir: Path, tmp_path: Path, detect_calls: list[str]
) -> None:
    folder = two_videos(tmp_path)
    run = tmp_path / "run"
    args = ["scan", str(folder), "--out", str(run), "-w", str(weights_dir), *SCAN_ARGS]
    assert runner.invoke(app, args).exit_code == 0
    records = by_name(summary_lines(run))
    (run / records["a.avi"]["json"]).unlink()
    (run / records["b.avi"]["json"]).write_text('{"video": "b.avi", "scor')
    report = runner.invoke(app, ["report", str(run)])  # the report says so instead of failing
    assert report.exit_code == 0, report.output
    assert (run / "report.html").read_text().count("result file is missing or damaged") == 2
    detect_calls.clear()
    assert runner.invoke(app, args).exit_code == 0
    assert sorted(detect_calls) == ["a.avi", "b.avi"]
    lines = summary_lines(run)
    assert len(lines) == 2 and all(json.loads((run / r["json"]).read_text())["scores"] for r in lines)


def test_a_second_scan_into_the_same_folder_is_refused(runner, weights_dir: Path, tmp_path: Path) -> None:
    import fcntl

    folder = two_videos(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "scan.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 4242 on camhost, since 2026-01-01 00:00:00\n")
        held.flush()
        args = ["scan", str(folder), "--out", str(run), "-w", str(weights_dir), *SCAN_ARGS]
        assert_user_error(runner.invoke(app, args), "another scan is writing to this folder", "pid 4242")
    assert not (run / SUMMARY).exists()


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for its (dead) parent to be reaped by init."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="counts processes through /proc")
def test_workers_die_with_a_killed_scan(weights_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    for i in range(4):
        write_video(folder / f"v{i}.avi", make_frames(400, seed=i))
    command = [sys.executable, "-m", "callm.cli", "scan", str(folder), "--out", str(tmp_path / "run")]
    command += ["-w", str(weights_dir), *SCAN_ARGS, "--stride", "1", "--workers", "2"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while time.monotonic() < deadline and len(workers) < 2 and process.poll() is None:
        workers = _children(process.pid)
        time.sleep(0.1)
    assert len(workers) >= 2, "the scan's workers never started"
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_running(w) for w in workers):
        time.sleep(0.1)
    alive = [w for w in workers if _running(w)]
    assert alive == [], "workers outlived the scan that started them"
