"""`callm finetune`: instruction-tune Video-LLaMA's video branch on a site's pseudo-instructions, as CALLM does.

Only ``llama_proj`` learns by default (optionally the whole video branch: frame positions, video Q-Former, its
query tokens); the frame encoder and the LLM stay frozen. Each example is built by the code
``callm detect --explain`` asks with (``Explainer.prepare``: frame sampling, box focus, preprocessing, prompt
template), and the loss is the cross-entropy of the answer tokens alone (``VideoLLM.teacher_forcing``).

The frozen frame encoder (the costly ViT-g) runs once per example before training, not once per epoch: its
outputs are kept in memory in fp16 (8 frames x 32 queries x 768 = 0.4 MB per example).

Output folder::

    OUT/video_llama.pth   the video branch in the official Video-LLaMA layout ({"model": {...}})
    OUT/vlm.toml          the training config with video_llama pointing to it: callm detect --explain --vlm OUT/vlm.toml
    OUT/finetune.json     settings, data, loss per step, time
    OUT/checkpoint/       the state --resume continues from, written atomically every --save-every steps
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress

from callm.checkpoint import has_checkpoint, load_checkpoint, read_state, save_checkpoint
from callm.device import autocast, parse_dtype
from callm.errors import CallmError
from callm.files import write_json_atomic, write_text_atomic
from callm.video import DEFAULT_FOLDER_FPS, Video
from callm.vlm.config import config_toml
from callm.vlm.explain import Explainer
from callm.vlm.frames import iter_clips, sample_indices, window_indices
from callm.vlm.model import PromptTokens, VideoLLM
from callm.vlm.weights.loaders import save_video_llama

VIDEO_LLAMA_FILE = "video_llama.pth"
CONFIG_FILE = "vlm.toml"
REPORT_FILE = "finetune.json"
CHECKPOINT_DIR = "checkpoint"
# Video-LLaMA caps its training text at 320 tokens; a pseudo-instruction's answer is a sentence or two, and the
# cap only bounds the memory a long answer of a general-purpose mix file could take.
MAX_ANSWER_TOKENS = 256


@dataclass(frozen=True)
class LoopSettings:
    """The optimiser and schedule every fine-tuning run shares (``train_steps``)."""

    epochs: int = 3
    batch_size: int = 4
    grad_accum: int = 1  # micro-batches per optimiser step
    lr: float = 1e-4  # peak, after a linear warm-up; then a cosine decay to zero
    warmup: float = 0.1  # share of all steps spent warming up
    weight_decay: float = 0.05  # Video-LLaMA's
    save_every: int = 100  # optimiser steps between checkpoints
    seed: int = 0

    def __post_init__(self) -> None:
        for ok, message in self.checks():
            if not ok:
                raise CallmError(message)

    def checks(self) -> list[tuple[bool, str]]:
        return [
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.batch_size >= 1 and self.grad_accum >= 1, "batch size and gradient accumulation must be >= 1"),
            (self.lr > 0, "the learning rate must be above 0"),
            (0 <= self.warmup < 1, "warm-up must be a share of the steps in [0, 1)"),
            (self.save_every >= 1, "save-every must be at least 1"),
        ]


@dataclass(frozen=True)
class FinetuneSettings(LoopSettings):
    train_video_qformer: bool = False  # also the frame positions, video Q-Former and its query tokens
    mix_ratio: float = 0.0  # general-purpose items drawn per site item

    def checks(self) -> list[tuple[bool, str]]:
        return [*super().checks(), (self.mix_ratio >= 0, "the mix ratio must be 0 or more")]


# ---------------------------------------------------------------------------------------------------------------
# Instruction files


@dataclass(frozen=True)
class Instruction:
    """One question and answer about one clip: a window of a video, or the whole video."""

    video: Path
    question: str
    answer: str
    window: tuple[int, int] | None = None  # [start, end) frames; None = the whole video
    fps: float | None = None  # None = the video's own (frame folders: the default folder rate)
    box: tuple[int, int, int, int] | None = None  # the region to focus on, as stage 1 boxes events


def _is_int_list(value: Any, length: int) -> bool:
    return isinstance(value, list) and len(value) == length and all(isinstance(v, int) for v in value)


def _instructions_of(item: Any, base: Path) -> list[Instruction]:
    """The instructions of one item, or a reason it is not one; multi-turn QA gives one per question."""
    if not isinstance(item, dict) or not isinstance(item.get("video"), str) or not isinstance(item.get("QA"), list):
        raise ValueError('needs "video" (a path) and "QA" (a list of {"q": ..., "a": ...})')
    pairs = item["QA"]
    if not pairs or not all(
        isinstance(p, dict) and isinstance(p.get("q"), str) and isinstance(p.get("a"), str) for p in pairs
    ):
        raise ValueError('"QA" must be a non-empty list of {"q": question, "a": answer}')
    window, fps, box = item.get("window"), item.get("fps"), item.get("box")
    if window is not None and not (_is_int_list(window, 2) and 0 <= window[0] < window[1]):
        raise ValueError('"window" must be [first frame, end frame] with end > first >= 0')
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, int | float) or fps <= 0):
        raise ValueError('"fps" must be a number above 0')
    if box is not None and not _is_int_list(box, 4):
        raise ValueError('"box" must be [x0, y0, x1, y1] in pixels')
    video = Path(item["video"]).expanduser()
    return [
        Instruction(
            video=video if video.is_absolute() else base / video,
            question=pair["q"],
            answer=pair["a"],
            window=(window[0], window[1]) if window is not None else None,
            fps=float(fps) if fps is not None else None,
            box=(box[0], box[1], box[2], box[3]) if box is not None else None,
        )
        for pair in pairs
    ]


def read_instructions(path: str | Path) -> list[Instruction]:
    """A JSON list in the Video-LLaMA / VideoChat instruction layout (``callm instruct`` writes one).

    Relative video paths are relative to the file's folder.
    """
    path = Path(path)
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CallmError(f"{path}: instruction file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CallmError(f"{path}: not a JSON file ({exc})") from None
    if not isinstance(items, list) or not items:
        raise CallmError(f"{path}: must hold a non-empty JSON list of instruction items")
    instructions = []
    for number, item in enumerate(items, start=1):
        try:
            instructions.extend(_instructions_of(item, path.parent))
        except ValueError as exc:
            raise CallmError(f"{path}: item {number}: {exc}") from None
    return instructions


# ---------------------------------------------------------------------------------------------------------------
# Examples


@dataclass(frozen=True)
class Example:
    """What training needs of one instruction: the frozen frame encoder's output and the token ids."""

    frame_tokens: torch.Tensor  # (frames, queries, width), fp16 on the CPU
    prompt: PromptTokens
    answer_ids: torch.Tensor


