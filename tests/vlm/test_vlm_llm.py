"""The LLM and its tokenizer: loaded from a folder, and clear errors for whatever is missing, offline included."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from callm.errors import CallmError
from callm.vlm.weights.llm import load_llm
from callm.vlm.weights.loaders import load_frame_encoder

CPU = torch.device("cpu")


def test_llm_and_tokenizer_load_from_a_folder(llm_dir: Path) -> None:
    llm, tokenizer, report = load_llm(str(llm_dir), torch.bfloat16, CPU)
    assert llm.dtype == torch.bfloat16 and not llm.training
    assert tokenizer("cart", add_special_tokens=True).input_ids == [tokenizer.bos_token_id, 6]
    assert report.parameters == sum(p.numel() for p in llm.parameters()) and not report.ignored


def test_offline_hub_ids_not_in_the_cache_name_the_missing_file() -> None:
    with pytest.raises(
        CallmError, match=r"LLM: config.json of hub repository callm-tests/no-such-llm .*HF_HUB_OFFLINE=1"
    ):
        load_llm("callm-tests/no-such-llm", torch.float32, CPU)
    with pytest.raises(CallmError, match=r"vision encoder: config.json of hub repository callm-tests/no-such-blip2"):
        load_frame_encoder("callm-tests/no-such-blip2", "callm-tests/no-such-blip2")


def test_a_folder_without_tokenizer_is_refused_never_an_empty_tokenizer(llm_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "llm"
    shutil.copytree(llm_dir, folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(CallmError, match=r"LLM: the tokenizer \(tokenizer.json or tokenizer.model\) missing in"):
        load_llm(str(folder), torch.float32, CPU)


def test_weights_that_do_not_fit_the_config_are_refused(llm_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "llm"
    shutil.copytree(llm_dir, folder)
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CallmError, match=r"LLM \(.*\) does not match its config: missing model.layers.1.mlp.up_proj"):
        load_llm(str(folder), torch.float32, CPU)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CallmError, match=r"LLM: weights \(model.safetensors"):
        load_llm(str(folder), torch.float32, CPU)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_8bit_without_the_extra_says_what_to_install(llm_dir: Path) -> None:
    with pytest.raises(CallmError, match=r"8-bit LLM loading needs .*pip install 'callm\[8bit\]'"):
        load_llm(str(llm_dir), torch.float16, CPU, load_in_8bit=True)
