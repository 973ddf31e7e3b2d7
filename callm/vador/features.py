"""Clip features for the VADor: one row per 16-frame clip of every video, from stage 1's or stage 2's encoder.

A features folder holds one ``<key>.npy`` (clips, dim) float32 array per video and ``index.json``::

    {"kind": "callm-features", "format_version": 1, "clip_frames": 16, "dim": 256,
     "encoder": {"kind": "ae", "weights_sha1": "...", "pooling": "avgmax", "size": [256, 256]},
     "encoder_source": {"weights": "/abs/weights/ped2"},
     "videos": [{"key": "testing__frames__01", "video": "/abs/ped2/testing/frames/01", "fps": 10.0,
                 "num_frames": 180, "clips": [[0, 16], [16, 32], ..., [164, 180]]}, ...]}

Clips tile a video every 16 frames and the last one ends on the last frame, so it may overlap the one before;
``clips`` holds each clip's [start, end) frame range. A key is the video's path below the common folder of the
videos of one run, with ``__`` for ``/``. Extraction is resumable: videos already in the index are skipped, and
each array and then the index are written atomically after every video.
"""

from __future__ import annotations

import json
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from rich.progress import Progress

from callm.ae.model import ConvAutoencoder3d
from callm.ae.score import to_model_range
from callm.device import autocast
from callm.errors import CallmError
from callm.files import file_sha1, write_atomic, write_json_atomic
from callm.video import DEFAULT_FOLDER_FPS, WINDOW, Video, batched_windows, find_videos, iter_windows

if TYPE_CHECKING:  # stage 2 is imported only when its encoder is asked for
    from callm.vlm.config import VLMConfig
    from callm.vlm.model import FrameEncoder, VideoQFormer

KIND = "callm-features"
FORMAT_VERSION = 1
INDEX_FILE = "index.json"
Pooling = Literal["avgmax", "avg", "max"]
POOLINGS: tuple[Pooling, ...] = ("avgmax", "avg", "max")
TokenMode = Literal["mean", "all"]
TOKEN_MODES: tuple[TokenMode, ...] = ("mean", "all")


class ClipEncoder(ABC):
    """Turns 16-frame clips into one feature row each.

    ``settings`` identify what made the features (compared before features are mixed or scored); ``source``
    only records where the weights were read from.
    """

    frame_size: tuple[int, int] | None  # (height, width) the frames are decoded at; None = their own size
    rgb: bool  # decode in colour (else grey)
    source: dict[str, Any]

    @property
    @abstractmethod
    def settings(self) -> dict[str, Any]: ...

    @abstractmethod
    def encode(self, clips: np.ndarray) -> np.ndarray:
        """uint8 clips (B, 16, H, W) grey or (B, 16, H, W, 3) RGB -> float32 features (B, dim)."""


class AEClipEncoder(ClipEncoder):
    """Stage 1's encoder: the autoencoder's bottleneck (B, C, T', H', W') pooled over time and space.

    ``avgmax`` (the default) joins the global average (the scene as a whole) and the global maximum (the
    strongest local response: a cart a few pixels wide is lost in an average over the frame but still peaks
    somewhere), 2C values; ``avg`` or ``max`` alone give C.
    """

    rgb = False

    def __init__(
        self,
        model: ConvAutoencoder3d,
        device: torch.device,
        dtype: torch.dtype,
        pooling: Pooling = "avgmax",
        weights_sha1: str = "",
        source: dict[str, Any] | None = None,
    ) -> None:
        if pooling not in POOLINGS:
            raise CallmError(f"unknown pooling {pooling!r}: use one of {', '.join(POOLINGS)}")
        self.model = model.to(device).eval()
        self.device = device
        self.dtype = dtype
        self.pooling = pooling
        self.weights_sha1 = weights_sha1
        self.source = source or {}
        self.frame_size = (model.config.height, model.config.width)

    @classmethod
    def from_weights(cls, path: Path, device: torch.device, dtype: torch.dtype, pooling: Pooling) -> AEClipEncoder:
        """Load stage-1 weights; their checksum identifies them, so moved weights still match their features."""
        from callm.ae.weights import load, resolve

        tensors, _ = resolve(path)
        source = {"weights": str(tensors.parent.resolve())}
        return cls(load(path, device).model, device, dtype, pooling, file_sha1(tensors), source)

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "kind": "ae",
            "weights_sha1": self.weights_sha1,
            "pooling": self.pooling,
            "size": list(self.frame_size),
        }

    @torch.inference_mode()
    def encode(self, clips: np.ndarray) -> np.ndarray:
        x = to_model_range(clips).to(self.device)[:, None]
        with autocast(self.device, self.dtype):
            bottleneck = self.model.encode(x).float().flatten(2)  # (B, C, T' H' W')
        pooled = {"avg": [bottleneck.mean(-1)], "max": [bottleneck.amax(-1)]}
        pooled["avgmax"] = pooled["avg"] + pooled["max"]
        return torch.cat(pooled[self.pooling], dim=1).cpu().numpy()


