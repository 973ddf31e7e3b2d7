"""Video-LLaMA's vision-language branch as plain modules: frame encoder, video Q-Former, and the LLM around them.

Nothing here reads a file; ``callm.vlm.weights`` builds these modules and fills them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    Blip2QFormerConfig,
    Blip2QFormerModel,
    Blip2VisionConfig,
    Blip2VisionModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    TextStreamer,
)

from callm.vlm.prompt import PLACEHOLDER, Template


class FrameEncoder(nn.Module):
    """BLIP-2's image side: (frames, 3, S, S) pixels -> (frames, queries, width) tokens.

    ``vision_model`` is EVA ViT-g/14 in the real weights; its ``post_layernorm`` plays LAVIS's ``ln_vision``.
    The Q-Former's learned query tokens read the patch features through cross-attention.
    """

    def __init__(
        self,
        vision_config: Blip2VisionConfig,
        qformer_config: Blip2QFormerConfig,
        num_query_tokens: int = 32,
        ln_vision_eps: float | None = None,
    ) -> None:
        """``ln_vision_eps``: the epsilon of the norm between the ViT and the Q-Former, where the checkpoint's
        differs from the ViT's own (LAVIS's ``ln_vision`` is a plain ``nn.LayerNorm``, 1e-5; the ViT's are 1e-6)."""
        super().__init__()
        self.vision_model = Blip2VisionModel(vision_config)
        if ln_vision_eps is not None:
            self.vision_model.post_layernorm.eps = ln_vision_eps
        self.qformer = Blip2QFormerModel(qformer_config)
        self.query_tokens = nn.Parameter(torch.zeros(1, num_query_tokens, qformer_config.hidden_size))

    @property
    def image_size(self) -> int:
        return int(self.vision_model.config.image_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        image_embeds = self.vision_model(pixel_values=pixel_values).last_hidden_state
        queries = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        return self.qformer(query_embeds=queries, encoder_hidden_states=image_embeds).last_hidden_state


class VideoQFormer(nn.Module):
    """Video-LLaMA's temporal part: (batch, frames, queries, width) frame tokens -> (batch, video queries, LLM width).

    A learned position per frame is added to that frame's tokens, all frames' tokens are flattened into one
    sequence, and a small Q-Former with its own query tokens summarises it; ``llama_proj`` maps the result
    into the LLM's embedding space. Attribute names other than ``video_qformer`` are Video-LLaMA's own.
    """

    def __init__(
        self,
        qformer_config: Blip2QFormerConfig,
        llm_hidden_size: int,
        num_query_tokens: int = 32,
        max_frames: int = 32,
    ) -> None:
        super().__init__()
        self.video_frame_position_embedding = nn.Embedding(max_frames, qformer_config.encoder_hidden_size)
        self.video_qformer = Blip2QFormerModel(qformer_config)
        self.video_query_tokens = nn.Parameter(torch.zeros(1, num_query_tokens, qformer_config.hidden_size))
        self.llama_proj = nn.Linear(qformer_config.hidden_size, llm_hidden_size)

    @property
    def max_frames(self) -> int:
        return self.video_frame_position_embedding.num_embeddings

    def forward(self, frame_tokens: torch.Tensor) -> torch.Tensor:
        batch, frames, queries, width = frame_tokens.shape
        if frames > self.max_frames:
            raise ValueError(f"{frames} frames given, the frame position embedding has {self.max_frames}")
        positions = self.video_frame_position_embedding(torch.arange(frames, device=frame_tokens.device))
        tokens = (frame_tokens + positions[None, :, None, :]).reshape(batch, frames * queries, width)
        video_queries = self.video_query_tokens.expand(batch, -1, -1)
        summary = self.video_qformer(query_embeds=video_queries, encoder_hidden_states=tokens).last_hidden_state
        return self.llama_proj(summary)


IGNORE_INDEX = -100  # the label cross-entropy skips: prompt and video positions


@dataclass(frozen=True)
class PromptTokens:
    """A prompt's token ids on either side of the placeholder (1-D); BOS leads ``before``."""

    before: torch.Tensor
    after: torch.Tensor


@dataclass(frozen=True)
class GenerationOptions:
    """Greedy by default so the same clip always gets the same answer; sampling is opt-in and seeded."""

    max_new_tokens: int = 128
    sample: bool = False
    temperature: float = 1.0
    top_p: float = 0.9
    seed: int = 0


class StopAtText(StoppingCriteria):
    """Stop once the decoded reply holds ``text``.

    Decoding instead of matching token ids works with any tokenizer ("###" has several LLaMA tokenizations,
    which Video-LLaMA lists by hand); replies are short, so decoding each step costs nothing that matters.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, text: str) -> None:
        self.tokenizer = tokenizer
        self.text = text

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        # Given only embeddings, generate's input_ids hold just the generated tokens.
        done = [self.text in self.tokenizer.decode(row, skip_special_tokens=False) for row in input_ids]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class ReplyStreamer(TextStreamer):
    """Hands a reply to ``on_text`` piece by piece as it is generated, up to the template's stop text.

    The tail that could be the start of the stop text ("#", "##" before "###") is held back until the next
    piece settles it, so the stop text never shows. Leading spaces are dropped, as the final answer drops them;
    a role label the model repeats mid-reply, which the final answer cuts, cannot be foreseen and does show.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: str, on_text: Callable[[str], None]) -> None:
        # skip_prompt: generate first passes the prompt's ids (none, when given only embeddings).
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.stop = stop
        self.on_text = on_text
        self.received = ""
        self.shown = 0

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.received += text
        visible, stopped, _ = self.received.partition(self.stop)
        if not (stopped or stream_end):
            visible = visible[: len(visible) - _partial_stop(visible, self.stop)]
        visible = visible.lstrip()
        if len(visible) > self.shown:
            self.on_text(visible[self.shown :])
            self.shown = len(visible)


