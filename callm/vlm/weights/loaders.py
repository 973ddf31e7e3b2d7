"""The frame encoder and the video Q-Former (with ``llama_proj``) from their files, and the whole video LLM."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    Blip2Config,
    Blip2QFormerConfig,
    Blip2VisionConfig,
)

from callm.device import parse_dtype, pick_device
from callm.errors import CallmError
from callm.files import write_atomic
from callm.vlm.config import VLMConfig
from callm.vlm.model import FrameEncoder, VideoLLM, VideoQFormer
from callm.vlm.prompt import TEMPLATES
from callm.vlm.weights.assemble import LoadReport, arch_config, assemble, token_count
from callm.vlm.weights.files import QFORMER, VIDEO, VISION, ModelFiles, is_file_source, read_checkpoint, read_hf_tensors
from callm.vlm.weights.keys import (
    LAVIS_LN_VISION_EPS,
    MappedWeights,
    map_hf_blip2,
    map_lavis_qformer,
    map_lavis_vision,
    map_video_llama,
    video_llama_key,
)
from callm.vlm.weights.llm import llm_hidden_size, load_llm

DEFAULT_QUERY_TOKENS = 32
DEFAULT_MAX_FRAMES = 32
DEFAULT_LLM_WIDTH = 4096  # LLaMA-7B


def read_hf_blip2(source: str, component: str) -> tuple[Blip2Config, dict[str, torch.Tensor]]:
    """An HF BLIP-2 model's config and its vision / Q-Former tensors; the language model is never read."""
    files = ModelFiles(source, component)
    raw = json.loads(files.require("config.json").read_text(encoding="utf-8"))
    if raw.get("model_type") != "blip-2":
        raise CallmError(f"{component}: {source} is not a BLIP-2 model (model_type {raw.get('model_type')!r})")
    return Blip2Config.from_dict(raw), read_hf_tensors(files, ("vision_model.", "qformer.", "query_tokens"))


@dataclass(frozen=True)
class FrameEncoderParts:
    """The frame encoder's sources mapped to its keys, and the architecture they describe (no weights built)."""

    parts: list[MappedWeights]
    vision_config: Blip2VisionConfig
    qformer_config: Blip2QFormerConfig
    num_query_tokens: int
    ln_vision_eps: float | None = None  # LAVIS's, when its Q-Former file brings ln_vision; else the HF config's

    def build(self) -> FrameEncoder:
        return FrameEncoder(self.vision_config, self.qformer_config, self.num_query_tokens, self.ln_vision_eps)


def frame_encoder_parts(
    vision: str,
    qformer: str,
    vision_overrides: Mapping[str, Any] | None = None,
    qformer_overrides: Mapping[str, Any] | None = None,
) -> FrameEncoderParts:
    """Read and map the vision and Q-Former sources; an HF folder named twice is read once."""
    hf_reads: dict[str, tuple[Blip2Config, dict[str, torch.Tensor]]] = {}
    ln_vision_eps: float | None = None

    def hf(source: str, component: str) -> tuple[Blip2Config, dict[str, torch.Tensor]]:
        if source not in hf_reads:
            hf_reads[source] = read_hf_blip2(source, component)
        return hf_reads[source]

    if is_file_source(vision):
        vision_config = arch_config(Blip2VisionConfig, {}, vision_overrides or {}, "vision_config")
        vision_part = map_lavis_vision(read_checkpoint(vision, VISION), vision_config.num_hidden_layers, vision)
    else:
        blip2, tensors = hf(vision, VISION)
        vision_config, vision_part = blip2.vision_config, map_hf_blip2(tensors, VISION, vision)
    if is_file_source(qformer):
        qformer_config = arch_config(
            Blip2QFormerConfig,
            {"encoder_hidden_size": vision_config.hidden_size},
            qformer_overrides or {},
            "qformer_config",
        )
        qformer_part = map_lavis_qformer(read_checkpoint(qformer, QFORMER), qformer)
        num_query_tokens = token_count(qformer_part.tensors.get("query_tokens"), DEFAULT_QUERY_TOKENS)
        ln_vision_eps = LAVIS_LN_VISION_EPS
    else:
        blip2, tensors = hf(qformer, QFORMER)
        qformer_config, num_query_tokens = blip2.qformer_config, blip2.num_query_tokens
        qformer_part = map_hf_blip2(tensors, QFORMER, qformer)
    return FrameEncoderParts(
        [vision_part, qformer_part], vision_config, qformer_config, num_query_tokens, ln_vision_eps
    )


