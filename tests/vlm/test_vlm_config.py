"""The config file: paths relative to it, hub ids kept, and one clear line for each mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
from vlm_tiny import write_config

from callm.errors import CallmError
from callm.vlm.config import VLMConfig, load_config

SOURCES = {"vision": "Salesforce/blip2-flan-t5-xxl", "qformer": "Salesforce/blip2-flan-t5-xxl"}


def test_relative_paths_follow_the_config_and_hub_ids_stay(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "vl.pth").touch()
    config = load_config(
        write_config(
            tmp_path / "vlm.toml",
            {**SOURCES, "video_llama": "weights/vl.pth", "llm": "meta-llama/Llama-2-7b-chat-hf", "frames": 4},
        )
    )
    assert config.vision == "Salesforce/blip2-flan-t5-xxl"
    assert config.video_llama == str(tmp_path / "weights" / "vl.pth")
    assert config.llm == "meta-llama/Llama-2-7b-chat-hf"
    # The system line defaults to Video-LLaMA's video demo's.
    assert config.system == "video-demo" and config.system_text.startswith("You are able to understand the visual")
    assert (config.frames, config.template, config.dtype, config.focus, config.sample) == (
        4,
        "llama2",
        "bf16",
        "crop",
        False,
    )


def test_a_missing_weights_file_stays_a_path_so_the_loader_names_it(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "vlm.toml", {**SOURCES, "video_llama": "vl.pth", "llm": "x/y"}))
    assert config.video_llama == str(tmp_path / "vl.pth")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"colour": "red"}, r"unknown setting\(s\) in \[vlm\]: colour"),
        ({"template": "alpaca"}, "template must be one of vicuna, llama2"),
        ({"dtype": "int4"}, "dtype must be one of bf16, fp16, fp32"),
        ({"focus": "zoom"}, "focus must be one of crop, draw, none"),
        ({"frames": True}, "frames must be an integer, got True"),
        ({"frames": 0}, "frames must be at least 1"),
        ({"temperature": "hot"}, "temperature must be a number, got 'hot'"),
        ({"vision_config": "big"}, "vision_config must be a table"),
    ],
)
def test_mistakes_are_one_line_errors(tmp_path: Path, settings: dict[str, object], message: str) -> None:
    path = write_config(tmp_path / "vlm.toml", {**SOURCES, "video_llama": "vl.pth", "llm": "x/y", **settings})
    with pytest.raises(CallmError, match=message):
        load_config(path)


def test_missing_sources_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(CallmError, match=r"\[vlm\] must name video_llama, llm"):
        load_config(write_config(tmp_path / "a.toml", SOURCES))
    (tmp_path / "b.toml").write_text("[vlm\n")
    with pytest.raises(CallmError, match="not a valid TOML file"):
        load_config(tmp_path / "b.toml")
    (tmp_path / "c.toml").write_text("[other]\n")
    with pytest.raises(CallmError, match=r"no \[vlm\] table"):
        load_config(tmp_path / "c.toml")
    with pytest.raises(CallmError, match="config file not found"):
        load_config(tmp_path / "absent.toml")


def test_configs_built_in_code_are_checked_too() -> None:
    with pytest.raises(CallmError, match="top_p must be in"):
        VLMConfig("a", "b", "c", "d", top_p=0)
