"""Stage-2 weights: read each published layout, rename its keys to callm's modules, refuse what does not fit.

Layouts read:

* HF BLIP-2 folder or hub id (e.g. ``Salesforce/blip2-flan-t5-xxl``): only ``vision_model.*``, ``qformer.*`` and
  ``query_tokens`` are read, shard by shard through the weight index, so the language model is never loaded;
* LAVIS ``eva_vit_g.pth`` (EVA ViT-g) and ``blip2_pretrained_flant5xxl.pth`` (Q-Former, query tokens and
  ``ln_vision``, which becomes ``vision_model.post_layernorm``);
* Video-LLaMA checkpoints (``VL_LLaMA_2_7B_Finetuned.pth``, ``finetune-vicuna7b-v2.pth``), whose ``model`` entry
  holds the video Q-Former, its query tokens, the frame position embedding and ``llama_proj``;
* the LLM and its tokenizer from an HF folder or hub id.

Torch files are read with ``weights_only=True``: a file from a stranger can at worst fail to load. Every load
checks names and shapes against the module first and raises one ``CallmError`` line naming the component and
the keys that do not fit; keys a layout carries but Video-LLaMA never uses (BERT's text side, the LLM side of a
BLIP-2 checkpoint) are counted as ignored in the ``LoadReport``.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    Blip2Config,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from callm.device import parse_dtype, pick_device
from callm.errors import CallmError
from callm.files import write_atomic
from callm.vlm.config import HUB_ID, WEIGHT_SUFFIXES, VLMConfig
from callm.vlm.model import FrameEncoder, LanguageModel, VideoLLM, VideoQFormer
from callm.vlm.prompt import TEMPLATES

VISION = "vision encoder"
QFORMER = "Q-Former"
VIDEO = "video Q-Former"
LLM = "LLM"

WEIGHT_FILES = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
DEFAULT_QUERY_TOKENS = 32
DEFAULT_MAX_FRAMES = 32
DEFAULT_LLM_WIDTH = 4096  # LLaMA-7B

ConfigT = TypeVar("ConfigT", bound=PretrainedConfig)


@dataclass(frozen=True)
class LoadReport:
    """What one load took from one source, and what it deliberately left there."""

    component: str
    source: str
    tensors: int
    parameters: int
    ignored: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = f"{self.component}: {self.tensors} tensors, {self.parameters:,} parameters from {self.source}"
        return text + (f" ({len(self.ignored)} unused tensors ignored)" if self.ignored else "")


# ---------------------------------------------------------------------------------------------------------------
# Reading files


def first_line(exc: BaseException) -> str:
    """The gist of an error: its first sentence, or its kind when it says nothing."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return exc.__class__.__name__
    return lines[0].split(". ")[0][:160]


def _torch_load(path: Path, component: str) -> Any:
    # Zip-format files are memory-mapped, so only the tensors a load keeps are ever read from disk.
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        calls = [found[1]] if found else _pickled_calls(path)
        if calls:
            raise CallmError(
                f"{component}: {path} refused: it holds Python objects ({', '.join(calls[:3])}) besides tensors, and "
                "unpickling them could run code (callm loads with torch.load weights_only=True); re-save only its "
                "tensors with a Python you trust"
            ) from None
        raise CallmError(f"{component}: {path} is damaged or not a torch weights file") from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, TypeError, AttributeError) as exc:
        # A text or random file read as a pickle fails in any of these ways, depending on its first bytes.
        raise CallmError(f"{component}: {path} is damaged or not a torch weights file ({first_line(exc)})") from None


# What a torch checkpoint's pickle legitimately names: rebuilding tensors and the containers around them.
_TENSOR_GLOBALS = re.compile(r"^(torch\.|collections\.OrderedDict$|_codecs\.encode$|builtins\.(set|frozenset|slice)$)")


def _pickled_calls(path: Path) -> list[str]:
    """The callables a pickle names beyond tensor plumbing, read with pickletools (which executes nothing)."""
    import pickletools

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                data = archive.read(member) if member else b""
        else:
            data = path.read_bytes()
        names: list[str] = []
        strings: list[str] = []
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(str(arg))
            elif opcode.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
    except (ValueError, KeyError, OSError, zipfile.BadZipFile, pickle.UnpicklingError):
        return []
    return list(dict.fromkeys(n for n in names if not _TENSOR_GLOBALS.match(n)))