def load_frame_encoder(
    vision: str,
    qformer: str,
    vision_overrides: Mapping[str, Any] | None = None,
    qformer_overrides: Mapping[str, Any] | None = None,
) -> tuple[FrameEncoder, list[LoadReport]]:
    """The frame encoder from an HF BLIP-2 folder / hub id (name it twice) or the two LAVIS files."""
    found = frame_encoder_parts(vision, qformer, vision_overrides, qformer_overrides)
    encoder, reports = assemble(found.build, found.parts)
    return encoder.float(), reports


def video_qformer_config(frame_qformer: Blip2QFormerConfig, overrides: Mapping[str, Any]) -> Blip2QFormerConfig:
    """Video-LLaMA's video Q-Former: the frame Q-Former's BERT shape, 2 layers, cross-attention in every layer."""
    same_shape = ("hidden_size", "num_attention_heads", "intermediate_size", "hidden_act", "layer_norm_eps")
    defaults = {name: getattr(frame_qformer, name) for name in same_shape}
    defaults |= {
        "num_hidden_layers": 2,
        "cross_attention_frequency": 1,
        "encoder_hidden_size": frame_qformer.hidden_size,
    }
    return arch_config(Blip2QFormerConfig, defaults, overrides, "video_qformer_config")


def load_video_qformer(
    path: str,
    frame_qformer: Blip2QFormerConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[VideoQFormer, LoadReport]:
    """The video Q-Former and ``llama_proj`` from a Video-LLaMA checkpoint; widths and counts come from its tensors."""
    part = map_video_llama(read_checkpoint(path, VIDEO), path)
    config = video_qformer_config(frame_qformer or Blip2QFormerConfig(), overrides or {})
    projection = part.tensors.get("llama_proj.weight")
    llm_width = int(projection.shape[0]) if projection is not None else DEFAULT_LLM_WIDTH
    num_query_tokens = token_count(part.tensors.get("video_query_tokens"), DEFAULT_QUERY_TOKENS)
    max_frames = token_count(part.tensors.get("video_frame_position_embedding.weight"), DEFAULT_MAX_FRAMES)
    module, reports = assemble(lambda: VideoQFormer(config, llm_width, num_query_tokens, max_frames), [part])
    return module.float(), reports[0]


def save_video_llama(module: VideoQFormer, path: str | Path) -> None:
    """Write the video branch as an official Video-LLaMA checkpoint (``{"model": ...}``), atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    layout = {video_llama_key(k): v for k, v in state.items()}
    write_atomic(path, lambda tmp: torch.save({"model": layout}, tmp))


def load_video_llm(config: VLMConfig) -> tuple[VideoLLM, list[LoadReport]]:
    """Everything a config names, built and loaded: the LLM's weights last, so a wrong file fails fast."""
    device = pick_device(config.device)
    dtype = parse_dtype(config.dtype)
    frame_encoder, reports = load_frame_encoder(
        config.vision, config.qformer, config.vision_config, config.qformer_config
    )
    video_qformer, video_report = load_video_qformer(
        config.video_llama, frame_encoder.qformer.config, config.video_qformer_config
    )
    if config.frames > video_qformer.max_frames:
        raise CallmError(
            f"frames = {config.frames}, but {config.video_llama} has positions for {video_qformer.max_frames}"
        )
    width = llm_hidden_size(config.llm)
    if video_qformer.llama_proj.out_features != width:
        raise CallmError(
            f"{config.video_llama} projects into an LLM {video_qformer.llama_proj.out_features} wide, but {config.llm} "
            f"is {width} wide: use the LLM this Video-LLaMA checkpoint was trained with"
        )
    llm, tokenizer, llm_report = load_llm(config.llm, dtype, device, config.load_in_8bit)
    # Video-LLaMA runs the ViT in half precision but keeps the (small) Q-Formers in fp32.
    frame_encoder.vision_model.to(dtype)
    model = VideoLLM(frame_encoder.to(device), video_qformer.to(device), llm, tokenizer, TEMPLATES[config.template])
    return model.eval(), [*reports, video_report, llm_report]