class VideoLlamaClipEncoder(ClipEncoder):
    """Stage 2's video encoder: ``frames`` frames sampled from the clip go through the frame encoder (ViT + Q-Former)
    and the video Q-Former; its query outputs before ``llama_proj`` (the width VAD-LLaMA's VADor reads) are
    averaged (``mean``: width values) or all kept (``all``: queries x width values)."""

    rgb = True

    def __init__(
        self,
        frame_encoder: FrameEncoder,
        video_qformer: VideoQFormer,
        device: torch.device,
        dtype: torch.dtype,
        tokens: TokenMode = "mean",
        frames: int = 8,
        weights: dict[str, str] | None = None,
    ) -> None:
        from callm.vlm.frames import FramePreprocessor, sample_indices

        if tokens not in TOKEN_MODES:
            raise CallmError(f"unknown token mode {tokens!r}: use one of {', '.join(TOKEN_MODES)}")
        if not 1 <= frames <= min(WINDOW, video_qformer.max_frames):
            raise CallmError(f"frames per clip must be 1..{min(WINDOW, video_qformer.max_frames)}, got {frames}")
        self.frame_encoder = frame_encoder.to(device).eval()
        self.video_qformer = video_qformer.to(device).eval()
        frame_encoder.vision_model.to(dtype)  # as Video-LLaMA: the ViT in half precision, the Q-Formers in fp32
        self.device = device
        self.tokens = tokens
        self.frames = frames
        self.weights = weights or {}  # the stage-2 files: hashing gigabytes is too slow, so their paths identify them
        self.source: dict[str, Any] = {}
        self.sampled = sample_indices(WINDOW, frames)
        self.preprocess = FramePreprocessor(frame_encoder.image_size)
        self.frame_size = (frame_encoder.image_size, frame_encoder.image_size)

    @classmethod
    def from_config(cls, config: VLMConfig, tokens: TokenMode, frames: int) -> VideoLlamaClipEncoder:
        """The two encoders a stage-2 config names; the LLM is not loaded."""
        from callm.device import parse_dtype, pick_device
        from callm.vlm.weights.loaders import load_frame_encoder, load_video_qformer

        frame_encoder, _ = load_frame_encoder(
            config.vision, config.qformer, config.vision_config, config.qformer_config
        )
        video_qformer, _ = load_video_qformer(
            config.video_llama, frame_encoder.qformer.config, config.video_qformer_config
        )
        weights = {"vision": config.vision, "qformer": config.qformer, "video_llama": config.video_llama}
        device, dtype = pick_device(config.device), parse_dtype(config.dtype)
        return cls(frame_encoder, video_qformer, device, dtype, tokens, frames, weights)

    @property
    def settings(self) -> dict[str, Any]:
        return {"kind": "videollama", **self.weights, "tokens": self.tokens, "frames": self.frames}

    @torch.inference_mode()
    def encode(self, clips: np.ndarray) -> np.ndarray:
        batch = len(clips)
        pixels = self.preprocess(clips[:, self.sampled].reshape(-1, *clips.shape[2:])).to(self.device)
        frame_tokens = self.frame_encoder(pixels.to(self.frame_encoder.vision_model.dtype)).float()
        frame_tokens = frame_tokens.reshape(batch, self.frames, *frame_tokens.shape[1:])
        summary = self._video_summary(frame_tokens)  # (B, queries, width)
        features = summary.mean(dim=1) if self.tokens == "mean" else summary.flatten(1)
        return features.cpu().numpy()

    def _video_summary(self, frame_tokens: torch.Tensor) -> torch.Tensor:
        """The video Q-Former's output before ``llama_proj``, caught on its way into the projection."""
        caught: list[torch.Tensor] = []
        hook = self.video_qformer.llama_proj.register_forward_pre_hook(lambda _, inputs: caught.append(inputs[0]))
        try:
            self.video_qformer(frame_tokens)
        finally:
            hook.remove()
        return caught[0].float()


