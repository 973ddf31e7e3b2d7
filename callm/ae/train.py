"""Training loop of the stage-1 autoencoder: frame cache, sampling, AdamW, per-epoch checkpoints, resume.

The model itself lives in ``model.py``; calibration of the gate after training in ``calibrate.py``.
"""

from __future__ import annotations

import hashlib
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

from callm.ae.calibrate import calibrate
from callm.ae.model import AEConfig, ConvAutoencoder3d
from callm.ae.score import ErrorMeasure, FrameScorer, to_model_range
from callm.ae.weights import AEWeights
from callm.ae.weights import save as save_weights
from callm.checkpoint import has_checkpoint, load_checkpoint, read_state, save_checkpoint
from callm.device import autocast
from callm.errors import CallmError
from callm.files import write_atomic
from callm.video import WINDOW, Video, find_videos

CHECKPOINT_DIR = "checkpoint"
CACHE_DIR = "frame-cache"


@dataclass(frozen=True)
class ScoringSettings:
    """How the trained model scores frames; stored in the calibration so detect scores the same way."""

    error: str = "motion"
    patch_fraction: float = 0.125  # side of the scored error region, as a share of the model's frame side
    top_k: int = 8
    smooth_sigma: float = 7.0  # frames; 0.7 s at Ped2's 10 fps
    stride: int = 8
    quantile: float = 0.99


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 30
    batch_size: int = 16
    lr: float = 2e-4  # peak; decays to 0 on a cosine over the whole run
    weight_decay: float = 1e-4
    seed: int = 0
    # Train on crops of this size (0 = whole frames). The model is fully convolutional, so it scores whole
    # frames afterwards; crops make a step cheap and let the loss see the moving people, not the pavement.
    crop: int = 64
    # Share of crops centred on motion (the rest uniform), so capacity goes to what moves.
    motion_share: float = 0.7
    # Epoch length in clips; 0 means one clip per training window of the data.
    clips_per_epoch: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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

    @property
    def num_windows(self) -> int:
        return int(sum(len(v) - WINDOW + 1 for v in self.videos))

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
    losses: list[float]  # mean loss per epoch
    seconds: float
    clips_seen: int