def clip_indices(instruction: Instruction, num_frames: int, count: int) -> list[int]:
    """The frames the model sees: ``count`` sampled from the window, or from the whole video."""
    if instruction.window is None:
        return sample_indices(num_frames, count)
    return window_indices(*instruction.window, count)


@torch.no_grad()
def encode_examples(
    explainer: Explainer, instructions: Sequence[Instruction], progress: Progress | None = None
) -> list[Example]:
    """Run the frozen frame encoder over every instruction's clip, one decoding pass per video."""
    model = explainer.model
    by_video: dict[tuple[Path, float | None], list[int]] = {}
    for number, instruction in enumerate(instructions):
        by_video.setdefault((instruction.video, instruction.fps), []).append(number)
    examples: dict[int, Example] = {}
    device = model.video_qformer.llama_proj.weight.device
    task = progress.add_task("encoding frames", total=len(instructions)) if progress else None
    for (path, fps), numbers in by_video.items():
        video = Video(path, folder_fps=fps or DEFAULT_FOLDER_FPS)
        rate = fps or video.info.fps
        clips = [clip_indices(instructions[n], video.info.num_frames, explainer.config.frames) for n in numbers]
        for clip_number, frames in iter_clips(video, clips):
            instruction = instructions[numbers[clip_number]]
            timestamps = [i / rate for i in clips[clip_number]]
            boxes = None if instruction.box is None else [instruction.box] * len(frames)
            pixels, prompt = explainer.prepare(frames, timestamps, boxes, instruction.question)
            examples[numbers[clip_number]] = Example(
                model.frame_encoder(pixels.to(device)).to("cpu", torch.float16),
                model.tokenize_prompt(prompt),
                model.tokenize_answer(instruction.answer, MAX_ANSWER_TOKENS),
            )
            if progress is not None and task is not None:
                progress.update(task, advance=1)
    return [examples[n] for n in range(len(instructions))]


