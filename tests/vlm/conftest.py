"""Tiny random stage-2 models saved once per session in every layout callm reads.

Nothing is downloaded: every model is built from a config with random weights, written to a temporary folder,
and loaded back through the code users run.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    Blip2QFormerConfig,
    BlipImageProcessorPil,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
)
from vlm_layouts import lavis_qformer_checkpoint, lavis_vit_state
from vlm_tiny import LLM_WIDTH, TINY_QFORMER, TINY_VISION, VOCAB, SavedBlip2, make_tokenizer, randomize, write_config

from callm.vlm.explain import Explainer
from callm.vlm.model import VideoQFormer
from callm.vlm.weights.loaders import save_video_llama, video_qformer_config

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def blip2_hf(tmp_path_factory: pytest.TempPathFactory) -> SavedBlip2:
    """A tiny HF BLIP-2 (OPT language model), sharded with an index like the hub's big checkpoints."""
    text = OPTConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        ffn_dim=32,
        num_attention_heads=2,
        word_embed_proj_dim=16,
        max_position_embeddings=64,
    )
    config = Blip2Config(
        vision_config=TINY_VISION, qformer_config=TINY_QFORMER, text_config=text.to_dict(), num_query_tokens=32
    )
    model = Blip2ForConditionalGeneration(config).eval()
    randomize(model, seed=1)
    with torch.no_grad():  # EVA has no key bias: the middle third of qkv.bias is zero in real weights
        for layer in model.vision_model.encoder.layers:
            layer.self_attn.qkv.bias.chunk(3)[1].zero_()
    path = tmp_path_factory.mktemp("hf") / "blip2"
    model.save_pretrained(path, max_shard_size="20KB")
    assert (path / "model.safetensors.index.json").is_file()
    return SavedBlip2(path, model)


@pytest.fixture(scope="session")
def captioner_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny captioning BLIP-2 (OPT language model) with its processor, as a hub snapshot holds them."""
    tokenizer = make_tokenizer()
    processor = Blip2Processor(
        image_processor=BlipImageProcessorPil(size={"height": 28, "width": 28}), tokenizer=tokenizer, num_query_tokens=4
    )  # adds the "<image>" token to the tokenizer
    text = OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        ffn_dim=32,
        num_attention_heads=2,
        word_embed_proj_dim=16,
        max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.unk_token_id,
    )
    config = Blip2Config(
        vision_config=TINY_VISION,
        qformer_config=TINY_QFORMER,
        text_config=text.to_dict(),
        num_query_tokens=4,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    model = Blip2ForConditionalGeneration(config).eval()
    randomize(model, seed=4)
    path = tmp_path_factory.mktemp("captioner") / "blip2-opt"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def lavis_files(blip2_hf: SavedBlip2, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same weights as ``blip2_hf`` in LAVIS's two files: (eva_vit_g.pth, blip2_pretrained_flant5xxl.pth)."""
    folder = tmp_path_factory.mktemp("lavis")
    state = {k: v.detach().clone() for k, v in blip2_hf.model.state_dict().items()}
    torch.save(lavis_vit_state(state), folder / "eva_vit_g.pth")
    torch.save(lavis_qformer_checkpoint(state, TINY_QFORMER["num_hidden_layers"]), folder / "blip2_qformer.pth")
    return folder / "eva_vit_g.pth", folder / "blip2_qformer.pth"


@pytest.fixture(scope="session")
def llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("llm") / "tiny-llama"
    tokenizer = make_tokenizer()
    config = LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=LLM_WIDTH,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        # 10x the usual init: with 0.02 a 2-layer model's output hardly depends on its input, so nothing fed to
        # it (video tokens included) could change its answers, and fine-tuning could not lower its loss.
        initializer_range=0.2,
    )
    torch.manual_seed(2)
    llm = LlamaForCausalLM(config)
    # LLaMA-2-chat ships sampling defaults: callm's greedy answers must not pick them up.
    llm.generation_config = GenerationConfig(
        do_sample=True,
        temperature=0.6,
        top_p=0.9,
        max_length=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    llm.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def video_llama_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny video branch written by callm's own Video-LLaMA writer (the one ``callm finetune`` uses)."""
    config = video_qformer_config(Blip2QFormerConfig(**TINY_QFORMER), {})
    module = VideoQFormer(config, LLM_WIDTH, num_query_tokens=32, max_frames=32)
    randomize(module, seed=3)
    path = tmp_path_factory.mktemp("video_llama") / "video_llama.pth"
    save_video_llama(module, path)
    return path


@pytest.fixture(scope="session")
def lavis_config(
    lavis_files: tuple[Path, Path], video_llama_file: Path, llm_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """LAVIS files + Video-LLaMA checkpoint + HF LLM, Vicuna template; paths relative to the config file."""
    vit, qformer = lavis_files
    folder = tmp_path_factory.mktemp("configs")
    relative = {name: os.path.relpath(path, folder) for name, path in (("vision", vit), ("qformer", qformer))}
    return write_config(
        folder / "lavis.toml",
        {
            **relative,
            "video_llama": str(video_llama_file),
            "llm": str(llm_dir),
            "template": "vicuna",
            "system": "none",  # the tiny LLM's context is short: no system line (its default is tested apart)
            "dtype": "fp32",
            "device": "cpu",
            "max_new_tokens": 8,
            "vision_config": TINY_VISION,
            "qformer_config": TINY_QFORMER,
        },
    )


@pytest.fixture(scope="session")
def hf_config(
    blip2_hf: SavedBlip2, video_llama_file: Path, llm_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """HF BLIP-2 folder for both parts + Video-LLaMA checkpoint + HF LLM, LLaMA-2 template, box drawn."""
    return write_config(
        tmp_path_factory.mktemp("configs") / "hf.toml",
        {
            "vision": str(blip2_hf.path),
            "qformer": str(blip2_hf.path),
            "video_llama": str(video_llama_file),
            "llm": str(llm_dir),
            "template": "llama2",
            "system": "none",
            "dtype": "fp32",
            "device": "cpu",
            "focus": "draw",
            "max_new_tokens": 8,
        },
    )


@pytest.fixture(scope="session")
def explainer(lavis_config: Path) -> Explainer:
    return Explainer.from_config(lavis_config)


@pytest.fixture(scope="session")
def window() -> np.ndarray:
    """A 16-frame grey window, 48 x 64, with a bright block moving across it."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 60, size=(16, 48, 64), dtype=np.uint8)
    for t in range(16):
        frames[t, 20:30, 2 * t : 2 * t + 10] = 230
    return frames
