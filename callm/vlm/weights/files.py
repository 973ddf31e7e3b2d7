"""Reading stage-2 weight files: torch files (never unpickling code), safetensors, HF folders and hub ids.

Torch files are read with ``weights_only=True``: a file from a stranger can at worst fail to load.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

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

from callm.errors import CallmError
from callm.vlm.config import HUB_ID, WEIGHT_SUFFIXES

VISION = "vision encoder"
QFORMER = "Q-Former"
VIDEO = "video Q-Former"
LLM = "LLM"

WEIGHT_FILES = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


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