# ---------------------------------------------------------------------------------------------------------------
# Training


def select_trainable(model: VideoLLM, video_qformer: bool) -> dict[str, torch.nn.Parameter]:
    """Freeze everything but ``llama_proj`` (or the whole video branch); returns the trainable parameters by
    their name in ``model``."""
    model.requires_grad_(False)
    branch, prefix = (
        (model.video_qformer, "video_qformer.")
        if video_qformer
        else (model.video_qformer.llama_proj, "video_qformer.llama_proj.")
    )
    branch.requires_grad_(True)
    return {prefix + name: parameter for name, parameter in branch.named_parameters()}


def learning_rate(settings: LoopSettings, step: int, total: int) -> float:
    """Linear warm-up over the first ``warmup`` share of the steps, then a cosine decay to zero."""
    warmup = round(settings.warmup * total)
    if step < warmup:
        return settings.lr * (step + 1) / warmup
    return settings.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def step_batches(settings: LoopSettings, num_examples: int, step: int, steps_per_epoch: int) -> list[list[int]]:
    """The micro-batches (example numbers) of one optimiser step: a fixed function of the seed and the step, so a
    resumed run sees exactly the batches an unbroken one would have."""
    epoch, position = divmod(step, steps_per_epoch)
    order = np.random.default_rng([settings.seed, epoch]).permutation(num_examples)
    per_step = settings.batch_size * settings.grad_accum
    chosen = order[position * per_step : (position + 1) * per_step].tolist()
    return [chosen[i : i + settings.batch_size] for i in range(0, len(chosen), settings.batch_size)]


def draw_mix(
    site: Sequence[Instruction], general: Sequence[Instruction], settings: FinetuneSettings
) -> list[Instruction]:
    """``mix_ratio`` general-purpose items per site item, drawn once (seeded) without replacement."""
    count = min(len(general), round(settings.mix_ratio * len(site)))
    chosen = np.random.default_rng([settings.seed, 1]).choice(len(general), size=count, replace=False)
    return [general[i] for i in sorted(chosen.tolist())]


def fingerprint(instructions: Sequence[Instruction]) -> str:
    """Names the training data, so --resume refuses a checkpoint trained on other data."""
    text = json.dumps([[str(i.video), i.question, i.answer, i.window, i.fps, i.box] for i in instructions])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class LoopResult:
    losses: list[float]  # mean answer-token loss of each optimiser step
    steps: int
    seconds: float


def check_resume(checkpoint: Path, meta: dict[str, Any]) -> None:
    """Refuse to resume without a checkpoint, or from one of other data or settings; before any slow preparation."""
    if not has_checkpoint(checkpoint):
        raise CallmError(f"{checkpoint}: no checkpoint to resume from")
    if read_state(checkpoint)["meta"] != meta:
        raise CallmError(f"{checkpoint}: was trained with other data or settings; rerun without --resume or as before")