def read_checkpoint(path: str | Path, component: str) -> dict[str, torch.Tensor]:
    """The tensors of one weights file (safetensors or torch); a checkpoint's ``model`` entry is unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise CallmError(f"{component}: {path} not found")
    if path.suffix == ".safetensors":
        try:
            state: Any = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CallmError(f"{component}: {path} is damaged or not a safetensors file ({exc})") from None
    else:
        state = _torch_load(path, component)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CallmError(f"{component}: {path} does not hold a dictionary of tensors")
    return state


def is_file_source(source: str) -> bool:
    """A single weights file (LAVIS / Video-LLaMA layout) rather than an HF folder or hub id."""
    return Path(source).is_file() or source.endswith(WEIGHT_SUFFIXES)


class ModelFiles:
    """The files of a local model folder or a Hugging Face hub repo, fetched one at a time, never the whole repo.

    Hub files go through the local Hugging Face cache, so ``HF_HUB_OFFLINE=1`` works with what is cached.
    """

    def __init__(self, source: str, component: str) -> None:
        self.source = source
        self.component = component
        self.folder = Path(source) if Path(source).is_dir() else None
        self.uncached = False  # a hub file was neither reachable nor in the local cache
        if self.folder is None and not HUB_ID.fullmatch(source):
            raise CallmError(f"{component}: {source} not found (neither a folder nor a Hugging Face hub id)")

    def find(self, name: str) -> Path | None:
        """The local path of ``name``; None when the folder or repo has no such file (or, offline, none cached)."""
        if self.folder is not None:
            path = self.folder / name
            return path if path.is_file() else None
        try:
            return Path(hf_hub_download(self.source, name))
        except LocalEntryNotFoundError:  # offline (or the hub unreachable) and not in the cache
            self.uncached = True
            return None
        except EntryNotFoundError:  # the repo has no such file
            return None
        except RepositoryNotFoundError:
            raise CallmError(
                f"{self.component}: no access to hub repository {self.source} (wrong id, or gated: log in first)"
            ) from None
        except (HfHubHTTPError, OSError) as exc:
            raise CallmError(f"{self.component}: cannot fetch {name} of {self.source} ({first_line(exc)})") from None

    def require(self, name: str) -> Path:
        path = self.find(name)
        if path is None:
            raise self.missing(name)
        return path

    def missing(self, what: str) -> CallmError:
        if self.folder is not None:
            return CallmError(f"{self.component}: {what} missing in {self.folder}")
        where = f"{self.component}: {what} of hub repository {self.source} (no local folder has that name)"
        if not self.uncached:
            return CallmError(f"{where} not found")
        reason = "HF_HUB_OFFLINE=1" if hub_constants.is_offline_mode() else "the hub is unreachable"
        return CallmError(f"{where} is not in the local Hugging Face cache and {reason}: download it once online")


def _read_prefixed(path: Path, prefixes: tuple[str, ...], component: str) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as shard:
                names = shard.keys()  # a safe_open handle is not iterable
                return {k: shard.get_tensor(k) for k in names if k.startswith(prefixes)}
        except (SafetensorError, OSError) as exc:
            raise CallmError(f"{component}: {path} is damaged or not a safetensors file ({exc})") from None
    state = _torch_load(path, component)
    return {k: v for k, v in state.items() if k.startswith(prefixes)}


def read_hf_tensors(files: ModelFiles, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The tensors whose names start with ``prefixes``, from only the shards that hold them."""
    for index_name, single_name in WEIGHT_FILES:
        index = files.find(index_name)
        if index is not None:
            weight_map: dict[str, str] = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted({shard for key, shard in weight_map.items() if key.startswith(prefixes)})
        elif files.find(single_name) is not None:
            shards = [single_name]
        else:
            continue
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            tensors.update(_read_prefixed(files.require(shard), prefixes, files.component))
        return tensors
    raise files.missing("weights (model.safetensors[.index.json] or pytorch_model.bin[.index.json])")


# ---------------------------------------------------------------------------------------------------------------
# Key mapping


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


# ---------------------------------------------------------------------------------------------------------------
# Checking and assembling


def _listing(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _owner(key: str, parts: list[MappedWeights]) -> MappedWeights | None:
    """The part whose longest prefix matches: a LAVIS Q-Former file owns post_layernorm inside vision_model."""
    best: tuple[int, MappedWeights | None] = (-1, None)
    for part in parts:
        for prefix in part.owns:
            if key.startswith(prefix) and len(prefix) > best[0]:
                best = (len(prefix), part)
    return best[1]


def _mismatch(part: MappedWeights, owned: list[str], expected: Mapping[str, torch.Size]) -> str | None:
    missing = [k for k in owned if k not in part.tensors]
    unexpected = part.unexpected + [part.origins[k] for k in part.tensors if k not in expected]
    wrong = [
        f"{part.origins[k]} {tuple(t.shape)} vs {tuple(expected[k])}"
        for k, t in part.tensors.items()
        if k in expected and t.shape != expected[k]
    ]
    problems = [
        f"{label} {_listing(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape (file vs model)", wrong))
        if keys
    ]
    return f"{part.component} ({part.source}) does not match: {'; '.join(problems)}" if problems else None


