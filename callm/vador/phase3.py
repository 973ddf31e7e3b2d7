"""`callm finetune --adaptor`: VAD-LLaMA's phase 3, the adaptor instruction-tuned on the VADor's own answers.

For every video of the features folders, the trained VADor scores the clips online (as ``detect --explainer ltc``
does) and the events of its scores give the pseudo-instruction's answer, the time-stamped template
("Yes, there are anomalies from 1.5s to 2s.", or "No, there are no anomalies."). One example per video: the
question with one adaptor token per clip, then the answer. Only the adaptor learns; the VADor, the encoder (its
features are precomputed) and the LLM are frozen, and the loss is the answer tokens' alone. The loop is the one
``callm finetune`` trains ``llama_proj`` with (``callm.vlm.finetune.train_steps``).

Output folder::

    OUT/adaptor.safetensors, OUT/adaptor.json   the adaptor (``callm.vador.adaptor``), its training report inside
    OUT/checkpoint/                               the state --resume continues from
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from callm.device import parse_dtype
from callm.errors import CallmError
from callm.vador.adaptor import (
    DEFAULT_QUESTION,
    Adaptor,
    AdaptorConfig,
    AdaptorLLM,
    AdaptorPrompt,
    AdaptorWeights,
    save_adaptor,
    state_fingerprint,
)
from callm.vador.features import FeatureIndex, VideoFeatures
from callm.vador.online import OnlineScorer, clip_events, template_answer
from callm.vador.weights import VADorWeights
from callm.vlm.config import VLMConfig
from callm.vlm.explain import generation_options
from callm.vlm.finetune import MAX_ANSWER_TOKENS, LoopSettings, check_resume, train_steps
from callm.vlm.weights.llm import load_language_model

CHECKPOINT_DIR = "checkpoint"


@dataclass(frozen=True)
class PseudoInstruction:
    """One video as the VADor sees it: its clips' [x, x~], when they start, and the answer its scores give."""

    video: str
    clip_starts: list[float]
    pairs: torch.Tensor  # (clips, 2 dim)
    answer: str


def pseudo_instructions(
    vador: VADorWeights, videos: Sequence[VideoFeatures], progress: Progress | None = None
) -> list[PseudoInstruction]:
    """Score every video's stored features online and turn the scores into the answer ``detect`` would template
    (at the VADor's own threshold)."""
    scorer, threshold = OnlineScorer(vador.model), vador.threshold
    task = progress.add_task("scoring videos", total=len(videos)) if progress else None
    instructions = []
    for entry in videos:
        scorer.reset()
        steps = [scorer.step(row) for row in entry.load()]
        scores = np.array([step.score for step in steps])
        # The answer reads the events' times alone; their box (the whole frame) is unknown from features.
        events = clip_events(scores, entry.clips, entry.num_frames, entry.fps, (0, 0), threshold)
        instructions.append(
            PseudoInstruction(
                entry.video,
                [start / entry.fps for start, _ in entry.clips],
                torch.stack([step.pair for step in steps]),
                template_answer(events),
            )
        )
        if progress is not None and task is not None:
            progress.update(task, advance=1)
    return instructions


def fingerprint(instructions: Sequence[PseudoInstruction], prompt: AdaptorPrompt) -> str:
    """Names the training data, so --resume refuses a checkpoint trained on other data."""
    digest = hashlib.sha256(json.dumps(asdict(prompt)).encode())
    for item in instructions:
        digest.update(json.dumps([item.video, item.clip_starts, item.answer]).encode())
        digest.update(item.pairs.numpy().tobytes())
    return digest.hexdigest()[:16]


def finetune_adaptor(
    vador: VADorWeights,
    feature_dirs: Sequence[Path],
    config: VLMConfig,
    out: Path,
    settings: LoopSettings,
    question: str = DEFAULT_QUESTION,
    resume: bool = False,
    progress: Progress | None = None,
) -> AdaptorWeights:
    """Train a fresh adaptor behind ``vador`` for the LLM ``config`` names; write it (and its report) to ``out``."""
    indexes = [FeatureIndex.read(folder) for folder in feature_dirs]
    for index in indexes:
        vador.check_features(index.encoder, str(index.folder))
    videos = [video for index in indexes for video in index.videos]
    if not videos:
        raise CallmError(f"{feature_dirs[0]}: holds no videos' features")
    prompt = AdaptorPrompt(config.template, question, config.system_text)
    instructions = pseudo_instructions(vador, videos, progress)
    vador_fingerprint = state_fingerprint(vador.model)
    meta = {
        "settings": asdict(settings),
        "data": fingerprint(instructions, prompt),
        "vador": vador_fingerprint,
        "llm": config.llm,
    }
    checkpoint = out / CHECKPOINT_DIR
    if resume:
        check_resume(checkpoint, meta)
    lm, _ = load_language_model(config)
    lm.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):  # the initial weights come from the seed alone
        torch.manual_seed(settings.seed)
        adaptor = Adaptor(AdaptorConfig(vador.model.config.dim, lm.llm.config.hidden_size))
    adapted = AdaptorLLM(adaptor, lm, prompt, generation_options(config))
    examples = [
        adapted.example(item.pairs, item.clip_starts, item.answer, MAX_ANSWER_TOKENS, item.video)
        for item in instructions
    ]
    adaptor.train()
    loop = train_steps(
        adaptor,
        lambda batch: adapted.loss([examples[i] for i in batch]),
        len(examples),
        settings,
        checkpoint,
        meta,
        parse_dtype(config.dtype),
        resume,
        progress,
    )
    weights = AdaptorWeights(
        adaptor.eval(),
        vador_fingerprint,
        vador.features,
        prompt,
        config.llm,
        training={
            "features": [str(folder) for folder in feature_dirs],
            "videos": len(instructions),
            "answers_with_anomalies": sum(item.answer != template_answer([]) for item in instructions),
            "settings": asdict(settings),
            "steps": loop.steps,
            "losses": [round(v, 6) for v in loop.losses],
            "train_seconds": round(loop.seconds, 1),
        },
    )
    save_adaptor(weights, out)
    return weights