def train_steps(
    module: torch.nn.Module,
    batch_loss: Callable[[list[int]], torch.Tensor],
    num_examples: int,
    settings: LoopSettings,
    checkpoint: Path,
    meta: dict[str, Any],
    dtype: torch.dtype,
    resume: bool = False,
    progress: Progress | None = None,
) -> LoopResult:
    """The fine-tuning loop: AdamW on ``module``'s parameters that require gradients, warm-up then cosine, seeded
    batches of example numbers, gradient accumulation, autocast in ``dtype``, and ``module`` with the optimiser
    checkpointed every ``save_every`` steps (``meta`` names the run, so ``check_resume`` refuses another's).

    ``batch_loss(example numbers)`` is the mean answer-token loss of one micro-batch; what the examples are, and
    which modes (train / eval) the models are in, is the caller's.
    """
    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    device = trainable[0].device
    # fp16 gradients through a frozen fp16 LLM underflow without loss scaling; bf16 and fp32 need none.
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    steps_per_epoch = math.ceil(num_examples / (settings.batch_size * settings.grad_accum))
    total = settings.epochs * steps_per_epoch
    start, losses, seconds = 0, [], 0.0
    if resume:
        state = load_checkpoint(checkpoint, module, optimizer)
        start, losses, seconds = state["step"], state["losses"], state["seconds"]
    task = progress.add_task("fine-tuning", total=total, completed=start) if progress else None
    began = time.perf_counter() - seconds
    for step in range(start, total):
        lr = learning_rate(settings, step, total)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batches = step_batches(settings, num_examples, step, steps_per_epoch)
        step_size = sum(len(b) for b in batches)
        torch.manual_seed(settings.seed * 1_000_003 + step)  # dropout, so a resumed run repeats an unbroken one
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for batch in batches:
            with autocast(device, dtype):
                loss = batch_loss(batch)
            share = len(batch) / step_size  # micro-batches weigh by their size when accumulated
            scaler.scale(loss * share).backward()
            step_loss += loss.item() * share
        scaler.step(optimizer)
        scaler.update()
        losses.append(step_loss)
        if (step + 1) % settings.save_every == 0 or step + 1 == total:
            state = {"step": step + 1, "losses": losses, "seconds": time.perf_counter() - began, "meta": meta}
            save_checkpoint(checkpoint, module, optimizer, state)
        if progress is not None and task is not None:
            progress.update(task, advance=1, info=f"loss {step_loss:.4f}  lr {lr:.2e}")
    return LoopResult(losses, total, time.perf_counter() - began)


@dataclass
class FinetuneResult:
    losses: list[float]  # mean answer-token loss of each optimiser step
    steps: int
    site_examples: int
    mix_examples: int
    trainable: dict[str, torch.nn.Parameter]
    seconds: float


def finetune(
    explainer: Explainer,
    site: Sequence[Instruction],
    out: Path,
    settings: FinetuneSettings,
    general: Sequence[Instruction] = (),
    resume: bool = False,
    progress: Progress | None = None,
) -> FinetuneResult:
    """Train, checkpoint every ``save_every`` steps, and write the Video-LLaMA checkpoint, config and report."""
    model = explainer.model
    mix = draw_mix(site, general, settings) if settings.mix_ratio > 0 and general else []
    instructions = [*site, *mix]
    meta = {
        "settings": asdict(settings),
        "data": fingerprint(instructions),
        "base": explainer.config.video_llama,
        "llm": explainer.config.llm,
    }
    checkpoint = out / CHECKPOINT_DIR
    if resume:
        check_resume(checkpoint, meta)
    trainable = select_trainable(model, settings.train_video_qformer)
    examples = encode_examples(explainer, instructions, progress)

    def batch_loss(batch: list[int]) -> torch.Tensor:
        chosen = [examples[i] for i in batch]
        return model.loss(
            [model.teacher_forcing(e.prompt, e.answer_ids, model.video_tokens(e.frame_tokens)) for e in chosen]
        )

    model.eval()  # frozen parts keep their dropout off; a trained video Q-Former gets its own back
    model.video_qformer.train(settings.train_video_qformer)
    dtype = parse_dtype(explainer.config.dtype)
    loop = train_steps(
        model.video_qformer, batch_loss, len(examples), settings, checkpoint, meta, dtype, resume, progress
    )
    model.eval()
    result = FinetuneResult(loop.losses, loop.steps, len(site), len(mix), trainable, loop.seconds)
    write_outputs(explainer, out, result, settings)
    return result


def write_outputs(explainer: Explainer, out: Path, result: FinetuneResult, settings: FinetuneSettings) -> None:
    """The Video-LLaMA checkpoint first, then the config that names it, then the report."""
    save_video_llama(explainer.model.video_qformer, out / VIDEO_LLAMA_FILE)
    tuned = dataclasses.replace(explainer.config, video_llama=str(out / VIDEO_LLAMA_FILE))
    write_text_atomic(out / CONFIG_FILE, config_toml(tuned, out))
    write_json_atomic(
        out / REPORT_FILE,
        {
            "base": explainer.config.video_llama,
            "llm": explainer.config.llm,
            "settings": asdict(settings),
            "site_examples": result.site_examples,
            "mix_examples": result.mix_examples,
            "steps": result.steps,
            "trainable": sorted(result.trainable),
            "trainable_parameters": sum(p.numel() for p in result.trainable.values()),
            "losses": [round(v, 6) for v in result.losses],
            "train_seconds": round(result.seconds, 1),
        },
    )
