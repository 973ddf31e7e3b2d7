"""Training of the stage-1 autoencoder: frame cache, sampling, AdamW, checkpoints, resume, and cross-fitting.

The gate's threshold must describe footage the model never trained on, yet every normal frame a user gives is
worth training on. Cross-fitting does both: the footage is split into ``folds`` parts; for each part a model
trains on the others and scores it; the pooled out-of-sample scores calibrate the final model, which then
trains on everything. The fold models train as long as the same rule gives for their share of the footage,
so they are the model one gets from that much footage, slightly weaker than the final one: their threshold
errs toward fewer false alarms.

The model lives in ``model.py``; the calibration in ``calibrate.py``.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from rich.progress import Progress

from callm.ae.budget import default_steps
from callm.ae.calibrate import NormalFootage, ScoringSettings, calibrate
from callm.ae.model import AEConfig, ConvAutoencoder3d
from callm.ae.motion import FlowTiming
from callm.ae.score import FrameScorer, to_model_range
from callm.ae.weights import AEWeights
from callm.ae.weights import save as save_weights
from callm.checkpoint import has_checkpoint, load_checkpoint, read_state, save_checkpoint
from callm.device import autocast
from callm.errors import CallmError
from callm.files import write_atomic
from callm.video import WINDOW, Video, find_videos

CHECKPOINT_DIR = "checkpoint"
CACHE_DIR = "frame-cache"
CHUNK_STEPS = 100  # steps between checkpoints; each chunk draws its clips from its own seeded generator


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 0  # 0: default_steps of the footage
    batch_size: int = 16
    lr: float = 1e-3  # peak; decays to 0 on a cosine over the whole run
    weight_decay: float = 1e-4
    seed: int = 0
    # Train on crops of this size (0 = whole frames). The model is fully convolutional, so it scores whole
    # frames afterwards; crops make a step cheap and let the loss see the moving people, not the pavement.
    crop: int = 64
    # Share of crops centred on motion (the rest uniform), so capacity goes to what moves.
    motion_share: float = 0.7
    folds: int = 2  # cross-fitting folds for the calibration

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def steps_for(self, frames: int, all_frames: int) -> int:
        """Steps for a model trained on ``frames`` of the ``all_frames`` given: the default rule, or the user's
        ``steps`` for all of it scaled by the same rule."""
        if not self.steps:
            return default_steps(frames)
        return max(1, round(self.steps * math.sqrt(frames / all_frames)))


def _cache_key(video: Video, size: tuple[int, int]) -> str:
    """Names a cached decode by what it was decoded from, so new data or a new size never reads stale frames."""
    stat = video.path.stat()
    identity = f"{video.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{video.info.num_frames}|{size}"
    return hashlib.sha1(identity.encode()).hexdigest()[:20]


def cache_frames(
    videos: Sequence[Video], size: tuple[int, int], folder: Path, progress: Progress | None
) -> list[np.ndarray]:
    """Decode each video once to uint8 frames at model size, kept as memory-mapped raw files.

    Training samples random windows many times over; decoding them from the video each time would cost
    more than the model. Frames stream to disk as they are decoded, so a long video never sits in RAM;
    the cache is reused by ``--resume``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    arrays = []
    task = progress.add_task("decoding", total=len(videos)) if progress else None
    for video in videos:
        file = folder / f"{_cache_key(video, size)}.u8"
        if not file.is_file():
            write_atomic(file, lambda tmp, video=video: _write_frames(tmp, video, size))
        count = file.stat().st_size // (size[0] * size[1])
        if count < WINDOW:
            raise CallmError(f"{video.path}: has {count} frames; at least {WINDOW} are needed")
        arrays.append(np.memmap(file, dtype=np.uint8, mode="r", shape=(count, *size)))
        if progress is not None and task is not None:
            progress.update(task, advance=1)
    return arrays


def _write_frames(path: Path, video: Video, size: tuple[int, int]) -> None:
    with open(path, "wb") as fh:
        for frame in video.frames(size):
            fh.write(np.ascontiguousarray(frame).tobytes())


