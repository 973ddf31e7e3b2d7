"""What a weights file or folder is, how many parameters it holds, and whether callm can load it.

Backs ``callm weights check PATH``. Torch files are read with ``weights_only=True`` and memory-mapped; the
frame-encoder layouts and LLMs are checked name by name and shape by shape against modules built on the meta
device, so checking a 7B LLM or the 1B-parameter ViT-g does not allocate them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Blip2QFormerConfig, Blip2VisionConfig

from callm.ae import weights as ae_weights
from callm.ae.calibrate import Calibration
from callm.errors import CallmError
from callm.vador import adaptor
from callm.vador import weights as vador_weights
from callm.vlm.config import VLMConfig
from callm.vlm.model import FrameEncoder
from callm.vlm.weights.assemble import arch_config, check_parts, token_count
from callm.vlm.weights.files import ModelFiles, header_shapes, read_checkpoint
from callm.vlm.weights.keys import MappedWeights, map_lavis_qformer, map_lavis_vision
from callm.vlm.weights.llm import check_llm
from callm.vlm.weights.loaders import DEFAULT_QUERY_TOKENS, frame_encoder_parts, load_video_qformer
from callm.weights_folder import WeightsFolder

DESCRIPTIONS = {
    "callm-ae": "callm stage-1 autoencoder",
    "callm-vador": "callm VADor (VAD-LLaMA anomaly predictor with its context lists)",
    "callm-vador-adaptor": "callm VAD-LLaMA phase-3 adaptor (VADor clips to LLM tokens)",
    "video-llama": "Video-LLaMA checkpoint (video Q-Former, frame positions, llama_proj)",
    "lavis-vit": "LAVIS EVA ViT-g (BLIP-2 vision encoder)",
    "lavis-qformer": "LAVIS BLIP-2 Q-Former (query tokens, ln_vision)",
    "lavis-blip2": "LAVIS BLIP-2 checkpoint with its ViT and Q-Former",
    "hf-blip2": "Hugging Face BLIP-2 model (callm reads its vision model and Q-Former)",
    "hf-llm": "Hugging Face causal language model",
    "unknown": "not a weights layout callm reads",
}


@dataclass(frozen=True)
class WeightsInfo:
    path: str
    kind: str  # a key of DESCRIPTIONS
    description: str
    parameters: int | None  # None when the weights could not be read
    loadable: bool
    detail: str  # what would load, or the one-line reason it cannot


def classify_keys(keys: Iterable[str]) -> str:
    """The layout of a single weights file, from its tensor names."""
    keys = set(keys)

    def has(*prefixes: str) -> bool:
        return any(k.startswith(prefixes) for k in keys)

    if has("video_Qformer.", "video_query_tokens"):
        return "video-llama"
    qformer = has("Qformer.bert.") or "query_tokens" in keys
    vit = has("blocks.", "visual_encoder.blocks.") and has("patch_embed.", "visual_encoder.patch_embed.")
    if qformer and vit:
        return "lavis-blip2"
    return "lavis-qformer" if qformer else "lavis-vit" if vit else "unknown"


def _frame_configs(config: VLMConfig | None) -> tuple[Blip2VisionConfig, Blip2QFormerConfig]:
    """The architecture LAVIS files are checked against: the config's overrides, else BLIP-2's."""
    vision_overrides = config.vision_config if config else {}
    qformer_overrides = config.qformer_config if config else {}
    vision = arch_config(Blip2VisionConfig, {}, vision_overrides, "vision_config")
    qformer = arch_config(
        Blip2QFormerConfig, {"encoder_hidden_size": vision.hidden_size}, qformer_overrides, "qformer_config"
    )
    return vision, qformer


Check = Callable[[], tuple[str, int | None]]  # -> (what fits, parameter count when the check learns it)


def _fits(module: torch.nn.Module, parts: list[MappedWeights]) -> str:
    problems = check_parts(module, parts)
    if problems:
        raise CallmError("; ".join(problems))
    return "; ".join(f"{part.component}: {len(part.tensors)} tensors fit" for part in parts)


def _check_lavis(path: Path, kind: str, state: Mapping[str, torch.Tensor], config: VLMConfig | None) -> Check:
    def check() -> tuple[str, int | None]:
        vision_config, qformer_config = _frame_configs(config)
        parts = []
        if kind in ("lavis-vit", "lavis-blip2"):
            parts.append(map_lavis_vision(state, vision_config.num_hidden_layers, str(path)))
        if kind in ("lavis-qformer", "lavis-blip2"):
            parts.append(map_lavis_qformer(state, str(path)))
        num_query_tokens = token_count(state.get("query_tokens"), DEFAULT_QUERY_TOKENS)
        with torch.device("meta"):
            module = FrameEncoder(vision_config, qformer_config, num_query_tokens)
        return _fits(module, parts), None

    return check


def _check_video_llama(path: Path, config: VLMConfig | None) -> Check:
    def check() -> tuple[str, int | None]:
        _, qformer_config = _frame_configs(config)
        _, report = load_video_qformer(str(path), qformer_config, config.video_qformer_config if config else None)
        return str(report), None

    return check


def _check_hf_blip2(path: Path) -> Check:
    def check() -> tuple[str, int | None]:
        found = frame_encoder_parts(str(path), str(path))
        with torch.device("meta"):
            module = found.build()
        parameters = sum(torch.Size(s).numel() for s in header_shapes(ModelFiles(str(path), "BLIP-2")).values())
        return _fits(module, found.parts), parameters

    return check


def _check_own(load: Callable[[Path], torch.nn.Module], path: Path) -> Check:
    def check() -> tuple[str, int | None]:
        return "loads", sum(p.numel() for p in load(path).parameters())

    return check


def _scorable_ae(path: Path) -> torch.nn.Module:
    """Stage-1 weights that detect can score with: the model and a valid calibration."""
    weights = ae_weights.load(path)
    Calibration.from_dict(weights.calibration)
    return weights.model


# callm's own safetensors + JSON folders: (kind, folder format, loader of the model).
OWN_FOLDERS: tuple[tuple[str, WeightsFolder, Callable[[Path], torch.nn.Module]], ...] = (
    ("callm-ae", ae_weights.FOLDER, lambda p: _scorable_ae(p)),
    ("callm-vador", vador_weights.FOLDER, lambda p: vador_weights.load(p).model),
    ("callm-vador-adaptor", adaptor.FOLDER, lambda p: adaptor.load_adaptor(p).model),
)


def _check_llm(path: Path) -> Check:
    def check() -> tuple[str, int | None]:
        return "config, tokenizer and every tensor present", check_llm(str(path))

    return check


def _info(path: Path, kind: str, check: Check, parameters: int | None = None) -> WeightsInfo:
    """Run ``check``: loadable when it raises no CallmError, whose message then says why not."""
    try:
        detail, counted = check()
    except CallmError as exc:
        return WeightsInfo(str(path), kind, DESCRIPTIONS[kind], parameters, False, str(exc))
    return WeightsInfo(str(path), kind, DESCRIPTIONS[kind], counted or parameters, True, detail)


def _unknown(path: Path, detail: str, parameters: int | None = None) -> WeightsInfo:
    return WeightsInfo(str(path), "unknown", DESCRIPTIONS["unknown"], parameters, False, detail)


def _inspect_folder(path: Path) -> WeightsInfo:
    config_file = path / "config.json"
    if not config_file.is_file():
        return _unknown(path, "no config.json, nor the JSON of callm's own weights")
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return _unknown(path, f"{config_file} is not a JSON object")
    if model_type == "blip-2":
        return _info(path, "hf-blip2", _check_hf_blip2(path))
    return _info(path, "hf-llm", _check_llm(path))


def inspect_weights(path: str | Path, config: VLMConfig | None = None) -> WeightsInfo:
    """Identify ``path`` and try it against what callm would build; ``config`` gives non-default architectures."""
    path = Path(path)
    if not path.exists():
        raise CallmError(f"{path}: not found")
    for kind, folder, load in OWN_FOLDERS:
        if folder.claims(path):
            return _info(path, kind, _check_own(load, path))
    if path.is_dir():
        return _inspect_folder(path)
    try:
        state = read_checkpoint(path, "weights")
    except CallmError as exc:
        return _unknown(path, str(exc))
    kind = classify_keys(state)
    parameters = sum(t.numel() for t in state.values())
    if kind == "unknown":
        names = ", ".join(list(state)[:3])
        return _unknown(path, f"none of its tensor names ({names}, ...) belong to a layout callm reads", parameters)
    check = _check_video_llama(path, config) if kind == "video-llama" else _check_lavis(path, kind, state, config)
    return _info(path, kind, check, parameters)
