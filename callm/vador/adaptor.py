"""VAD-LLaMA's phase-3 adaptor: each clip's [x_i, x~_i] from the VADor becomes one token of the LLM.

The adaptor f is one linear layer from the VADor's 2 x dim (the clip's standardised features and its
Long-Term-Context enriched version) to the LLM's width. A video of n clips gives n tokens, which replace
``<ImageHere>`` in the prompt as Video-LLaMA's 32 video tokens do; the prompt says when each clip starts
(``clip_message``), so the LLM can answer in seconds. ``callm finetune --adaptor`` trains f alone
(``callm.vador.phase3``); ``callm detect --explainer ltc --adaptor DIR --vlm CONFIG`` answers with it.

On disk, no pickle: ``adaptor.safetensors`` (f's tensors) beside ``adaptor.json``::

    {"kind": "callm-vador-adaptor", "format_version": 1, "config": {"dim": 16, "width": 4096},
     "vador": "<sha1 of the VADor's tensors>", "features": {<the VADor's encoder settings>},
     "prompt": {"template": "llama2", "system": "", "question": "..."}, "llm": "...", "training": {...}}

The adaptor only makes sense after the VADor it was trained behind (x~ is that VADor's), in the prompt layout it
was trained with: both are checked before the LLM is loaded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from callm.errors import CallmError
from callm.vador.weights import VADorWeights
from callm.vlm.config import VLMConfig
from callm.vlm.explain import generation_options
from callm.vlm.model import GenerationOptions, LanguageModel, PromptTokens
from callm.vlm.prompt import VIDEO_SYSTEM, clip_message
from callm.vlm.weights.llm import llm_hidden_size, load_language_model
from callm.weights_folder import WeightsFolder

FOLDER = WeightsFolder(
    "callm-vador-adaptor", "a VADor adaptor", "adaptor.safetensors", "adaptor.json", "callm finetune --adaptor"
)
DEFAULT_QUESTION = "Are there any anomalies in this video? If so, when?"


@dataclass(frozen=True)
class AdaptorConfig:
    dim: int  # the VADor's feature width: the adaptor reads [x, x~], 2 x dim values per clip
    width: int  # the LLM's hidden size

    def __post_init__(self) -> None:
        if self.dim < 1 or self.width < 1:
            raise CallmError(f"adaptor dim and width must be positive, got {self.dim} and {self.width}")


class Adaptor(nn.Module):
    """f: (..., 2 dim) clip pairs [x, x~] -> (..., width) LLM tokens."""

    def __init__(self, config: AdaptorConfig) -> None:
        super().__init__()
        self.config = config
        self.proj = nn.Linear(2 * config.dim, config.width)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        return self.proj(pairs)


def state_fingerprint(module: nn.Module) -> str:
    """SHA-1 of a module's tensors (names, dtypes, shapes, values): which VADor an adaptor was trained behind."""
    digest = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name} {flat.dtype} {tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class AdaptorPrompt:
    """The conversation the adaptor was trained in, and is asked in."""

    template: str  # the prompt template (``callm.vlm.prompt.TEMPLATES``) of the LLM it was trained with
    question: str = DEFAULT_QUESTION
    system: str = VIDEO_SYSTEM


@dataclass
class AdaptorWeights:
    model: Adaptor
    vador: str  # state_fingerprint of the VADor it was trained behind
    features: dict[str, Any]  # that VADor's encoder settings
    prompt: AdaptorPrompt
    llm: str  # the LLM it was trained with (where the config named it)
    training: dict[str, Any] = field(default_factory=dict)

    def check(self, vador: VADorWeights, config: VLMConfig, llm_width: int) -> None:
        """Refuse another VADor (its x~ means something else), another template or an LLM of another width."""
        if state_fingerprint(vador.model) != self.vador or vador.features != self.features:
            raise CallmError("the adaptor was trained behind another VADor: use that one, or train an adaptor for it")
        if config.template != self.prompt.template:
            raise CallmError(
                f"the adaptor was trained with the {self.prompt.template} template, the config says {config.template}"
            )
        if llm_width != self.model.config.width:
            raise CallmError(
                f"the adaptor makes tokens {self.model.config.width} wide, but {config.llm} is {llm_width} wide: "
                f"use the LLM it was trained with ({self.llm})"
            )


def save_adaptor(weights: AdaptorWeights, folder: str | Path) -> None:
    meta = {
        "config": asdict(weights.model.config),
        "vador": weights.vador,
        "features": weights.features,
        "prompt": asdict(weights.prompt),
        "llm": weights.llm,
        "training": weights.training,
    }
    FOLDER.save(weights.model, folder, meta)


def load_adaptor(path: str | Path) -> AdaptorWeights:
    """An adaptor folder (or either file in it); one-line errors for another kind of file or damaged tensors."""
    tensors, meta = FOLDER.read_meta(path)
    try:
        model = Adaptor(AdaptorConfig(**meta["config"]))
        prompt = AdaptorPrompt(**meta["prompt"])
        vador, features, llm = str(meta["vador"]), dict(meta["features"]), str(meta["llm"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CallmError(f"{path}: damaged adaptor metadata ({exc.__class__.__name__}: {exc})") from None
    FOLDER.load_tensors(model, tensors)
    return AdaptorWeights(model.eval(), vador, features, prompt, llm, meta.get("training", {}))


@dataclass(frozen=True)
class ClipExample:
    """One phase-3 training example: a video's clip pairs, its prompt's token ids and the answer's."""

    pairs: torch.Tensor  # (clips, 2 dim)
    prompt: PromptTokens
    answer_ids: torch.Tensor


class AdaptorLLM:
    """The adaptor in front of the LLM: a video's clip pairs and clip start times -> prompt, loss, answer."""

    def __init__(self, adaptor: Adaptor, lm: LanguageModel, prompt: AdaptorPrompt, options: GenerationOptions) -> None:
        self.adaptor = adaptor.to(lm.llm.get_input_embeddings().weight.device)
        self.lm = lm
        self.prompt = prompt
        self.options = options

    @classmethod
    def load(cls, folder: Path, vador: VADorWeights, config: VLMConfig) -> AdaptorLLM:
        """A trained adaptor and the LLM the config names, after checking they fit together and the VADor."""
        weights = load_adaptor(folder)
        weights.check(vador, config, llm_hidden_size(config.llm))
        lm, _ = load_language_model(config)
        return cls(weights.model, lm, weights.prompt, generation_options(config))

    def prompt_text(self, clip_starts: Sequence[float]) -> str:
        return self.lm.template.prompt(clip_message(clip_starts, self.prompt.question), self.prompt.system)

    def tokens(self, pairs: torch.Tensor) -> torch.Tensor:
        """(clips, 2 dim) pairs -> (1, clips, width) tokens in the LLM's embedding dtype."""
        embedding = self.lm.llm.get_input_embeddings().weight
        return self.adaptor(pairs.to(embedding.device, torch.float32))[None].to(embedding.dtype)

    def _check_length(self, length: int, what: str) -> None:
        if length > self.lm.context_length:
            raise CallmError(
                f"{what}: the prompt with one token per clip and the answer take {length} tokens, more than the "
                f"LLM's {self.lm.context_length}"
            )

    def example(
        self, pairs: torch.Tensor, clip_starts: Sequence[float], answer: str, max_answer_tokens: int, what: str
    ) -> ClipExample:
        """A training example; ``what`` names the video in the error when it does not fit the LLM's context."""
        prompt = self.lm.tokenize_prompt(self.prompt_text(clip_starts))
        answer_ids = self.lm.tokenize_answer(answer, max_answer_tokens)
        self._check_length(len(prompt.before) + len(pairs) + len(prompt.after) + len(answer_ids), what)
        return ClipExample(pairs, prompt, answer_ids)

    def loss(self, examples: Sequence[ClipExample]) -> torch.Tensor:
        """Mean cross-entropy of the answers' tokens alone (``LanguageModel.teacher_forcing``)."""
        return self.lm.loss([self.lm.teacher_forcing(e.prompt, e.answer_ids, self.tokens(e.pairs)) for e in examples])

    @torch.no_grad()
    def answer(self, pairs: torch.Tensor, clip_starts: Sequence[float], what: str) -> str:
        """The LLM's answer to the adaptor's question about a video's clips (greedy unless the config samples)."""
        embeds = self.lm.embed_prompt(self.prompt_text(clip_starts), self.tokens(pairs))
        self._check_length(embeds.shape[1] + self.options.max_new_tokens, what)
        return self.lm.reply(embeds, self.options)
