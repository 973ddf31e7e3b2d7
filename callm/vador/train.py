"""VADor training with weak labels: multiple-instance learning on each video's top-scoring clip.

Phase 1 trains the anomaly predictor alone. Phase 2 adds the context lists and trains them together with the
predictor, starting from phase 1's weights (the projections start at zero, so the first step scores exactly as
phase 1 ended). The loss (paper eq. 1) is the cross-entropy of each video's highest-scoring clip against the
video's label: an abnormal video must have at least one abnormal clip, a normal video none. In phase 2 it is
applied to the contextual scores and, as the reference code does, to the plain AP scores too, which rank the
lists. Optional terms from the reference code: smoothness (squared score change between neighbouring clips) and
sparsity (mean score), each averaged over a video's clips and over videos.

AdamW, linear warm-up then cosine decay to zero, batches of whole videos padded to the longest; after every epoch
the model, the optimiser and the losses go to ``OUT/checkpoint`` (safetensors + JSON, atomically), which
``--resume`` continues from.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import Progress

from callm.checkpoint import has_checkpoint, load_checkpoint, read_state, save_checkpoint
from callm.errors import CallmError
from callm.vador.evaluate import calibrate_threshold
from callm.vador.features import FeatureIndex, VideoFeatures
from callm.vador.labels import match_list, read_video_list, weak_labels
from callm.vador.model import Attention, ListKind, VADor, VADorConfig, VADorOutput, abnormal_probability
from callm.vador.weights import VADorWeights, load, save

CHECKPOINT_DIR = "checkpoint"


@dataclass(frozen=True)
class TrainSettings:
    """The paper's optimiser settings by default."""

    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-5
    weight_decay: float = 1e-3
    warmup: float = 0.1  # share of all steps with a linear warm-up
    smoothness: float = 0.0
    sparsity: float = 0.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mil_loss(logits: torch.Tensor, valid: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each video's top-scoring clip: logits (B, T, 2), valid (B, T), labels (B,) in {0, 1}."""
    scores = abnormal_probability(logits.detach()).masked_fill(~valid, -1.0)
    top = scores.argmax(dim=1)
    top_logits = logits[torch.arange(len(logits)), top]
    return F.cross_entropy(top_logits.float(), labels.long())


def smoothness_loss(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    pairs = (valid[:, 1:] & valid[:, :-1]).float()
    per_video = ((scores[:, 1:] - scores[:, :-1]).square() * pairs).sum(1) / pairs.sum(1).clamp(min=1)
    return per_video.mean()


def sparsity_loss(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return ((scores * valid).sum(1) / valid.sum(1)).mean()


def vador_loss(
    output: VADorOutput, valid: torch.Tensor, labels: torch.Tensor, settings: TrainSettings, with_context: bool
) -> torch.Tensor:
    loss = mil_loss(output.logits, valid, labels)
    if with_context:
        loss = loss + mil_loss(output.plain_logits, valid, labels)
    scores = abnormal_probability(output.logits)
    if settings.smoothness:
        loss = loss + settings.smoothness * smoothness_loss(scores, valid)
    if settings.sparsity:
        loss = loss + settings.sparsity * sparsity_loss(scores, valid)
    return loss


def pad_videos(features: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T_max, dim) zero-padded features and (B, T_max) valid flags."""
    length = max(len(f) for f in features)
    batch = torch.zeros(len(features), length, features[0].shape[1])
    valid = torch.zeros(len(features), length, dtype=torch.bool)
    for row, array in enumerate(features):
        batch[row, : len(array)] = torch.from_numpy(np.asarray(array))
        valid[row, : len(array)] = True
    return batch, valid


def learning_rate(settings: TrainSettings, step: int, total: int) -> float:
    warmup = max(1, round(settings.warmup * total)) if settings.warmup > 0 else 0
    if step < warmup:
        return settings.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return settings.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def standardisation(features: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and spread of every training clip's features; a constant feature gets spread 1 (it carries nothing)."""
    stacked = np.concatenate(features).astype(np.float64)
    std = stacked.std(axis=0)
    std[std < 1e-6] = 1.0
    return torch.tensor(stacked.mean(axis=0), dtype=torch.float32), torch.tensor(std, dtype=torch.float32)


def build_model(config: VADorConfig, features: Sequence[np.ndarray], init: VADor | None, seed: int = 0) -> VADor:
    """A fresh VADor: standardised on ``features``, or carrying ``init``'s predictor and standardisation (phase 2).

    The initial weights come from ``seed`` alone, without touching the caller's random state.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VADor(config)
    if init is None:
        model.feature_mean, model.feature_std = standardisation(features)
        return model
    if init.config.dim != config.dim or init.config.hidden != config.hidden:
        raise CallmError(
            f"the phase-1 VADor is {init.config.dim} wide with hidden {init.config.hidden}, these features "
            f"{config.dim} and hidden {config.hidden}"
        )
    shared = {k: v for k, v in init.state_dict().items() if not k.startswith("projections.")}
    model.load_state_dict(shared, strict=False)
    return model


@dataclass
class TrainResult:
    model: VADor
    losses: list[float]  # mean loss per epoch
    seconds: float


def train(
    features: Sequence[np.ndarray],
    labels: Sequence[int],
    model: VADor,
    settings: TrainSettings,
    checkpoint: Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> TrainResult:
    """Fit ``model`` to videos' clip features (each (clips, dim)) and weak labels; checkpoint after every epoch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(features) / settings.batch_size)
    total_steps = settings.epochs * steps_per_epoch
    meta = {"config": model.config.to_dict(), "settings": settings.to_dict(), "videos": len(features)}
    start_epoch, losses, seconds = 0, [], 0.0
    if resume:
        if checkpoint is None or not has_checkpoint(checkpoint):
            raise CallmError(f"{checkpoint}: no checkpoint to resume from")
        if read_state(checkpoint)["meta"] != meta:
            raise CallmError(f"{checkpoint}: was trained with other settings or data; rerun without --resume")
        state = load_checkpoint(checkpoint, model, optimizer)
        start_epoch, losses, seconds = state["epoch"], state["losses"], state["seconds"]
    label_tensor = torch.tensor(list(labels))
    with_context = bool(model.config.lists)
    task = progress.add_task("epochs", total=settings.epochs, completed=start_epoch) if progress else None
    for epoch in range(start_epoch, settings.epochs):
        began = time.perf_counter()
        # One permutation per epoch from the seed: a resumed run sees the same batches as an unbroken one.
        order = np.random.default_rng([settings.seed, epoch]).permutation(len(features))
        model.train()
        total = 0.0
        for step in range(steps_per_epoch):
            chosen = order[step * settings.batch_size : (step + 1) * settings.batch_size]
            batch, valid = pad_videos([features[i] for i in chosen])
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(settings, epoch * steps_per_epoch + step, total_steps)
            loss = vador_loss(model(batch, valid), valid, label_tensor[chosen], settings, with_context)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
        seconds += time.perf_counter() - began
        losses.append(total / steps_per_epoch)
        if checkpoint is not None:
            state = {"epoch": epoch + 1, "losses": losses, "seconds": seconds, "meta": meta}
            save_checkpoint(checkpoint, model, optimizer, state)
        if progress is not None and task is not None:
            progress.update(task, advance=1, info=f"loss {losses[-1]:.4f}")
    return TrainResult(model.eval(), losses, seconds)


@dataclass
class TrainingSet:
    videos: list[VideoFeatures]
    features: list[np.ndarray]  # (clips, dim) per video
    labels: list[int]  # 1 = the video contains an anomaly
    encoder: dict[str, Any]  # the encoder settings all the features share
    summary: dict[str, Any]


def load_training_set(feature_dirs: Sequence[Path], labels_path: Path | None) -> TrainingSet:
    """Features and weak labels of the training videos, the encoder settings they share, and a summary."""
    indexes = [FeatureIndex.read(d) for d in feature_dirs]
    encoder = indexes[0].encoder
    for index in indexes[1:]:
        if index.encoder != encoder:
            raise CallmError(f"{index.folder}: features of another encoder than {indexes[0].folder}'s")
    chosen = weak_labels([v for index in indexes for v in index.videos], labels_path)
    summary = {
        "features": [str(d) for d in feature_dirs],
        "labels": str(labels_path) if labels_path else "folder names",
        "normal_videos": chosen.labels.count(0),
        "abnormal_videos": chosen.labels.count(1),
        "unmatched_list_entries": chosen.unmatched,
    }
    return TrainingSet(chosen.videos, [v.load() for v in chosen.videos], chosen.labels, encoder, summary)


def held_out_normal(feature_dirs: Sequence[Path], list_path: Path, training: TrainingSet) -> list[VideoFeatures]:
    """The normal videos a list file names for calibration; refuses unknown, abnormal or training videos."""
    videos = [v for d in feature_dirs for v in FeatureIndex.read(d).videos]
    entries = read_video_list(list_path)
    trained = {v.video for v in training.videos}
    chosen = []
    for entry, video in zip(entries, match_list(entries, videos, list_path), strict=True):
        where = f"{list_path}:{entry.line}: {entry.path}"
        if video is None:
            raise CallmError(f"{where} has no features in the features folders given")
        if entry.label == 1:  # unlabelled entries are taken as the normal videos the list is for
            raise CallmError(f"{where} is labelled abnormal; calibration needs normal videos")
        if video.video in trained:
            raise CallmError(f"{where} is a training video; calibrate on normal videos the VADor did not train on")
        chosen.append(video)
    return chosen


def train_vador(
    feature_dirs: Sequence[Path],
    labels_path: Path | None,
    out: Path,
    settings: TrainSettings,
    lists: tuple[ListKind, ...] = (),
    k: int = 4,
    attention: Attention = "dot",
    init: Path | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    calibrate: Path | None = None,
    quantile: float = 0.99,
) -> VADorWeights:
    """``callm train-vador``: phase 1 (no lists) or phase 2 (lists, from ``init``'s phase-1 weights); with
    ``calibrate`` (a list of held-out normal videos) the clip threshold is fitted to them."""
    if bool(lists) != (init is not None):
        raise CallmError("phase 2 needs the phase-1 weights (--init) and context lists; phase 1 takes neither")
    training = load_training_set(feature_dirs, labels_path)
    features, labels, encoder, summary = training.features, training.labels, training.encoder, training.summary
    normal = held_out_normal(feature_dirs, calibrate, training) if calibrate is not None else []
    phase1 = load(init) if init is not None else None
    if phase1 is not None:
        phase1.check_features(encoder, str(feature_dirs[0]))
    config = VADorConfig(dim=int(features[0].shape[1]), lists=lists, k=k, attention=attention)
    model = build_model(config, features, phase1.model if phase1 else None, settings.seed)
    result = train(features, labels, model, settings, out / CHECKPOINT_DIR, resume, progress)
    weights = VADorWeights(
        result.model,
        features=encoder,
        training={
            **summary,
            "phase": 2 if config.lists else 1,
            "init": str(init) if init else None,
            "settings": settings.to_dict(),
            "epoch_losses": [round(v, 6) for v in result.losses],
            "train_seconds": round(result.seconds, 2),
        },
        calibration=calibrate_threshold(result.model, normal, quantile) if normal else {},
    )
    save(weights, out)
    return weights
