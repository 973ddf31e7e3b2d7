"""The LLM and its tokenizer from an HF folder or hub id, checked before anything large is read."""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from callm.device import parse_dtype, pick_device
from callm.errors import CallmError
from callm.vlm.config import VLMConfig
from callm.vlm.model import LanguageModel
from callm.vlm.prompt import TEMPLATES
from callm.vlm.weights.assemble import LoadReport, listing
from callm.vlm.weights.files import LLM, TOKENIZER_FILES, WEIGHT_FILES, ModelFiles, first_line, header_shapes


def _preflight_llm(source: str) -> ModelFiles:
    """Check an LLM's config, tokenizer and weights exist before any slow load, naming whatever is missing."""
    files = ModelFiles(source, LLM)
    files.require("config.json")
    if not any(files.find(name) for name in TOKENIZER_FILES):
        raise files.missing(f"the tokenizer ({' or '.join(TOKENIZER_FILES)})")
    if not any(files.find(name) for pair in WEIGHT_FILES for name in pair):
        raise files.missing("weights (model.safetensors[.index.json] or pytorch_model.bin[.index.json])")
    return files


def llm_hidden_size(source: str) -> int:
    """The LLM's embedding width, from its config alone (before any weights are read)."""
    _preflight_llm(source)
    try:
        return int(AutoConfig.from_pretrained(source).hidden_size)
    except (OSError, ValueError, AttributeError) as exc:
        raise CallmError(f"{LLM}: cannot read the config of {source} ({first_line(exc)})") from None


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError) as exc:
        raise CallmError(f"{LLM}: cannot load the tokenizer of {source} ({first_line(exc)})") from None
    if len(tokenizer) == 0 or not tokenizer("video", add_special_tokens=False).input_ids:
        raise CallmError(f"{LLM}: the tokenizer of {source} is empty")
    return tokenizer


def _int8_quantization() -> Any:
    missing = [name for name in ("bitsandbytes", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise CallmError(f"8-bit LLM loading needs {' and '.join(missing)}: pip install 'callm[8bit]'")
    from transformers import BitsAndBytesConfig  # only with the extra installed

    return BitsAndBytesConfig(load_in_8bit=True)


def load_llm(
    source: str, dtype: torch.dtype, device: torch.device, load_in_8bit: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, LoadReport]:
    """The causal LM and its tokenizer; refuses weights that leave any of the model's tensors unfilled."""
    _preflight_llm(source)
    tokenizer = load_tokenizer(source)
    options: dict[str, Any] = {"dtype": dtype}
    if load_in_8bit:
        options |= {"quantization_config": _int8_quantization(), "device_map": {"": str(device)}}
    try:
        llm, info = AutoModelForCausalLM.from_pretrained(source, output_loading_info=True, **options)
    except ValueError as exc:
        raise CallmError(f"{LLM}: {source} is not a causal language model ({first_line(exc)})") from None
    except (OSError, RuntimeError) as exc:
        # transformers raises RuntimeError on tensors whose shapes differ from the config's
        raise CallmError(f"{LLM}: cannot load {source} ({first_line(exc)})") from None
    missing = sorted(info["missing_keys"])
    if missing:
        raise CallmError(f"{LLM} ({source}) does not match its config: missing {listing(missing)}")
    if not load_in_8bit:
        llm.to(device)
    parameters = sum(p.numel() for p in llm.parameters())
    report = LoadReport(LLM, source, len(llm.state_dict()), parameters, tuple(sorted(info["unexpected_keys"])))
    return llm.eval(), tokenizer, report


def check_llm(source: str) -> int:
    """Check an LLM would load (files, tokenizer, every tensor present with its shape) without reading its weights.

    Returns its parameter count.
    """
    files = _preflight_llm(source)
    load_tokenizer(source)
    try:
        config = AutoConfig.from_pretrained(source)
        with torch.device("meta"):
            llm = AutoModelForCausalLM.from_config(config)
    except ValueError as exc:
        raise CallmError(f"{LLM}: {source} is not a causal language model ({first_line(exc)})") from None
    except OSError as exc:
        raise CallmError(f"{LLM}: cannot read the config of {source} ({first_line(exc)})") from None
    in_files = header_shapes(files)
    tied = set(getattr(llm, "all_tied_weights_keys", {}) or {})
    expected = {k: tuple(v.shape) for k, v in llm.state_dict().items() if k not in tied}
    missing = [k for k in expected if k not in in_files]
    wrong = [f"{k} {in_files[k]} vs {shape}" for k, shape in expected.items() if k in in_files and in_files[k] != shape]
    if missing or wrong:
        problems = [
            f"{label} {listing(keys)}" for label, keys in (("missing", missing), ("wrong shape", wrong)) if keys
        ]
        raise CallmError(f"{LLM} ({source}) does not match its config: {'; '.join(problems)}")
    return sum(p.numel() for p in llm.parameters())


def load_language_model(config: VLMConfig) -> tuple[LanguageModel, LoadReport]:
    """The LLM a config names with its tokenizer and template, without the video branch (VAD-LLaMA's adaptor
    feeds it clip tokens of its own)."""
    device, dtype = pick_device(config.device), parse_dtype(config.dtype)
    llm, tokenizer, report = load_llm(config.llm, dtype, device, config.load_in_8bit)
    return LanguageModel(llm, tokenizer, TEMPLATES[config.template]).eval(), report
