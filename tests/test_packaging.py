"""callm as installed from its wheel: the package works outside its clone, with the shipped weights inside it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    # The repository is copied first, so the build's own files (build/, *.egg-info) never land in the clone.
    source = tmp_path_factory.mktemp("source") / "callm"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".venv", ".git", "*.egg-info", "build", "__pycache__"))
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(dist),
        str(source),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    (found,) = dist.glob("callm-*.whl")
    return found


def test_the_wheel_carries_the_shipped_weights(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("ped2", "ped2-vador", "ped2-vador/encoder"):
        assert any(n.startswith(f"callm/shipped/{folder}/") and n.endswith(".safetensors") for n in names), folder
    assert not any("/checkpoint/" in n or "/frame-cache/" in n for n in names)


def test_callm_installed_from_the_wheel_detects_from_another_folder(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(REPO / "examples" / "ped2_test04.mp4", elsewhere / "clip.mp4")
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("CALLM_WEIGHTS", None)
    where = subprocess.run(
        [sys.executable, "-c", "import callm; print(callm.__file__)"], cwd=elsewhere, env=env,
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert where.stdout.strip().startswith(str(site))  # the installed copy, not the clone
    result = subprocess.run(
        [sys.executable, "-m", "callm.cli", "detect", "clip.mp4", "--json", "out.json", "--device", "cpu"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads((elsewhere / "out.json").read_text())
    assert data["events"] and Path(data["video"]).name == "clip.mp4"


def test_every_package_of_callm_is_in_the_wheel_list() -> None:
    """pyproject lists the packages by hand: a new sub-package left out would be missing from an installed callm."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "callm").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert found <= listed, sorted(found - listed)
