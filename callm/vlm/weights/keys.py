"""Key mapping: each published layout's tensor names renamed to callm's modules.

Layouts: LAVIS ``eva_vit_g.pth`` (EVA ViT-g) and ``blip2_pretrained_flant5xxl.pth`` (Q-Former, query tokens and
``ln_vision``, which becomes ``vision_model.post_layernorm``); an HF BLIP-2 folder; Video-LLaMA checkpoints, whose
``model`` entry holds the video Q-Former, its query tokens, the frame position embedding and ``llama_proj``.
Keys a layout carries but Video-LLaMA never uses (BERT's text side, the LLM side of BLIP-2) are kept as ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from callm.vlm.weights.files import QFORMER, VIDEO, VISION


@dataclass
class MappedWeights:
    """One source's tensors renamed to a module's keys, with the source keys that did not fit or were left out."""

    component: str
    source: str
    owns: tuple[str, ...]  # prefixes of the module keys this source must fill
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)  # module key -> source key, for error messages
    unexpected: list[str] = field(default_factory=list)  # source keys in the component's namespace that fit nowhere
    ignored: list[str] = field(default_factory=list)  # source keys Video-LLaMA does not use either

    def put(self, target: str, source_key: str, tensor: torch.Tensor) -> None:
        self.tensors[target] = tensor
        self.origins[target] = source_key


def fuse_qv_bias(mapped: MappedWeights) -> None:
    """EVA keeps q and v biases apart and has no k bias; Blip2VisionModel has one ``qkv.bias`` = [q, 0, v]."""
    for q_key in [k for k in mapped.tensors if k.endswith("self_attn.q_bias")]:
        stem = q_key.removesuffix("q_bias")
        if stem + "v_bias" not in mapped.tensors:
            continue  # left as is: reported as unexpected, and qkv.bias as missing
        q_bias, v_bias = mapped.tensors.pop(q_key), mapped.tensors.pop(stem + "v_bias")
        origin = mapped.origins.pop(q_key)
        mapped.origins.pop(stem + "v_bias")
        mapped.put(
            stem + "qkv.bias",
            origin.removesuffix("q_bias") + "{q,v}_bias",
            torch.cat([q_bias, torch.zeros_like(v_bias), v_bias]),
        )


EVA_EMBEDDINGS = {
    "cls_token": "embeddings.class_embedding",
    "pos_embed": "embeddings.position_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
}
EVA_BLOCK_PARTS = {
    "norm1.": "layer_norm1.",
    "norm2.": "layer_norm2.",
    "attn.qkv.": "self_attn.qkv.",
    "attn.q_bias": "self_attn.q_bias",
    "attn.v_bias": "self_attn.v_bias",
    "attn.proj.": "self_attn.projection.",
    "mlp.fc1.": "mlp.fc1.",
    "mlp.fc2.": "mlp.fc2.",
}
# LAVIS's ln_vision is torch's nn.LayerNorm with its default epsilon (BLIP-2's Blip2Base.init_vision_encoder).
LAVIS_LN_VISION_EPS = 1e-5
# EVA's own final norm and classifier: BLIP-2 reads the last kept block's output through ln_vision instead.
EVA_HEAD = ("norm.", "fc_norm.", "head.")
EVA_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")


def _eva_unused(name: str, num_layers: int) -> bool:
    block = EVA_BLOCK.fullmatch(name)
    # BLIP-2 keeps the first 39 of EVA ViT-g's 40 blocks: its features are the penultimate layer's.
    return name.startswith(EVA_HEAD) or (block is not None and int(block[1]) >= num_layers)


def _eva_key(name: str) -> str | None:
    if name in EVA_EMBEDDINGS:
        return "vision_model." + EVA_EMBEDDINGS[name]
    block = EVA_BLOCK.fullmatch(name)
    if block is None:
        return None
    for old, new in EVA_BLOCK_PARTS.items():
        if block[2].startswith(old):
            return f"vision_model.encoder.layers.{block[1]}.{new}{block[2].removeprefix(old)}"
    return None


def map_lavis_vision(state: Mapping[str, torch.Tensor], num_layers: int, source: str) -> MappedWeights:
    """LAVIS EVA ViT keys (bare as in ``eva_vit_g.pth``, or under ``visual_encoder.``) -> ``vision_model.*``.

    ``ln_vision`` is not here: LAVIS trains it with the Q-Former and stores it in the Q-Former checkpoint.
    """
    prefix = "visual_encoder." if any(k.startswith("visual_encoder.") for k in state) else ""
    mapped = MappedWeights(VISION, source, owns=("vision_model.embeddings.", "vision_model.encoder."))
    for key, tensor in state.items():
        name = key.removeprefix(prefix)
        target = _eva_key(name)
        if not key.startswith(prefix) or _eva_unused(name, num_layers):
            mapped.ignored.append(key)
        elif target is None:
            mapped.unexpected.append(key)
        else:
            mapped.put(target, key, tensor)
    fuse_qv_bias(mapped)
    return mapped


BERT_TEXT_SIDE = re.compile(
    r"embeddings\.(word_embeddings\..+|position_embeddings\..+|position_ids)"
    r"|encoder\.layer\.\d+\.(intermediate|output)\..+"
)


def bert_qformer_key(name: str) -> str | None:
    """A LAVIS BERT Q-Former key (after ``bert.``) -> the Blip2QFormerModel key; None for the text side.

    Only query tokens pass through callm's Q-Formers, so word and position embeddings and the text feed-forward
    (``intermediate`` / ``output``, next to the query path's ``intermediate_query`` / ``output_query``) are unused.
    """
    if BERT_TEXT_SIDE.fullmatch(name):
        return None
    if name.startswith("embeddings.LayerNorm."):
        return "layernorm." + name.removeprefix("embeddings.LayerNorm.")
    return re.sub(r"\.(attention|crossattention)\.self\.", r".\1.attention.", name)


def lavis_qformer_key(key: str) -> str:
    """The inverse of ``bert_qformer_key`` for the keys a Blip2QFormerModel has."""
    if key.startswith("layernorm."):
        return "embeddings.LayerNorm." + key.removeprefix("layernorm.")
    return re.sub(r"\.(attention|crossattention)\.attention\.", r".\1.self.", key)


def _map_bert(mapped: MappedWeights, key: str, tensor: torch.Tensor, bert_prefix: str, target_prefix: str) -> None:
    target = bert_qformer_key(key.removeprefix(bert_prefix))
    if target is None:
        mapped.ignored.append(key)
    else:
        mapped.put(target_prefix + target, key, tensor)


def map_lavis_qformer(state: Mapping[str, torch.Tensor], source: str) -> MappedWeights:
    """LAVIS BLIP-2 checkpoint -> ``qformer.*``, ``query_tokens`` and ``vision_model.post_layernorm.*``.

    Everything else in it (the text head ``Qformer.cls``, the LLM side such as ``t5_proj``, a bundled ViT) is
    not the Q-Former's business and is ignored.
    """
    mapped = MappedWeights(QFORMER, source, owns=("qformer.", "query_tokens", "vision_model.post_layernorm."))
    for key, tensor in state.items():
        if key == "query_tokens":
            mapped.put(key, key, tensor)
        elif key.startswith("ln_vision."):
            mapped.put("vision_model.post_layernorm." + key.removeprefix("ln_vision."), key, tensor)
        elif key.startswith("Qformer.bert."):
            _map_bert(mapped, key, tensor, "Qformer.bert.", "qformer.")
        else:
            mapped.ignored.append(key)
    return mapped


def map_hf_blip2(state: Mapping[str, torch.Tensor], component: str, source: str) -> MappedWeights:
    """HF BLIP-2 keys are already callm's; only checkpoints from older transformers split the q/v biases."""
    owns = ("vision_model.",) if component == VISION else ("qformer.", "query_tokens")
    mapped = MappedWeights(component, source, owns=owns)
    for key, tensor in state.items():
        if key.startswith(owns):
            mapped.put(key, key, tensor)
    fuse_qv_bias(mapped)
    return mapped


VIDEO_BRANCH = ("video_query_tokens", "video_frame_position_embedding.", "llama_proj.")


def map_video_llama(state: Mapping[str, torch.Tensor], source: str) -> MappedWeights:
    """Video-LLaMA checkpoint -> VideoQFormer keys; frozen parts' buffers and the audio branch are ignored."""
    mapped = MappedWeights(VIDEO, source, owns=("",))
    for key, tensor in state.items():
        if key.startswith("video_Qformer.bert."):
            _map_bert(mapped, key, tensor, "video_Qformer.bert.", "video_qformer.")
        elif key.startswith(VIDEO_BRANCH):
            mapped.put(key, key, tensor)
        else:
            mapped.ignored.append(key)
    return mapped


def video_llama_key(key: str) -> str:
    """A VideoQFormer key -> the official Video-LLaMA checkpoint key (the inverse of ``map_video_llama``)."""
    if key.startswith("video_qformer."):
        return "video_Qformer.bert." + lavis_qformer_key(key.removeprefix("video_qformer."))
    return key
