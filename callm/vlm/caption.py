"""`callm caption`: zero-shot BLIP-2 captions of video windows, one JSON line each, resumable.

CALLM describes a site's footage with BLIP-2 before any label exists; the captions become the answers of the
normal items of the instruction data (``callm.vlm.instruct``). Each item is a 16-frame window (the stage-1
tiling by default) and its 9th frame, the one the CALLM paper scores:

    {"video": "/data/site/cam1.mp4", "fps": 25.0, "frame": 24, "time_s": 0.96, "window": [16, 32], "caption": "..."}

``window`` is [first frame, end) with the end excluded. Lines are appended and forced to disk one by one; a
rerun skips the (video, frame) items the file holds, and a line cut short by a kill is dropped and redone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress
from transformers import Blip2ForConditionalGeneration, Blip2Processor

from callm.errors import CallmError
from callm.files import append_jsonl, read_jsonl
from callm.video import DEFAULT_FOLDER_FPS, WINDOW, Video, find_videos, iter_windows
from callm.vlm.weights.files import ModelFiles, first_line

CAPTIONED_FRAME = 8  # the window's 9th frame
BLIP2 = "BLIP-2"
CAPTION_KEYS = ("video", "fps", "frame", "time_s", "window", "caption")


@dataclass(frozen=True)
class CaptionOptions:
    every: int = WINDOW  # frames between window starts; the default tiles the video like stage 1's gate
    batch_size: int = 8
    prompt: str = ""  # e.g. "Question: what is happening? Answer:"; empty = plain captioning
    max_new_tokens: int = 30
    folder_fps: float = DEFAULT_FOLDER_FPS


class Blip2Captioner:
    """A BLIP-2 model (HF folder or hub id) and its processor; greedy decoding, so captions are reproducible."""

    def __init__(self, source: str, device: torch.device, dtype: torch.dtype, options: CaptionOptions) -> None:
        files = ModelFiles(source, BLIP2)
        config = json.loads(files.require("config.json").read_text(encoding="utf-8"))
        if config.get("model_type") != "blip-2":
            raise CallmError(f"{BLIP2}: {source} is not a BLIP-2 model (model_type {config.get('model_type')!r})")
        try:
            self.processor = Blip2Processor.from_pretrained(source)
            self.model = Blip2ForConditionalGeneration.from_pretrained(source, dtype=dtype).to(device).eval()
        except (OSError, ValueError, RuntimeError) as exc:
            raise CallmError(f"{BLIP2}: cannot load {source} ({first_line(exc)})") from None
        if self.model.config.image_token_index is None:
            raise CallmError(
                f"{BLIP2}: {source} predates transformers' BLIP-2 image tokens (no image_token_index in its "
                "config); use a current snapshot of the model"
            )
        # Older processor configs omit the count; the image tokens must match the model's query tokens.
        self.processor.num_query_tokens = self.model.config.num_query_tokens
        self.device = device
        self.dtype = dtype
        self.options = options

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray]) -> list[str]:
        """One caption per RGB uint8 (H, W, 3) image."""
        text = [self.options.prompt] * len(images) if self.options.prompt else None
        inputs = self.processor(images=list(images), text=text, return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        output = self.model.generate(**inputs, max_new_tokens=self.options.max_new_tokens, do_sample=False)
        if self.model.config.use_decoder_only_language_model:
            # A decoder-only language model returns its input ids ahead of the new tokens: the prompt's, or
            # without one the image tokens + BOS that BLIP-2's generate starts from.
            given = inputs["input_ids"].shape[1] if text else self.model.config.num_query_tokens + 1
            output = output[:, given:]
        return [t.strip() for t in self.processor.batch_decode(output, skip_special_tokens=True)]


@dataclass(frozen=True)
class CaptionItem:
    video: str
    fps: float
    start: int  # the window's first frame

    @property
    def frame(self) -> int:
        return self.start + CAPTIONED_FRAME

    def record(self, caption: str) -> dict[str, Any]:
        return {
            "video": self.video,
            "fps": self.fps,
            "frame": self.frame,
            "time_s": round(self.frame / self.fps, 3),
            "window": [self.start, self.start + WINDOW],
            "caption": caption,
        }


def read_captions(path: str | Path) -> list[dict[str, Any]]:
    """The caption lines of a ``callm caption`` file (a line cut short by a kill is dropped from the file)."""
    records = read_jsonl(path)
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict) or any(key not in record for key in CAPTION_KEYS):
            raise CallmError(f"{path}: caption {number} lacks {', '.join(CAPTION_KEYS)}: not a callm caption file")
    return records


def estimated_windows(num_frames: int, every: int) -> int:
    """Windows ``iter_windows`` cuts from a video of this length (the header's count may be approximate)."""
    return math.ceil((num_frames - WINDOW) / every) + 1 if num_frames >= WINDOW else 0


@dataclass(frozen=True)
class CaptionSummary:
    videos: int
    captioned: int
    skipped: int  # already in the file from an earlier run


def caption_videos(
    paths: Sequence[str | Path],
    out: Path,
    captioner: Blip2Captioner,
    progress: Progress | None = None,
) -> CaptionSummary:
    """Caption every window of every video under ``paths`` into ``out``, skipping what it already holds."""
    options = captioner.options
    videos = [Video(path, folder_fps=options.folder_fps) for path in find_videos(paths)]
    done = {(record["video"], record["frame"]) for record in read_captions(out)}
    total = sum(estimated_windows(v.info.num_frames, options.every) for v in videos)
    task = progress.add_task("captions", total=total or None) if progress else None
    captioned = skipped = 0
    batch: list[tuple[CaptionItem, np.ndarray]] = []
    with append_jsonl(out) as append:

        def flush() -> None:
            nonlocal captioned
            captions = captioner([image for _, image in batch])
            for (item, _), caption in zip(batch, captions, strict=True):
                append(item.record(caption))
            captioned += len(batch)
            if progress is not None and task is not None:
                progress.update(task, advance=len(batch), info=f"{captioned} new, {skipped} already done")
            batch.clear()

        for video in videos:
            name = str(video.path.resolve())  # the same video however it is reached, whatever the working folder
            for window in iter_windows(video.frames(rgb=True), options.every, source=name):
                item = CaptionItem(name, video.info.fps, window.start)
                if (name, item.frame) in done:
                    skipped += 1
                    if progress is not None and task is not None:
                        progress.update(task, advance=1)
                    continue
                batch.append((item, window.frames[CAPTIONED_FRAME]))
                if len(batch) == options.batch_size:
                    flush()
        if batch:
            flush()
    return CaptionSummary(len(videos), captioned, skipped)
