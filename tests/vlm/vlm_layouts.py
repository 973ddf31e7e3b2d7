"""The published checkpoint layouts, written out by the tests from their own key tables.

These are deliberately a second, independent spelling of the layouts (HF -> LAVIS here, LAVIS -> HF in
callm.vlm.weights), so a wrong rename on either side shows up as a missing key or a different output.
The key names follow LAVIS's eva_vit.py / Qformer.py and Video-LLaMA's video_llama.py.
"""

from __future__ import annotations

import torch

# Blip2VisionModel layer part -> EVA ViT block part
EVA_PARTS = {
    "layer_norm1.": "norm1.",
    "layer_norm2.": "norm2.",
    "self_attn.qkv.weight": "attn.qkv.weight",
    "self_attn.projection.": "attn.proj.",
    "mlp.fc1.": "mlp.fc1.",
    "mlp.fc2.": "mlp.fc2.",
}
EVA_TOP = {
    "embeddings.class_embedding": "cls_token",
    "embeddings.position_embedding": "pos_embed",
    "embeddings.patch_embedding.weight": "patch_embed.proj.weight",
    "embeddings.patch_embedding.bias": "patch_embed.proj.bias",
}


def lavis_vit_state(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``eva_vit_g.pth``: bare EVA keys, q/v biases apart, plus one block more than BLIP-2 uses and EVA's head."""
    out: dict[str, torch.Tensor] = {}
    num_layers = 0
    for key, tensor in hf_state.items():
        if not key.startswith("vision_model.") or "post_layernorm" in key:
            continue
        name = key.removeprefix("vision_model.")
        if name in EVA_TOP:
            out[EVA_TOP[name]] = tensor
            continue
        _, _, layer, part = name.split(".", 3)  # encoder.layers.<i>.<part>
        num_layers = max(num_layers, int(layer) + 1)
        if part == "self_attn.qkv.bias":
            q, _, v = tensor.chunk(3)
            out[f"blocks.{layer}.attn.q_bias"], out[f"blocks.{layer}.attn.v_bias"] = q, v
            continue
        (old,) = [old for old in EVA_PARTS if part.startswith(old)]
        out[f"blocks.{layer}.{EVA_PARTS[old]}{part.removeprefix(old)}"] = tensor
    # EVA ViT-g has one block more than BLIP-2 keeps, and a final norm
    for key in [k for k in out if k.startswith("blocks.0.")]:
        out[key.replace("blocks.0.", f"blocks.{num_layers}.")] = torch.randn_like(out[key])
    out["norm.weight"], out["norm.bias"] = (
        torch.ones(out["cls_token"].shape[-1]),
        torch.zeros(out["cls_token"].shape[-1]),
    )
    return out


def bert_key(qformer_key: str) -> str:
    """A Blip2QFormerModel key -> LAVIS's BERT key (after ``bert.``)."""
    if qformer_key.startswith("layernorm."):
        return "embeddings.LayerNorm." + qformer_key.removeprefix("layernorm.")
    return qformer_key.replace(".attention.attention.", ".attention.self.").replace(
        ".crossattention.attention.", ".crossattention.self."
    )


def bert_text_side(width: int, layers: int, vocab: int = 50) -> dict[str, torch.Tensor]:
    """What a LAVIS BERT Q-Former carries for text, which the query path never uses."""
    text = {
        "embeddings.word_embeddings.weight": torch.randn(vocab, width),
        "embeddings.position_embeddings.weight": torch.randn(16, width),
        "embeddings.position_ids": torch.arange(16)[None],
    }
    for i in range(layers):
        text |= {
            f"encoder.layer.{i}.intermediate.dense.weight": torch.randn(2 * width, width),
            f"encoder.layer.{i}.output.dense.weight": torch.randn(width, 2 * width),
            f"encoder.layer.{i}.output.LayerNorm.weight": torch.ones(width),
        }
    return text


def lavis_qformer_checkpoint(hf_state: dict[str, torch.Tensor], layers: int) -> dict[str, object]:
    """``blip2_pretrained_flant5xxl.pth``: {"model": Q-Former + query tokens + ln_vision + text side + T5 side}."""
    model: dict[str, torch.Tensor] = {"query_tokens": hf_state["query_tokens"]}
    for key, tensor in hf_state.items():
        if key.startswith("qformer."):
            model["Qformer.bert." + bert_key(key.removeprefix("qformer."))] = tensor
        elif key.startswith("vision_model.post_layernorm."):
            model["ln_vision." + key.removeprefix("vision_model.post_layernorm.")] = tensor
    width = hf_state["query_tokens"].shape[-1]
    model |= {"Qformer.bert." + k: v for k, v in bert_text_side(width, layers).items()}
    model |= {
        "Qformer.cls.predictions.bias": torch.zeros(50),
        "t5_proj.weight": torch.randn(8, width),
        "t5_proj.bias": torch.zeros(8),
    }
    return {"model": model, "epoch": 9}


def official_video_llama_checkpoint(
    llm_width: int, width: int = 768, layers: int = 2, queries: int = 32, frames: int = 32
) -> dict[str, object]:
    """A Video-LLaMA VL checkpoint as its runner saves it: the video branch under ``model`` (its BERT with
    ``intermediate`` / ``output`` set to None), buffers of frozen parts, and training state beside it."""
    ffn = 4 * width
    bert: dict[str, torch.Tensor] = {
        "embeddings.LayerNorm.weight": torch.randn(width),
        "embeddings.LayerNorm.bias": torch.randn(width),
        "embeddings.position_ids": torch.arange(512)[None],
    }
    for i in range(layers):
        for attention in ("attention", "crossattention"):
            for projection in ("query", "key", "value"):
                bert[f"encoder.layer.{i}.{attention}.self.{projection}.weight"] = torch.randn(width, width)
                bert[f"encoder.layer.{i}.{attention}.self.{projection}.bias"] = torch.randn(width)
            bert[f"encoder.layer.{i}.{attention}.output.dense.weight"] = torch.randn(width, width)
            bert[f"encoder.layer.{i}.{attention}.output.dense.bias"] = torch.randn(width)
            bert[f"encoder.layer.{i}.{attention}.output.LayerNorm.weight"] = torch.randn(width)
            bert[f"encoder.layer.{i}.{attention}.output.LayerNorm.bias"] = torch.randn(width)
        bert[f"encoder.layer.{i}.intermediate_query.dense.weight"] = torch.randn(ffn, width)
        bert[f"encoder.layer.{i}.intermediate_query.dense.bias"] = torch.randn(ffn)
        bert[f"encoder.layer.{i}.output_query.dense.weight"] = torch.randn(width, ffn)
        bert[f"encoder.layer.{i}.output_query.dense.bias"] = torch.randn(width)
        bert[f"encoder.layer.{i}.output_query.LayerNorm.weight"] = torch.randn(width)
        bert[f"encoder.layer.{i}.output_query.LayerNorm.bias"] = torch.randn(width)
    model = {f"video_Qformer.bert.{k}": v for k, v in bert.items()} | {
        "video_query_tokens": torch.randn(1, queries, width),
        "video_frame_position_embedding.weight": torch.randn(frames, width),
        "llama_proj.weight": torch.randn(llm_width, width),
        "llama_proj.bias": torch.randn(llm_width),
        # buffers of frozen parts survive the runner's "trainable only" filter
        "Qformer.bert.embeddings.position_ids": torch.arange(512)[None],
        "llama_model.model.layers.0.self_attn.rotary_emb.inv_freq": torch.randn(64),
    }
    return {"model": model, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}, "epoch": 2}


FROZEN_VIDEO_LLAMA_KEYS = {
    "video_Qformer.bert.embeddings.position_ids",
    "Qformer.bert.embeddings.position_ids",
    "llama_model.model.layers.0.self_attn.rotary_emb.inv_freq",
}