class ClipSampler:
    """Random training clips (B, T, h, w) from cached videos; deterministic given its generator."""

    def __init__(self, videos: Sequence[np.ndarray], crop: int, motion_share: float) -> None:
        self.videos = videos
        self.crop = crop
        self.motion_share = motion_share
        counts = np.array([len(v) - WINDOW + 1 for v in videos], dtype=np.float64)
        self.video_weights = counts / counts.sum()

    def sample(self, rng: np.random.Generator, batch: int) -> np.ndarray:
        clips = []
        for _ in range(batch):
            video = self.videos[rng.choice(len(self.videos), p=self.video_weights)]
            start = int(rng.integers(len(video) - WINDOW + 1))
            clip = np.asarray(video[start : start + WINDOW])
            clips.append(self._crop(clip, rng))
        return np.stack(clips)

    def _crop(self, clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = clip.shape[1:]
        c = self.crop
        if c <= 0 or (c >= h and c >= w):
            return clip
        c_h, c_w = min(c, h), min(c, w)
        if rng.random() < self.motion_share:
            # Where the clip changes between its first and last frame, blurred, is where people move.
            motion = np.abs(clip[-1].astype(np.int16) - clip[0].astype(np.int16)).astype(np.float32)
            motion = cv2.blur(motion, (9, 9))[: h - c_h + 1, : w - c_w + 1] + 1e-3
            flat = motion.ravel() / motion.sum()
            y, x = divmod(int(rng.choice(flat.size, p=flat)), motion.shape[1])
        else:
            y, x = int(rng.integers(h - c_h + 1)), int(rng.integers(w - c_w + 1))
        return clip[:, y : y + c_h, x : x + c_w]


@dataclass
class TrainResult:
    model: ConvAutoencoder3d
    losses: list[float]  # mean loss per chunk of CHUNK_STEPS steps
    seconds: float
    steps: int


def train(
    train_videos: Sequence[np.ndarray],
    config: AEConfig,
    settings: TrainSettings,
    steps: int,
    checkpoint: Path,
    device: torch.device,
    dtype: torch.dtype,
    resume: bool = False,
    progress: Progress | None = None,
    label: str = "training",
    seed: int | None = None,
    data: Sequence[str] = (),
) -> TrainResult:
    """Train on cached normal footage for ``steps`` steps; checkpoint to ``checkpoint`` every CHUNK_STEPS."""
    seed = settings.seed if seed is None else seed
    torch.manual_seed(seed)
    # Channels-last 3D: oneDNN's faster Conv3d kernels (about 10% per training step on CPU, 2x for scoring).
    model = ConvAutoencoder3d(config).to(device, memory_format=torch.channels_last_3d)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sampler = ClipSampler(train_videos, settings.crop, settings.motion_share)
    # What the run trains on is part of it too: resuming on other footage would mix two models.
    meta = {
        "config": config.to_dict(), "settings": settings.to_dict(), "steps": steps, "seed": seed,
        "data": [*data], "frames": [len(v) for v in train_videos],
    }  # fmt: skip
    done, losses, seconds = 0, [], 0.0
    if resume and has_checkpoint(checkpoint):
        # Settings are checked before the tensors load: another --widths would not even fit the model.
        state = read_state(checkpoint)
        if state.get("meta") != meta:
            raise CallmError(
                f"{checkpoint}: was trained with other settings; rerun without --resume or with the same options"
            )
        load_checkpoint(checkpoint, model, optimizer)
        done, losses, seconds = state["step"], state["losses"], state["seconds"]

    task = progress.add_task(label, total=steps, completed=done) if progress else None
    while done < steps:
        chunk = done // CHUNK_STEPS
        # One generator per chunk, derived from the seed: a resumed run draws the same clips as an unbroken one.
        rng = np.random.default_rng([seed, chunk])
        torch.manual_seed(seed * 100_003 + chunk)
        model.train()
        began = time.perf_counter()
        total, count = 0.0, 0
        while done < min(steps, (chunk + 1) * CHUNK_STEPS):
            for group in optimizer.param_groups:
                group["lr"] = settings.lr * 0.5 * (1.0 + math.cos(math.pi * done / steps))
            x = to_model_range(sampler.sample(rng, settings.batch_size)).to(device)[:, None]
            x = x.contiguous(memory_format=torch.channels_last_3d)
            with autocast(device, dtype):
                y = model(x)
            loss = torch.nn.functional.mse_loss(y.float(), x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count, done = total + loss.item(), count + 1, done + 1
            if progress is not None and task is not None:
                rate = count * settings.batch_size / max(time.perf_counter() - began, 1e-9)
                progress.update(task, completed=done, info=f"loss {total / count:.5f}  {rate:.1f} clips/s")
        seconds += time.perf_counter() - began
        losses.append(total / count)
        save_checkpoint(
            checkpoint, model, optimizer, {"step": done, "losses": losses, "seconds": seconds, "meta": meta}
        )
    if progress is not None and task is not None:
        progress.remove_task(task)
    model.eval()
    return TrainResult(model, losses, seconds, steps)


@dataclass(frozen=True)
class Part:
    """A stretch of normal footage: a whole video, or a slice in time of the only one."""

    name: str
    frames: np.ndarray


def cross_fit_parts(names: Sequence[str], arrays: Sequence[np.ndarray], folds: int) -> list[list[Part]]:
    """Split the footage into ``folds`` groups of about equal length: whole videos when there are at least as
    many videos as folds, else a single video cut into consecutive slices."""
    if folds < 2:
        raise CallmError(
            f"--folds must be at least 2 (a model must never score the footage it trained on), got {folds}"
        )
    if len(arrays) >= folds:
        groups: list[list[Part]] = [[] for _ in range(folds)]
        # Longest first into the lightest group: the folds end up within one video of each other.
        for i in sorted(range(len(arrays)), key=lambda i: -len(arrays[i])):
            lightest = min(range(folds), key=lambda g: sum(len(p.frames) for p in groups[g]))
            groups[lightest].append(Part(names[i], arrays[i]))
        return [sorted(g, key=lambda p: names.index(p.name)) for g in groups]
    if len(arrays) == 1 and len(arrays[0]) >= folds * 2 * WINDOW:
        bounds = np.linspace(0, len(arrays[0]), folds + 1).astype(int)
        return [[Part(f"{names[0]}[{a}:{b}]", arrays[0][a:b])] for a, b in itertools.pairwise(bounds)]
    raise CallmError(
        f"not enough normal footage to train and calibrate: give {folds} or more videos, or one of at least "
        f"{folds * 2 * WINDOW} frames"
    )


def score_footage(
    model: ConvAutoencoder3d, parts: Sequence[Part], scoring: ScoringSettings, timing: FlowTiming,
    device: torch.device, dtype: torch.dtype,
) -> list[NormalFootage]:  # fmt: skip
    """The signals calibration needs, of footage ``model`` did not train on."""
    measure = scoring.measure(model.config.height)
    flow = "rows" if scoring.flow_weight > 0 else "off"
    scorer = FrameScorer(
        model, measure, device, dtype, stride=scoring.stride, motion_step=timing.step, sustain=timing.sustain, flow=flow
    )
    footage = []
    for part in parts:
        scores = scorer.score_frames(iter(part.frames), part.frames.shape[1:], part.name)
        footage.append(NormalFootage(part.name, scores.psnr, scores.speed_rows))
    return footage


def train_ae(
    paths: Sequence[str | Path],
    out: Path,
    height: int,
    widths: tuple[int, ...],
    settings: TrainSettings,
    scoring: ScoringSettings,
    device: torch.device,
    dtype: torch.dtype,
    folder_fps: float,
    resume: bool = False,
    progress: Progress | None = None,
) -> AEWeights:
    """``callm train-ae``: cache frames, cross-fit the calibration, train the final model, save the weights.

    With ``resume``, each model continues from its checkpoint, and one the killed run had not reached yet starts
    afresh; a folder with no checkpoint at all is refused (most likely the wrong ``out``).
    """
    checkpoints = out / CHECKPOINT_DIR
    if resume and not any(has_checkpoint(folder) for folder in checkpoints.glob("*")):
        raise CallmError(f"{checkpoints}: no checkpoint to resume from")
    sources = [Video(p, folder_fps=folder_fps) for p in find_videos(paths)]
    config = AEConfig.for_footage(height, (sources[0].info.height, sources[0].info.width), widths)
    arrays = cache_frames(sources, (config.height, config.width), out / CACHE_DIR, progress)
    names = [str(s.path) for s in sources]
    groups = cross_fit_parts(names, arrays, settings.folds)
    all_frames = sum(len(a) for a in arrays)
    timing = FlowTiming.for_fps(sources[0].info.fps, scoring.sustain_seconds)
    scoring = scoring.at_fps(sources[0].info.fps)
    began = time.perf_counter()
    footage: list[NormalFootage] = []
    fold_steps: list[int] = []
    fold_seconds: list[float] = []
    for k, held in enumerate(groups):
        rest = [p for g, group in enumerate(groups) if g != k for p in group]
        steps = settings.steps_for(sum(len(p.frames) for p in rest), all_frames)
        fold = train(
            [p.frames for p in rest], config, settings, steps, out / CHECKPOINT_DIR / f"fold-{k + 1}", device, dtype,
            resume, progress, label=f"fold {k + 1}/{len(groups)}", seed=settings.seed + k + 1,
            data=[p.name for p in rest],
        )  # fmt: skip
        fold_steps.append(steps)
        fold_seconds.append(fold.seconds)
        footage += score_footage(fold.model, held, scoring, timing, device, dtype)
    calibration = calibrate(
        footage, scoring.measure(config.height), scoring, timing,
        method=f"{len(groups)}-fold cross-fitting: each part scored by a model trained on the other parts",
    )  # fmt: skip
    steps = settings.steps_for(all_frames, all_frames)
    result = train(
        arrays, config, settings, steps, out / CHECKPOINT_DIR / "final", device, dtype, resume, progress,
        label="final model", data=names,
    )  # fmt: skip
    weights = AEWeights(
        result.model,
        calibration=calibration.to_dict(),
        training={
            "data": names,
            "trained_on": names,
            "frames": int(all_frames),
            "cross_fit_folds": [[p.name for p in g] for g in groups],
            "settings": settings.to_dict(),
            "scoring": scoring.to_dict(),
            "steps": steps,
            "fold_steps": fold_steps,
            "chunk_losses": [round(v, 6) for v in result.losses],
            "train_seconds": round(result.seconds, 1),  # the final model's steps
            "fold_train_seconds": [round(v, 1) for v in fold_seconds],
            "wall_seconds": round(time.perf_counter() - began, 1),
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
        },
    )
    save_weights(weights, out)
    return weights
