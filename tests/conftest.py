"""Shared fixtures: tiny models, short synthetic videos, and one trained weights folder for the whole session."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("CALLM_WEIGHTS", None)  # every test names its weights; none may fall back to the user's

from pathlib import Path

import cv2
import pytest
import torch
from helpers import INTRUDER, TINY
from synthetic import make_frames, write_video
from typer.testing import CliRunner

from callm.ae.model import AEConfig
from callm.cli import app

# The models are tiny: a second thread only fights the other jobs on the machine for the CPU.
torch.set_num_threads(1)
cv2.setNumThreads(1)


@pytest.fixture
def tiny_config() -> AEConfig:
    return TINY


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="session")
def train_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four normal videos, 64 frames of 48x64 each; one is held out for calibration."""
    folder = tmp_path_factory.mktemp("normal")
    for seed in range(4):
        write_video(folder / f"normal{seed}.avi", make_frames(64, seed=seed))
    return folder


TRAIN_ARGS = ["--size", "32", "--widths", "4,8", "--crop", "0", "--device", "cpu", "--dtype", "fp32"]


@pytest.fixture(scope="session")
def trained(train_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """``callm train-ae`` run once: (weights folder, CliRunner result)."""
    out = tmp_path_factory.mktemp("weights") / "tiny"
    result = CliRunner().invoke(app, ["train-ae", str(train_dir), "--out", str(out), "--steps", "30", *TRAIN_ARGS])
    assert result.exit_code == 0, result.output
    return out, result


@pytest.fixture(scope="session")
def weights_dir(trained) -> Path:
    return trained[0]


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Videos to score: a normal one and one with an intruder, from a scene seed the model never saw."""
    folder = tmp_path_factory.mktemp("clips")
    write_video(folder / "normal.avi", make_frames(64, seed=10))
    write_video(folder / "intruder.avi", make_frames(64, seed=10, intruder=INTRUDER))
    return folder