def check_parts(module: nn.Module, parts: list[MappedWeights]) -> list[str]:
    """One message per part whose tensors do not fit the keys it owns in ``module``."""
    expected = {k: v.shape for k, v in module.state_dict().items()}
    owned: dict[int, list[str]] = {id(part): [] for part in parts}
    for key in expected:
        owner = _owner(key, parts)
        if owner is not None:
            owned[id(owner)].append(key)
    problems = [_mismatch(part, owned[id(part)], expected) for part in parts]
    return [p for p in problems if p]


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def assemble(build: Callable[[], ModuleT], parts: list[MappedWeights]) -> tuple[ModuleT, list[LoadReport]]:
    """Build the module without allocating it, check every part, then adopt the parts' tensors as its weights.

    Returns the module in eval mode, with one report per part.
    """
    with torch.device("meta"):
        module = build()
    problems = check_parts(module, parts)
    unowned = [k for k in module.state_dict() if _owner(k, parts) is None]
    if unowned:
        sources = " + ".join(f"{p.component} ({p.source})" for p in parts)
        problems.append(f"{sources} leave {_listing(unowned)} unfilled: pair LAVIS files with LAVIS files")
    if problems:
        raise CallmError("; ".join(problems))
    state: dict[str, torch.Tensor] = {}
    reports = []
    for part in parts:
        taken = {k: t for k, t in part.tensors.items() if _owner(k, parts) is part}
        state.update(taken)
        # Tensors a part carries for a key another part owns (HF's post_layernorm next to LAVIS's ln_vision).
        shadowed = [part.origins[k] for k in part.tensors if k not in taken]
        reports.append(
            LoadReport(
                part.component,
                part.source,
                len(taken),
                sum(t.numel() for t in taken.values()),
                tuple(part.ignored + shadowed),
            )
        )
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval(), reports  # for inference: dropout off (a trainer switches it back on)


def arch_config(
    config_class: type[ConfigT], defaults: Mapping[str, Any], overrides: Mapping[str, Any], table: str
) -> ConfigT:
    """A transformers config from callm's defaults and the ``[vlm.<table>]`` overrides; unknown names refused."""
    unknown = sorted(set(overrides) - set(config_class().to_dict()))
    if unknown:
        raise CallmError(f"[vlm.{table}]: unknown setting(s) {', '.join(unknown)}")
    return config_class(**{**defaults, **overrides})


def token_count(tensor: torch.Tensor | None, default: int) -> int:
    """Rows of a (1, N, width) query-token tensor or an (N, width) embedding; ``default`` when absent."""
    return int(tensor.shape[-2]) if tensor is not None and tensor.ndim >= 2 else default


# ---------------------------------------------------------------------------------------------------------------
# Loaders


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
        raise CallmError(f"{LLM} ({source}) does not match its config: missing {_listing(missing)}")
    if not load_in_8bit:
        llm.to(device)
    parameters = sum(p.numel() for p in llm.parameters())
    report = LoadReport(LLM, source, len(llm.state_dict()), parameters, tuple(sorted(info["unexpected_keys"])))
    return llm.eval(), tokenizer, report


def header_shapes(files: ModelFiles) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of an HF model's weights without reading the tensors (safetensors headers, or
    memory-mapped torch files)."""
    for index_name, single_name in WEIGHT_FILES:
        index = files.find(index_name)
        if index is not None:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        elif files.find(single_name) is not None:
            shards = [single_name]
        else:
            continue
        shapes: dict[str, tuple[int, ...]] = {}
        for shard_name in shards:
            path = files.require(shard_name)
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as shard:
                    names = shard.keys()  # a safe_open handle is not iterable
                    shapes |= {k: tuple(shard.get_slice(k).get_shape()) for k in names}
            else:
                shapes |= {k: tuple(v.shape) for k, v in _torch_load(path, files.component).items()}
        return shapes
    raise files.missing("weights")


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
            f"{label} {_listing(keys)}" for label, keys in (("missing", missing), ("wrong shape", wrong)) if keys
        ]
        raise CallmError(f"{LLM} ({source}) does not match its config: {'; '.join(problems)}")
    return sum(p.numel() for p in llm.parameters())


def load_language_model(config: VLMConfig) -> tuple[LanguageModel, LoadReport]:
    """The LLM a config names with its tokenizer and template, without the video branch (VAD-LLaMA's adaptor
    feeds it clip tokens of its own)."""
    device, dtype = pick_device(config.device), parse_dtype(config.dtype)
    llm, tokenizer, report = load_llm(config.llm, dtype, device, config.load_in_8bit)
    return LanguageModel(llm, tokenizer, TEMPLATES[config.template]).eval(), report


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