def train(
    train_videos: Sequence[np.ndarray],
    config: AEConfig,
    settings: TrainSettings,
    out: Path,
    device: torch.device,
    dtype: torch.dtype,
    resume: bool = False,
    progress: Progress | None = None,
) -> TrainResult:
    """Train on cached normal footage; checkpoint to ``out/checkpoint`` after every epoch."""
    torch.manual_seed(settings.seed)
    # Channels-last 3D: oneDNN's faster Conv3d kernels (about 10% per training step on CPU, 2x for scoring).
    model = ConvAutoencoder3d(config).to(device, memory_format=torch.channels_last_3d)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sampler = ClipSampler(train_videos, settings.crop, settings.motion_share)
    clips_per_epoch = settings.clips_per_epoch or sampler.num_windows
    steps_per_epoch = max(1, math.ceil(clips_per_epoch / settings.batch_size))
    checkpoint = out / CHECKPOINT_DIR
    meta = {"config": config.to_dict(), "settings": settings.to_dict()}
    start_epoch, losses, seconds = 0, [], 0.0
    if resume and has_checkpoint(checkpoint):
        # Settings are checked before the tensors load: another --widths would not even fit the model.
        state = read_state(checkpoint)
        if state["meta"] != meta:
            raise CallmError(
                f"{checkpoint}: was trained with other settings; rerun without --resume or with the same options"
            )
        load_checkpoint(checkpoint, model, optimizer)
        start_epoch, losses, seconds = state["epoch"], state["losses"], state["seconds"]
    elif resume:
        raise CallmError(f"{checkpoint}: no checkpoint to resume from")

    epoch_task = progress.add_task("epochs", total=settings.epochs, completed=start_epoch) if progress else None
    for epoch in range(start_epoch, settings.epochs):
        # One generator per epoch, derived from the seed: a resumed run draws the same clips as an unbroken one.
        rng = np.random.default_rng([settings.seed, epoch])
        torch.manual_seed(settings.seed * 100_003 + epoch)
        model.train()
        step_task = progress.add_task(f"epoch {epoch + 1}", total=steps_per_epoch) if progress else None
        began = time.perf_counter()
        total = 0.0
        for step in range(steps_per_epoch):
            progress_share = (epoch * steps_per_epoch + step) / (settings.epochs * steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = settings.lr * 0.5 * (1.0 + math.cos(math.pi * progress_share))
            x = to_model_range(sampler.sample(rng, settings.batch_size)).to(device)[:, None]
            x = x.contiguous(memory_format=torch.channels_last_3d)
            with autocast(device, dtype):
                y = model(x)
            loss = torch.nn.functional.mse_loss(y.float(), x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
            if progress is not None and step_task is not None:
                elapsed = time.perf_counter() - began
                rate = (step + 1) * settings.batch_size / max(elapsed, 1e-9)
                progress.update(step_task, advance=1, info=f"loss {total / (step + 1):.5f}  {rate:.1f} clips/s")
        seconds += time.perf_counter() - began
        losses.append(total / steps_per_epoch)
        save_checkpoint(
            checkpoint, model, optimizer, {"epoch": epoch + 1, "losses": losses, "seconds": seconds, "meta": meta}
        )
        if progress is not None and step_task is not None and epoch_task is not None:
            progress.remove_task(step_task)
            progress.update(epoch_task, advance=1, info=f"last epoch loss {losses[-1]:.5f}")
    model.eval()
    return TrainResult(model, losses, seconds, settings.epochs * steps_per_epoch * settings.batch_size)


def split_holdout(videos: Sequence[Video], fraction: float) -> tuple[list[int], list[int]]:
    """Indices of training and held-out videos: the last ``fraction`` of the videos (at least one) are held
    out for calibration. A single video is split in time instead (see ``train_ae``)."""
    if len(videos) < 2 or fraction <= 0:
        return list(range(len(videos))), []
    held = min(len(videos) - 1, max(1, round(fraction * len(videos))))
    return list(range(len(videos) - held)), list(range(len(videos) - held, len(videos)))


def train_ae(
    paths: Sequence[str | Path],
    out: Path,
    config: AEConfig,
    settings: TrainSettings,
    scoring: ScoringSettings,
    device: torch.device,
    dtype: torch.dtype,
    folder_fps: float,
    holdout: float = 0.15,
    resume: bool = False,
    progress: Progress | None = None,
) -> AEWeights:
    """``callm train-ae``: cache frames, train, calibrate the gate on held-out normal footage, save weights."""
    sources = [Video(p, folder_fps=folder_fps) for p in find_videos(paths)]
    size = (config.height, config.width)
    arrays = cache_frames(sources, size, out / CACHE_DIR, progress)
    train_ids, held_ids = split_holdout(sources, holdout)
    train_arrays = [arrays[i] for i in train_ids]
    held_arrays = [arrays[i] for i in held_ids]
    held_names = [str(sources[i].path) for i in held_ids]
    if not held_ids and holdout > 0:
        # One video: its tail is the held-out part, if both parts keep at least a few windows.
        only = arrays[0]
        cut = int(len(only) * (1 - holdout))
        if cut >= 2 * WINDOW and len(only) - cut >= 2 * WINDOW:
            train_arrays, held_arrays = [only[:cut]], [only[cut:]]
            held_names = [f"{sources[0].path}[{cut}:]"]
    if not held_arrays:
        raise CallmError(
            "no normal footage left to calibrate the threshold: give two or more videos, or one of at least "
            f"{4 * WINDOW} frames"
        )
    result = train(train_arrays, config, settings, out, device, dtype, resume=resume, progress=progress)
    patch = max(1, round(scoring.patch_fraction * min(config.height, config.width)))
    measure = ErrorMeasure(scoring.error, patch, scoring.top_k)
    scorer = FrameScorer(result.model, measure, device, dtype, stride=scoring.stride)
    held_psnr = [
        scorer.score_frames(iter(a), a.shape[1:], name).psnr for a, name in zip(held_arrays, held_names, strict=True)
    ]
    calibration = calibrate(held_psnr, held_names, measure, scoring.stride, scoring.smooth_sigma, scoring.quantile)
    weights = AEWeights(
        result.model,
        calibration=calibration.to_dict(),
        training={
            "data": [str(s.path) for s in sources],
            "trained_on": [str(sources[i].path) for i in train_ids] if held_ids else [str(sources[0].path)],
            "settings": settings.to_dict(),
            "epochs": settings.epochs,
            "epoch_losses": [round(v, 6) for v in result.losses],
            "train_seconds": round(result.seconds, 1),
            "clips_seen": result.clips_seen,
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
        },
    )
    save_weights(weights, out)
    return weights
