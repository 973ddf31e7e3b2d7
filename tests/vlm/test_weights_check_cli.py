"""`callm weights check` through the CLI: what a file is, and exit 0 only when callm can load it."""

from __future__ import annotations

from pathlib import Path

from callm.cli import app
from callm.vlm.config import load_config

REPO = Path(__file__).resolve().parents[2]


def test_check_a_loadable_autoencoder(runner, weights_dir: Path) -> None:
    result = runner.invoke(app, ["weights", "check", str(weights_dir)])
    assert result.exit_code == 0, result.output
    assert "callm stage-1 autoencoder" in result.stdout and "loadable: " in result.stdout


def test_check_a_video_llama_checkpoint_against_its_config(runner, video_llama_file: Path, lavis_config: Path) -> None:
    # The tiny checkpoint does not fit the published (768-wide) shapes callm assumes without a config ...
    result = runner.invoke(app, ["weights", "check", str(video_llama_file)])
    assert result.exit_code == 1
    assert "Video-LLaMA" in result.stdout and "NOT loadable" in result.stdout
    # ... and loads once the config says which architecture it has.
    result = runner.invoke(app, ["weights", "check", str(video_llama_file), "--vlm", str(lavis_config)])
    assert result.exit_code == 0, result.output
    assert "loadable: " in result.stdout


def test_check_refuses_what_it_cannot_load(runner, tmp_path: Path) -> None:
    junk = tmp_path / "model.pth"
    junk.write_bytes(b"not a checkpoint at all")
    result = runner.invoke(app, ["weights", "check", str(junk)])
    assert result.exit_code == 1
    assert "NOT loadable" in result.stdout and "Traceback" not in result.output


def test_check_a_missing_path_is_one_line(runner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["weights", "check", str(tmp_path / "nothing")])
    assert result.exit_code == 1 and result.stderr.strip().startswith("callm: error:")


def test_the_shipped_example_config_parses() -> None:
    config = load_config(REPO / "examples" / "vlm.toml")
    assert config.template == "llama2" and config.focus == "crop" and config.frames == 8
