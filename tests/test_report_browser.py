"""The scan report in a real headless Chromium: the plots and thumbnails must actually render.

Skipped where Chromium is absent; `.ci/run` installs Debian's `chromium` so CI runs it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from synthetic import make_frames, write_video

from callm.cli import app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
# Flags for a sandbox with no network and no desktop session: no background traffic, no GPU, no first-run UI.
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
]  # fmt: skip


def chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)  # type: ignore[list-item]


@pytest.fixture(scope="module")
def scanned(runner_module, weights_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cams")
    write_video(folder / "gate.avi", make_frames(64, seed=11, intruder=(20, 44)))
    write_video(folder / "lobby.avi", make_frames(64, seed=12, intruder=(8, 30)))
    (folder / "broken.mp4").write_text("not a video")
    run = tmp_path_factory.mktemp("run")
    args = ["scan", str(folder), "--out", str(run), "-w", str(weights_dir), "--device", "cpu", "--threshold", "0"]
    result = runner_module.invoke(app, args)
    assert result.exit_code == 1, result.output  # broken.mp4
    return run


@pytest.fixture(scope="module")
def runner_module():
    from typer.testing import CliRunner

    return CliRunner()


def test_report_renders_curves_thumbnails_and_failures(scanned: Path, tmp_path: Path) -> None:
    page = scanned / "report.html"
    dom = chromium(page, tmp_path / "profile-dom", "--dump-dom").stdout
    assert len(re.findall(r'<tr class="video"', dom)) == 2
    assert len(re.findall(r'<polyline class="score"', dom)) == 2
    assert len(re.findall(r'<line class="threshold"', dom)) == 2
    # Each event plays its clip in place, its peak-frame still shown until it does.
    stills = re.findall(r'<video class="clip" src="clips/[^"]+\.mp4" poster="data:image/jpeg;base64,', dom)
    assert len(stills) >= 2  # at least one event per video at threshold 0
    assert len(re.findall(r'<tr class="failed"', dom)) == 1 and "broken.mp4" in dom

    shot = tmp_path / "shot.png"
    chromium(page, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1400,1000")
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[:2] == (1000, 1400)
    b, g, r = (image[..., i].astype(int) for i in range(3))
    # The score curves are drawn in blue (#1f5fd6): two polylines leave hundreds of such pixels.
    curve = (b > 180) & (r < 80) & (g > 60) & (g < 130)
    assert curve.sum() > 300, curve.sum()
    # The stills are grey camera frames: many mid-grey pixels the page itself (white, dark text) lacks.
    grey = (np.abs(r - g) < 12) & (np.abs(g - b) < 12) & (g > 70) & (g < 170)
    assert grey.sum() > 5000, grey.sum()
    # And each carries its red event box (nothing else on the page is red).
    red = (r > 200) & (g < 70) & (b < 70)
    assert red.sum() > 50, red.sum()


def test_the_reports_clips_play_in_chromium(scanned: Path, tmp_path: Path) -> None:
    # A page beside the report loads each clip the report links and writes what the browser decoded.
    clips = re.findall(r'<video class="clip" src="([^"]+)"', (scanned / "report.html").read_text())
    assert clips
    probe = scanned / "probe.html"
    probe.write_text(
        "<html><body><pre id='out'></pre><script>"
        f"var clips = {clips!r}, out = document.getElementById('out');"
        "clips.forEach(function (src) { var v = document.createElement('video'); v.muted = true; v.src = src;"
        "v.onloadeddata = function () { out.textContent += src + ' ' + v.videoWidth + 'x' + v.videoHeight + ' '"
        " + v.duration.toFixed(1) + ';'; };"
        "v.onerror = function () { out.textContent += src + ' error;'; }; document.body.appendChild(v); });"
        "</script></body></html>"
    )
    dom = chromium(probe, tmp_path / "profile-clips", "--virtual-time-budget=10000", "--dump-dom").stdout
    played = dict(re.findall(r"(clips/\S+\.mp4) (\d+x\d+ [\d.]+);", dom))
    assert set(played) == set(clips), dom
    assert all(value.startswith("64x48 ") and float(value.split()[1]) > 0 for value in played.values()), played
