"""`callm features --encoder videollama`: the stage-2 encoders (tiny models) as the VADor's feature extractor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_user_error
from typer.testing import CliRunner
from vlm_tiny import TINY_QFORMER

from callm.cli import app
from callm.vador.features import VideoLlamaClipEncoder
from callm.vlm.config import load_config


@pytest.mark.parametrize(("tokens", "width"), [("mean", 1), ("all", 32)])
def test_videollama_features(tokens: str, width: int, lavis_config: Path, clip_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / tokens
    result = CliRunner().invoke(
        app,
        ["features", str(clip_dir), "--encoder", "videollama", "--vlm", str(lavis_config), "--tokens", tokens,
         "--clip-frames", "4", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    index = json.loads((out / "index.json").read_text())
    assert index["encoder"]["kind"] == "videollama" and index["encoder"]["tokens"] == tokens
    assert index["encoder"]["frames"] == 4
    assert index["dim"] == width * TINY_QFORMER["hidden_size"]  # the video Q-Former's width, before llama_proj
    assert [v["clips"] for v in index["videos"]] == [[[0, 16], [16, 32], [32, 48], [48, 64]]] * 2
    assert np.isfinite(np.load(out / "intruder.npy")).all()


def test_videollama_mean_is_the_mean_of_all_tokens(lavis_config: Path, window: np.ndarray) -> None:
    config = load_config(lavis_config)
    mean = VideoLlamaClipEncoder.from_config(config, "mean", 8).encode(np.repeat(window[None, ..., None], 3, -1))
    every = VideoLlamaClipEncoder.from_config(config, "all", 8).encode(np.repeat(window[None, ..., None], 3, -1))
    assert np.allclose(mean, every.reshape(1, 32, -1).mean(1), atol=1e-5)


def test_videollama_needs_a_config(clip_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["features", str(clip_dir), "--encoder", "videollama", "--out", str(tmp_path)])
    assert_user_error(result, "--vlm")