def _partial_stop(text: str, stop: str) -> int:
    """Length of the longest end of ``text`` that begins ``stop``."""
    return next((n for n in range(len(stop) - 1, 0, -1) if text.endswith(stop[:n])), 0)


class LanguageModel(nn.Module):
    """The LLM with its tokenizer and prompt template: prompts with tokens spliced in at the placeholder -> answers,
    and the training loss of an answer.

    What the spliced tokens are is the caller's: Video-LLaMA's video tokens (``VideoLLM``), or VAD-LLaMA's one
    token per clip from the phase-3 adaptor (``callm.vador.adaptor``).
    """

    def __init__(self, llm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: Template) -> None:
        super().__init__()
        self.llm = llm
        self.tokenizer = tokenizer
        self.template = template

    def tokenize_prompt(self, prompt: str) -> PromptTokens:
        """The token ids around the placeholder: BOS on the first piece only, as Video-LLaMA's demo sends them."""
        before, placeholder, after = prompt.partition(PLACEHOLDER)
        if not placeholder or PLACEHOLDER in after:
            raise ValueError(f"the prompt must hold {PLACEHOLDER} exactly once")
        device = self.llm.get_input_embeddings().weight.device
        before_ids, after_ids = (
            self.tokenizer(text, return_tensors="pt", add_special_tokens=first).input_ids[0].to(device)
            for text, first in ((before, True), (after, False))
        )
        return PromptTokens(before_ids, after_ids)

    def tokenize_answer(self, answer: str, max_tokens: int) -> torch.Tensor:
        """The ids a fine-tuned model should generate after the prompt: the answer, then the template's reply end.

        No leading space: the tokenizer's own word-start marker (LLaMA's dummy prefix) supplies it, which is what
        greedy decoding after "Assistant:" or "[/INST]" produces.
        """
        ids = self.tokenizer(answer + self.template.reply_end, return_tensors="pt", add_special_tokens=False)
        return ids.input_ids[0, :max_tokens].to(self.llm.get_input_embeddings().weight.device)

    def embed_prompt(self, prompt: str, video_tokens: torch.Tensor) -> torch.Tensor:
        """Embed the text around the placeholder with the video tokens between."""
        tokens = self.tokenize_prompt(prompt)
        return self._embed([tokens.before, video_tokens, tokens.after])

    def _embed(self, pieces: list[torch.Tensor]) -> torch.Tensor:
        """(1, length, width) embeddings of token-id pieces (1-D) and already embedded pieces (1, n, width)."""
        embed = self.llm.get_input_embeddings()
        embedded = [embed(p)[None] if p.ndim == 1 else p.to(embed.weight.device) for p in pieces]
        return torch.cat(embedded, dim=1)

    def teacher_forcing(
        self, prompt: PromptTokens, answer_ids: torch.Tensor, video_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One training example: (1, L, width) embeddings of prompt + answer and (L,) labels that are
        ``IGNORE_INDEX`` everywhere but on the answer ids, so the loss is the answer's alone."""
        inputs_embeds = self._embed([prompt.before, video_tokens, prompt.after, answer_ids])
        prompt_length = inputs_embeds.shape[1] - len(answer_ids)
        ignored = torch.full((prompt_length,), IGNORE_INDEX, dtype=torch.long, device=answer_ids.device)
        return inputs_embeds, torch.cat([ignored, answer_ids])

    def loss(self, examples: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Mean cross-entropy over the answer tokens of a batch of ``teacher_forcing`` examples (padded right)."""
        longest = max(embeds.shape[1] for embeds, _ in examples)
        inputs, labels, mask = [], [], []
        for embeds, example_labels in examples:
            pad = longest - embeds.shape[1]
            inputs.append(nn.functional.pad(embeds[0], (0, 0, 0, pad)))
            labels.append(nn.functional.pad(example_labels, (0, pad), value=IGNORE_INDEX))
            mask.append(nn.functional.pad(torch.ones_like(example_labels), (0, pad)))
        output = self.llm(
            inputs_embeds=torch.stack(inputs), attention_mask=torch.stack(mask), labels=torch.stack(labels)
        )
        return output.loss

    @property
    def context_length(self) -> int:
        """The most tokens the LLM attends to: prompt, video tokens and answer together."""
        return int(self.llm.config.max_position_embeddings)

    @torch.no_grad()
    def reply(
        self, inputs_embeds: torch.Tensor, options: GenerationOptions, on_text: Callable[[str], None] | None = None
    ) -> str:
        """The cleaned answer to an embedded prompt; ``on_text`` receives its text as it is generated."""
        sampling = (
            {"do_sample": True, "temperature": options.temperature, "top_p": options.top_p}
            if options.sample
            else {"do_sample": False}
        )
        eos = self.tokenizer.eos_token_id
        device = inputs_embeds.device
        # fork_rng: a seeded sample must neither depend on nor disturb the caller's random state.
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(options.seed)
            output = self.llm.generate(
                inputs_embeds=inputs_embeds,
                attention_mask=torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=device),
                max_new_tokens=options.max_new_tokens,
                max_length=None,  # else a max_length in the LLM's generation_config competes with max_new_tokens
                stopping_criteria=StoppingCriteriaList([StopAtText(self.tokenizer, self.template.stop)]),
                streamer=None if on_text is None else ReplyStreamer(self.tokenizer, self.template.stop, on_text),
                eos_token_id=eos,
                pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos,
                **sampling,
            )
        # Given only embeddings, generate returns only the new tokens.
        return self.template.clean(self.tokenizer.decode(output[0], skip_special_tokens=True))


class VideoLLM(LanguageModel):
    """The whole explainer: frames -> video tokens spliced into the prompt at the placeholder -> LLM answer."""

    def __init__(
        self,
        frame_encoder: FrameEncoder,
        video_qformer: VideoQFormer,
        llm: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        template: Template,
    ) -> None:
        super().__init__(llm, tokenizer, template)
        self.frame_encoder = frame_encoder
        self.video_qformer = video_qformer

    def encode_video(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(frames, 3, S, S) pixels of one clip -> (1, video queries, LLM width) in the LLM's embedding dtype."""
        device = self.video_qformer.llama_proj.weight.device
        return self.video_tokens(self.frame_encoder(pixel_values.to(device)))

    def video_tokens(self, frame_tokens: torch.Tensor) -> torch.Tensor:
        """(frames, queries, width) frame-encoder output of one clip -> (1, video queries, LLM width)."""
        device = self.video_qformer.llama_proj.weight.device
        video_tokens = self.video_qformer(frame_tokens.to(device).float().unsqueeze(0))
        return video_tokens.to(self.llm.get_input_embeddings().weight.dtype)

    @torch.no_grad()
    def answer(self, pixel_values: torch.Tensor, prompt: str, options: GenerationOptions) -> str:
        return self.reply(self.embed_prompt(prompt, self.encode_video(pixel_values)), options)
