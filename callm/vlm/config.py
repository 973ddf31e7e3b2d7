"""The stage-2 config file: one TOML table that names the weights and the settings, so users type one path.

```toml
[vlm]
vision = "weights/eva_vit_g.pth"                       # LAVIS ViT-g file, or an HF BLIP-2 folder / hub id
qformer = "weights/blip2_pretrained_flant5xxl.pth"     # LAVIS Q-Former file, or an HF BLIP-2 folder / hub id
video_llama = "weights/VL_LLaMA_2_7B_Finetuned.pth"    # Video-LLaMA checkpoint (video Q-Former + llama_proj)
llm = "weights/llama-2-7b-chat-hf"                     # HF folder or hub id of the matching LLM
template = "llama2"                                    # or "vicuna"
dtype = "bf16"
```

Relative paths are relative to the config file. The optional tables ``[vlm.vision_config]``,
``[vlm.qformer_config]`` and ``[vlm.video_qformer_config]`` override the architecture assumed for LAVIS and
Video-LLaMA files (default: the published BLIP-2 / Video-LLaMA shapes); HF folders carry their own config.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from callm.errors import CallmError
from callm.vlm.prompt import DEFAULT_QUESTION, DEFAULT_SYSTEM, TEMPLATES, system_text

Focus = Literal["crop", "draw", "none"]
FOCUS_MODES: tuple[Focus, ...] = ("crop", "draw", "none")
DTYPES = ("bf16", "fp16", "fp32")
WEIGHT_SOURCES = ("vision", "qformer", "video_llama", "llm")
# owner/name, as the Hugging Face hub spells repository ids
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


@dataclass(frozen=True)
class VLMConfig:
    """Everything stage 2 needs; the defaults reproduce Video-LLaMA's demo with greedy decoding."""

    vision: str
    qformer: str
    video_llama: str
    llm: str
    template: str = "llama2"
    # "video-demo" (Video-LLaMA's video demo's system line, the default), "none" (empty), or the text itself
    system: str = DEFAULT_SYSTEM
    question: str = DEFAULT_QUESTION
    dtype: str = "bf16"
    device: str = "auto"
    load_in_8bit: bool = False
    frames: int = 8
    focus: Focus = "crop"
    crop_scale: float = 2.0
    max_new_tokens: int = 128
    sample: bool = False
    temperature: float = 1.0
    top_p: float = 0.9
    seed: int = 0
    vision_config: dict[str, Any] = field(default_factory=dict)
    qformer_config: dict[str, Any] = field(default_factory=dict)
    video_qformer_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = [
            (self.template in TEMPLATES, f"template must be one of {', '.join(TEMPLATES)}"),
            (self.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}"),
            (self.focus in FOCUS_MODES, f"focus must be one of {', '.join(FOCUS_MODES)}"),
            (self.frames >= 1, "frames must be at least 1"),
            (self.crop_scale >= 1, "crop_scale must be at least 1"),
            (self.max_new_tokens >= 1, "max_new_tokens must be at least 1"),
            (self.temperature > 0, "temperature must be above 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise CallmError(f"vlm config: {message}")

    @property
    def system_text(self) -> str:
        """The system line of the prompt: a preset's text ("video-demo", "none") or the configured text."""
        return system_text(self.system)


# What a TOML value of each field's Python type is called in an error message.
TOML_TYPES: dict[type, tuple[tuple[type, ...], str]] = {
    str: ((str,), "a string"),
    int: ((int,), "an integer"),
    float: ((int, float), "a number"),
    bool: ((bool,), "true or false"),
    dict: ((dict,), "a table"),
}


def _expected_types() -> dict[str, tuple[tuple[type, ...], str]]:
    types = {}
    for f in dataclasses.fields(VLMConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        types[f.name] = TOML_TYPES[str if default is dataclasses.MISSING else type(default)]
    return types


def resolve_source(value: str, base: Path) -> str:
    """A path (relative to ``base``) when it exists or names a weights file, else a hub id when shaped like one."""
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    if path.exists() or value.endswith(WEIGHT_SUFFIXES) or not HUB_ID.fullmatch(value):
        return str(path)
    return value


def load_config(path: str | Path) -> VLMConfig:
    """Read and check the ``[vlm]`` table of a TOML file; one-line errors for every mistake."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CallmError(f"{path}: config file not found") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CallmError(f"{path}: not a valid TOML file ({exc})") from None
    table = data.get("vlm")
    if not isinstance(table, dict):
        raise CallmError(f"{path}: no [vlm] table")
    types = _expected_types()
    unknown = sorted(set(table) - set(types))
    if unknown:
        raise CallmError(f"{path}: unknown setting(s) in [vlm]: {', '.join(unknown)}")
    missing = [name for name in WEIGHT_SOURCES if name not in table]
    if missing:
        raise CallmError(f"{path}: [vlm] must name {', '.join(missing)}")
    for name, value in table.items():
        accepted, description = types[name]
        # bool is an int subclass, but `frames = true` is a mistake worth reporting
        if not isinstance(value, accepted) or (isinstance(value, bool) and bool not in accepted):
            raise CallmError(f"{path}: [vlm] {name} must be {description}, got {value!r}")
    sources = {name: resolve_source(table[name], path.parent) for name in WEIGHT_SOURCES}
    try:
        return VLMConfig(**{**table, **sources})
    except CallmError as exc:
        raise CallmError(f"{path}: {exc}") from None


def _toml_value(value: str | int | float | bool) -> str:
    # JSON strings and numbers are valid TOML; booleans differ only in case.
    return str(value).lower() if isinstance(value, bool) else json.dumps(value)


def config_toml(config: VLMConfig, folder: Path) -> str:
    """The config as a ``[vlm]`` TOML table for a file in ``folder``, which ``load_config`` reads back equal.

    Weight files inside ``folder`` are written relative to it (the folder can move); other paths absolute.
    """
    lines, tables = ["[vlm]"], []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, dict):
            if value:
                tables += ["", f"[vlm.{f.name}]", *(f"{k} = {_toml_value(v)}" for k, v in value.items())]
            continue
        if f.name in WEIGHT_SOURCES and Path(value).exists():
            path, home = Path(value).resolve(), folder.resolve()
            value = str(path.relative_to(home) if path.is_relative_to(home) else path)
        lines.append(f"{f.name} = {_toml_value(value)}")
    return "\n".join(lines + tables) + "\n"

    @property
    def system_text(self) -> str:
        return system_text(self.system)
