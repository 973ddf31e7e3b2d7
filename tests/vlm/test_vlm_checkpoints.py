"""Key mapping and refusal: every layout loads to the same numbers, and a file that does not fit is refused."""

from __future__ import annotations

import json
import shutil
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hub_constants
from vlm_layouts import FROZEN_VIDEO_LLAMA_KEYS, official_video_llama_checkpoint
from vlm_tiny import LLM_WIDTH, TINY_QFORMER, TINY_VISION, SavedBlip2

from callm.errors import CallmError
from callm.vlm.weights.files import read_checkpoint
from callm.vlm.weights.keys import bert_qformer_key, lavis_qformer_key
from callm.vlm.weights.loaders import load_frame_encoder, load_video_qformer, save_video_llama


def test_lavis_and_hf_layouts_give_the_same_frame_tokens(blip2_hf: SavedBlip2, lavis_files: tuple[Path, Path]) -> None:
    pixels = torch.randn(3, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = blip2_hf.model.get_image_features(pixels).qformer_outputs.last_hidden_state
        from_hf, hf_reports = load_frame_encoder(str(blip2_hf.path), str(blip2_hf.path))
        from_lavis, lavis_reports = load_frame_encoder(*map(str, lavis_files), TINY_VISION, TINY_QFORMER)
        hf_tokens, lavis_tokens = from_hf(pixels), from_lavis(pixels)

    assert hf_tokens.shape == (3, 32, TINY_QFORMER["hidden_size"])
    assert (hf_tokens - reference).abs().max() < 1e-4  # callm's HF load = transformers' own BLIP-2
    assert (lavis_tokens - hf_tokens).abs().max() < 1e-4  # LAVIS layout = HF layout
    # Everything a LAVIS file carries beyond the frame encoder is accounted for, nothing silently dropped.
    vit_report, qformer_report = lavis_reports
    assert {"blocks.2.norm1.weight", "norm.weight"} <= set(vit_report.ignored)
    assert {
        "Qformer.cls.predictions.bias",
        "t5_proj.weight",
        "Qformer.bert.encoder.layer.0.intermediate.dense.weight",
    } <= set(qformer_report.ignored)
    assert vit_report.tensors + qformer_report.tensors == sum(r.tensors for r in hf_reports)
    # The norm between ViT and Q-Former keeps its checkpoint's epsilon: LAVIS's ln_vision is nn.LayerNorm's 1e-5,
    # an HF BLIP-2 folder's post_layernorm its config's.
    assert from_lavis.vision_model.post_layernorm.eps == 1e-5
    assert from_hf.vision_model.post_layernorm.eps == from_hf.vision_model.config.layer_norm_eps


def test_hf_blip2_from_the_hub_cache_reads_only_the_vision_and_qformer_shards(
    blip2_hf: SavedBlip2, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub id resolves through the local cache offline; shards holding only the LLM are never fetched."""
    repo = tmp_path / "models--callm-tests--tiny-blip2"
    commit = "0" * 40
    shutil.copytree(blip2_hf.path, repo / "snapshots" / commit)
    snapshot = repo / "snapshots" / commit
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    weight_map = json.loads((snapshot / "model.safetensors.index.json").read_text())["weight_map"]
    needed = {shard for key, shard in weight_map.items() if not key.startswith("language_")}
    llm_only = set(weight_map.values()) - needed
    assert llm_only, "the fixture should have shards holding only the language model"
    for shard in llm_only:
        (snapshot / shard).unlink()
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))

    encoder, _ = load_frame_encoder("callm-tests/tiny-blip2", "callm-tests/tiny-blip2")
    assert not any(name.startswith("language") for name in encoder.state_dict())


def test_full_size_video_qformer_in_the_official_layout_loads_exactly(tmp_path: Path) -> None:
    checkpoint = official_video_llama_checkpoint(llm_width=LLM_WIDTH)
    path = tmp_path / "VL_LLaMA_2_7B_Finetuned.pth"
    torch.save(checkpoint, path)

    module, report = load_video_qformer(str(path))

    official = checkpoint["model"]
    video_branch = set(official) - FROZEN_VIDEO_LLAMA_KEYS
    assert set(report.ignored) == FROZEN_VIDEO_LLAMA_KEYS  # no unexpected keys, only known frozen buffers
    assert report.tensors == len(video_branch) == len(module.state_dict())
    assert module.video_qformer.config.hidden_size == 768 and len(module.video_qformer.encoder.layer) == 2
    layer = module.video_qformer.encoder.layer[1]
    assert torch.equal(
        layer.crossattention.attention.key.weight,
        official["video_Qformer.bert.encoder.layer.1.crossattention.self.key.weight"],
    )
    assert torch.equal(module.video_qformer.layernorm.bias, official["video_Qformer.bert.embeddings.LayerNorm.bias"])
    assert module(torch.randn(1, 8, 32, 768)).shape == (1, 32, LLM_WIDTH)

    # callm's writer produces the same layout, so `callm finetune` output loads in Video-LLaMA and back here
    save_video_llama(module, tmp_path / "rewritten.pth")
    rewritten = read_checkpoint(tmp_path / "rewritten.pth", "test")
    assert set(rewritten) == video_branch
    assert all(torch.equal(rewritten[k], official[k]) for k in rewritten)


def test_qformer_key_mapping_round_trips() -> None:
    for bert in (
        "embeddings.LayerNorm.weight",
        "encoder.layer.3.attention.self.query.bias",
        "encoder.layer.3.crossattention.self.value.weight",
        "encoder.layer.3.crossattention.output.LayerNorm.bias",
        "encoder.layer.3.output_query.dense.weight",
    ):
        mapped = bert_qformer_key(bert)
        assert mapped is not None and ".self." not in mapped
        assert lavis_qformer_key(mapped) == bert
    assert bert_qformer_key("encoder.layer.3.output.dense.weight") is None  # text-side feed-forward
    assert bert_qformer_key("embeddings.word_embeddings.weight") is None


def _refused(*fragments: str) -> AbstractContextManager[pytest.ExceptionInfo[CallmError]]:
    """Expect a CallmError whose one line holds ``fragments`` in order."""
    return pytest.raises(CallmError, match=".*".join(fragments))


def test_a_wrong_architecture_is_refused_naming_component_and_keys(lavis_files: tuple[Path, Path]) -> None:
    vit, qformer = map(str, lavis_files)
    with _refused("vision encoder", "wrong shape", "cls_token"):
        load_frame_encoder(vit, qformer, {**TINY_VISION, "hidden_size": 64}, TINY_QFORMER)
    with _refused("vision encoder", "missing", "vision_model.encoder.layers.3"):
        load_frame_encoder(vit, qformer, {**TINY_VISION, "num_hidden_layers": 4}, TINY_QFORMER)
    with _refused(r"\[vlm.vision_config\]", "unknown", "hidden_width"):
        load_frame_encoder(vit, qformer, {"hidden_width": 3}, TINY_QFORMER)


def test_a_damaged_qformer_file_is_refused_naming_the_keys(lavis_files: tuple[Path, Path], tmp_path: Path) -> None:
    vit, qformer = lavis_files
    checkpoint = torch.load(qformer, weights_only=True)
    del checkpoint["model"]["Qformer.bert.encoder.layer.1.output_query.dense.weight"]
    checkpoint["model"]["Qformer.bert.encoder.layer.7.attention.self.query.weight"] = torch.zeros(1)
    torch.save(checkpoint, tmp_path / "qformer.pth")
    with _refused(
        r"Q-Former \(.*qformer.pth\) does not match",
        "missing qformer.encoder.layer.1.output_query.dense.weight",
        "unexpected Qformer.bert.encoder.layer.7.attention.self.query.weight",
    ):
        load_frame_encoder(str(vit), str(tmp_path / "qformer.pth"), TINY_VISION, TINY_QFORMER)


def test_a_file_of_the_wrong_kind_is_refused(lavis_files: tuple[Path, Path], video_llama_file: Path) -> None:
    vit, _ = map(str, lavis_files)
    with _refused("Q-Former", "missing", "query_tokens"):
        load_frame_encoder(vit, str(video_llama_file), TINY_VISION, TINY_QFORMER)
    with _refused("video Q-Former", "missing", "video_query_tokens"):
        load_video_qformer(vit)


def test_pickled_objects_are_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"model": {"query_tokens": torch.zeros(1)}, "config": Path("x")}, path)  # Path is not a tensor type
    with _refused("Q-Former", "Python objects", "weights_only"):
        read_checkpoint(path, "Q-Former")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with _refused("video Q-Former", "damaged"):
        load_video_qformer(str(tmp_path / "junk.pth"))
    with _refused("video Q-Former", "not found"):
        load_video_qformer(str(tmp_path / "absent.pth"))


class _Runs:
    """A pickle that, unpickled, would call os.system (never unpickled here)."""

    def __reduce__(self):
        import os

        return (os.system, ("echo this must never run",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_pickle_that_would_run_code_is_refused_as_such_not_called_damaged(tmp_path: Path) -> None:
    import pickle

    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps({"model": _Runs()}, protocol=4))  # a plain pickle, not torch's zip format
    with _refused("weights", "refused", "system", "could run code"):
        read_checkpoint(raw, "weights")
    zipped = tmp_path / "zipped.pth"
    torch.save({"model": {"query_tokens": torch.zeros(1)}, "hook": _Runs()}, zipped)
    with _refused("weights", "refused", "system", "could run code"):
        read_checkpoint(zipped, "weights")