def encoder_for(
    settings: dict[str, Any],
    device: torch.device,
    dtype: torch.dtype,
    ae_weights: Path | None = None,
    vlm: VLMConfig | None = None,
) -> ClipEncoder:
    """The encoder that makes features like ``settings`` (e.g. a trained VADor's ``features``): from stage-1
    weights for ``ae`` features, from a stage-2 config for ``videollama`` ones. Whether the weights are the
    same ones is checked by comparing the new encoder's settings (``VADorWeights.check_features``)."""
    kind = settings.get("kind")
    if kind == "ae":
        if ae_weights is None:
            raise CallmError("these features come from a stage-1 encoder: give its weights")
        return AEClipEncoder.from_weights(ae_weights, device, dtype, settings.get("pooling", "avgmax"))
    if kind == "videollama":
        if vlm is None:
            raise CallmError("these features come from the Video-LLaMA encoder: give a stage-2 config")
        return VideoLlamaClipEncoder.from_config(vlm, settings.get("tokens", "mean"), settings.get("frames", 8))
    raise CallmError(f"unknown feature encoder {kind!r}")


@dataclass(frozen=True)
class VideoFeatures:
    """One video's entry in a features index."""

    key: str
    video: str
    fps: float
    num_frames: int
    clips: list[tuple[int, int]]
    folder: Path = field(compare=False)

    @property
    def path(self) -> Path:
        return self.folder / f"{self.key}.npy"

    @property
    def name(self) -> str:
        return Path(self.video).name

    def load(self) -> np.ndarray:
        try:
            features = np.load(self.path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CallmError(f"{self.path}: missing or damaged features ({exc})") from None
        if features.ndim != 2 or len(features) != len(self.clips):
            raise CallmError(f"{self.path}: {features.shape} features, but the index lists {len(self.clips)} clips")
        return features.astype(np.float32, copy=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "video": self.video,
            "fps": self.fps,
            "num_frames": self.num_frames,
            "clips": [list(c) for c in self.clips],
        }


@dataclass
class FeatureIndex:
    folder: Path
    encoder: dict[str, Any]  # ClipEncoder.settings
    encoder_source: dict[str, Any] = field(default_factory=dict)  # ClipEncoder.source
    dim: int | None = None
    videos: list[VideoFeatures] = field(default_factory=list)

    @classmethod
    def read(cls, folder: str | Path) -> FeatureIndex:
        folder = Path(folder)
        path = folder / INDEX_FILE
        if not path.is_file():
            raise CallmError(f"{folder}: no {INDEX_FILE}; make features with `callm features DATA --out {folder}`")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("kind") != KIND:
                raise CallmError(f"{path}: not a callm features index (kind is {data.get('kind')!r})")
            if data.get("format_version") != FORMAT_VERSION:
                raise CallmError(f"{path}: features format {data.get('format_version')}, this callm reads 1")
            videos = [
                VideoFeatures(
                    v["key"], v["video"], float(v["fps"]), int(v["num_frames"]), [tuple(c) for c in v["clips"]], folder
                )
                for v in data["videos"]
            ]
            return cls(folder, data["encoder"], data.get("encoder_source", {}), data.get("dim"), videos)
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise CallmError(f"{path}: damaged features index ({exc.__class__.__name__}: {exc})") from None

    def write(self) -> None:
        write_json_atomic(
            self.folder / INDEX_FILE,
            {
                "kind": KIND,
                "format_version": FORMAT_VERSION,
                "clip_frames": WINDOW,
                "dim": self.dim,
                "encoder": self.encoder,
                "encoder_source": self.encoder_source,
                "videos": [v.to_dict() for v in self.videos],
            },
        )


def iter_clip_features(
    video: Video, encoder: ClipEncoder, batch_size: int = 8
) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
    """Each clip's [start, end) frames and features (dim,), in order, as soon as its batch is encoded."""
    windows = iter_windows(video.frames(encoder.frame_size, rgb=encoder.rgb), step=WINDOW, source=str(video.path))
    for batch in batched_windows(windows, batch_size):
        features = encoder.encode(np.stack([w.frames for w in batch]))
        for window, row in zip(batch, features, strict=True):
            yield (window.start, window.start + WINDOW), row


def clip_features(
    video: Video, encoder: ClipEncoder, batch_size: int = 8, on_clips: Callable[[int], None] | None = None
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Features (clips, dim) of one video and each clip's [start, end) frames; ``on_clips(done)`` reports."""
    rows, ranges = [], []
    for clip, row in iter_clip_features(video, encoder, batch_size):
        rows.append(row)
        ranges.append(clip)
        if on_clips is not None:
            on_clips(len(ranges))
    return np.stack(rows).astype(np.float32), ranges


def video_keys(videos: Sequence[Path], taken: set[str]) -> list[str]:
    """File-name-safe keys: each path below the videos' common folder, ``/`` as ``__``, made unique."""
    resolved = [v.resolve() for v in videos]
    base = Path(os.path.commonpath([p.parent for p in resolved])) if resolved else Path()
    keys = []
    for path in resolved:
        parts = list(path.relative_to(base).parts)
        parts[-1] = Path(parts[-1]).stem if path.is_file() else parts[-1]
        key, n = "__".join(parts), 2
        while key in taken:
            key, n = f"{'__'.join(parts)}-{n}", n + 1
        taken.add(key)
        keys.append(key)
    return keys


def extract_features(
    paths: Sequence[str | Path],
    encoder: ClipEncoder,
    out: Path,
    folder_fps: float = DEFAULT_FOLDER_FPS,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> tuple[FeatureIndex, int]:
    """``callm features``: features of every video under ``paths`` into ``out``; returns the index and how many
    videos were extracted now (the others were already there)."""
    videos = find_videos(paths)
    if (out / INDEX_FILE).is_file():
        index = FeatureIndex.read(out)
        if index.encoder != encoder.settings:
            raise CallmError(
                f"{out}: holds features of another encoder or setting ({index.encoder.get('kind')}); "
                "use another --out or the same options"
            )
    else:
        index = FeatureIndex(out, encoder.settings, encoder.source)
    done = {v.video for v in index.videos if v.path.is_file()}
    index.videos = [v for v in index.videos if v.video in done]  # entries whose array vanished are redone
    todo = [v for v in videos if str(v.resolve()) not in done]
    keys = video_keys(todo, {v.key for v in index.videos})
    task = progress.add_task("videos", total=len(videos), completed=len(videos) - len(todo)) if progress else None
    for path, key in zip(todo, keys, strict=True):
        video = Video(path, folder_fps=folder_fps)
        clip_task = progress.add_task(path.name, total=-(-video.info.num_frames // WINDOW)) if progress else None
        began = time.perf_counter()

        def advance(clips: int, clip_task: Any = clip_task, began: float = began) -> None:
            if progress is not None and clip_task is not None:
                rate = clips / max(time.perf_counter() - began, 1e-9)
                progress.update(clip_task, completed=clips, info=f"{rate:.1f} clips/s")

        features, clips = clip_features(video, encoder, batch_size, advance)
        entry = VideoFeatures(key, str(path.resolve()), video.info.fps, clips[-1][1], clips, out)
        write_atomic(entry.path, lambda tmp, features=features: _save_array(tmp, features))
        index.dim = int(features.shape[1])
        index.videos.append(entry)
        index.write()
        if progress is not None and task is not None and clip_task is not None:
            progress.remove_task(clip_task)
            progress.update(task, advance=1)
    return index, len(todo)


def _save_array(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:  # a file object: np.save would add ".npy" to the temporary name
        np.save(fh, array, allow_pickle=False)
