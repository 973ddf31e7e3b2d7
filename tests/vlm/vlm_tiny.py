"""Shapes and builders of the tiny stage-2 models the tests make in-process (nothing is downloaded)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import Blip2ForConditionalGeneration, PreTrainedTokenizerFast

# 28 px = 2 x 2 patches of 14: the real ViT-g's patch size at a fraction of its 224 px.
TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 28,
    "patch_size": 14,
}
# Cross-attention every 2nd layer as in BLIP-2, so layer 1 has none.
TINY_QFORMER = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "encoder_hidden_size": 32,
}
LLM_WIDTH = 32
# Token 0 is "no": an LLM whose logits are all equal answers it (argmax takes the first), see test_vlm_explain.
# fmt: off
VOCAB = [
    "no", "<unk>", "<s>", "</s>", "yes", "a", "cart", "car", "bike", "person", "people", "walk", "walks", "running",
    "on", "the", "walkway", "street", "video", "contains", "frames", "sampled", "at", "seconds", "is", "there",
    "anything", "abnormal", "or", "dangerous", "happening", "in", "this", "answer", "first", "then", "say", "what",
    "happens", "Human", "Assistant", "INST", "SYS", "Video", "ImageHere", "#", "###", "[", "]", "<", ">", "/", ":",
    ".", ",", "?", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9",
]
# fmt: on


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Random values everywhere (norms and biases included), so a tensor loaded into the wrong place shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)


@dataclass(frozen=True)
class SavedBlip2:
    path: Path
    model: Blip2ForConditionalGeneration


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer built in-process, LLaMA-like: BOS added to single sequences, EOS known."""
    core = Tokenizer(models.WordLevel({word: i for i, word in enumerate(VOCAB)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", VOCAB.index("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def write_config(path: Path, vlm: dict[str, object]) -> Path:
    """A TOML ``[vlm]`` table; nested dicts become sub-tables. JSON strings are valid TOML basic strings."""

    def value(v: object) -> str:
        return json.dumps(v) if not isinstance(v, bool) else str(v).lower()

    lines = ["[vlm]"] + [f"{k} = {value(v)}" for k, v in vlm.items() if not isinstance(v, dict)]
    for table, entries in vlm.items():
        if isinstance(entries, dict):
            lines += [f"[vlm.{table}]"] + [f"{k} = {value(v)}" for k, v in entries.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
