"""The stage-2 entry point for the cascade: a gated clip and its event box in, a verdict and an explanation out."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from callm.vlm.config import VLMConfig, load_config
from callm.vlm.frames import FramePreprocessor, focus, sample_indices, to_rgb
from callm.vlm.model import GenerationOptions, VideoLLM
from callm.vlm.prompt import video_message
from callm.vlm.weights.assemble import LoadReport
from callm.vlm.weights.loaders import load_video_llm

Verdict = Literal["anomaly", "normal"]
YES_OR_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Answer:
    verdict: Verdict
    text: str  # the model's answer, cleaned of template markers; may be empty
    explicit: bool  # False when the text holds no yes/no and the verdict is the "anomaly" fallback


def parse_verdict(text: str) -> tuple[Verdict, bool]:
    """The first whole-word yes (anomaly) or no (normal) in the answer, and whether there was one.

    Without either the verdict stays "anomaly": stage 1 flagged the clip and stage 2 did not clear it, so the
    event stays visible to the user rather than being silently dropped.
    """
    match = YES_OR_NO.search(text)
    if match is None:
        return "anomaly", False
    return ("anomaly" if match[1].lower() == "yes" else "normal"), True


def generation_options(config: VLMConfig) -> GenerationOptions:
    return GenerationOptions(
        max_new_tokens=config.max_new_tokens,
        sample=config.sample,
        temperature=config.temperature,
        top_p=config.top_p,
        seed=config.seed,
    )


class Explainer:
    """Asks the video LLM whether a gated clip shows an anomaly, and what it is.

    Box focus (``focus`` in the config) defaults to "crop". Video-LLaMA squashes every frame to 224 x 224 for a
    ViT with 14-pixel patches, so a cart 40 pixels long in a 360 x 240 surveillance frame covers about two
    patches; cropping to a square twice the size of stage 1's box (at least half the frame's shorter side) gives
    it several times the pixels while keeping enough surroundings to tell what is normal in the scene. Each frame
    is cropped around its own box (an event's track), so the crop follows a moving object. "draw"
    keeps the whole frame and outlines the box in red, but Video-LLaMA never saw drawn boxes in training: the
    rectangle is itself unusual content that can tilt the yes/no answer, and the region stays tiny. "none"
    shows the frames unchanged.
    """

    def __init__(self, model: VideoLLM, config: VLMConfig, reports: Sequence[LoadReport] = ()) -> None:
        self.model = model
        self.config = config
        self.reports = list(reports)
        self.preprocess = FramePreprocessor(model.frame_encoder.image_size)
        self.generation = generation_options(config)

    @classmethod
    def from_config(cls, config: VLMConfig | str | Path) -> Explainer:
        """Load every part a config (object or TOML path) names; raises CallmError on any missing or wrong file."""
        if not isinstance(config, VLMConfig):
            config = load_config(config)
        model, reports = load_video_llm(config)
        return cls(model, config, reports)

    def prompt(self, timestamps: Sequence[float], question: str) -> str:
        return self.model.template.prompt(video_message(timestamps, question), self.config.system_text)

    def explain(
        self,
        frames: np.ndarray,
        fps: float,
        start_s: float = 0.0,
        boxes: Sequence[Sequence[int]] | None = None,
        question: str | None = None,
    ) -> Answer:
        """Answer ``question`` (default: the config's) about one clip.

        ``frames``: uint8 (T, H, W) grey or (T, H, W, 3) RGB, e.g. a gated 16-frame window; ``fps``: their rate;
        ``start_s``: the video time of ``frames[0]``, so the prompt's frame times are the video's; ``boxes``:
        stage 1's [x0, y0, x1, y1] of each frame in its pixels (an event's track), or None for whole frames.
        """
        if len(frames) == 0 or fps <= 0:
            raise ValueError(f"need at least one frame and fps > 0, got {len(frames)} frames at {fps} fps")
        indices = sample_indices(len(frames), self.config.frames)
        sampled_boxes = None if boxes is None else [boxes[i] for i in indices]
        times = [start_s + i / fps for i in indices]
        return self.explain_sampled(np.asarray(frames)[indices], times, sampled_boxes, question)

    def explain_sampled(
        self,
        frames: np.ndarray,
        timestamps: Sequence[float],
        boxes: Sequence[Sequence[int]] | None = None,
        question: str | None = None,
    ) -> Answer:
        """Answer about frames already sampled (one per timestamp, in seconds), e.g. read from a long video."""
        pixel_values, prompt = self.prepare(frames, timestamps, boxes, question)
        text = self.model.answer(pixel_values, prompt, self.generation)
        verdict, explicit = parse_verdict(text)
        return Answer(verdict, text, explicit)

    def prepare(
        self,
        frames: np.ndarray,
        timestamps: Sequence[float],
        boxes: Sequence[Sequence[int]] | None = None,
        question: str | None = None,
    ) -> tuple[torch.Tensor, str]:
        """The model's inputs for sampled frames: focused, preprocessed pixels and the prompt.

        Fine-tuning builds its examples here too, so the model is trained on exactly what it is asked.
        """
        if len(frames) != len(timestamps) or len(frames) == 0:
            raise ValueError(f"need one timestamp per frame, got {len(frames)} frames, {len(timestamps)} times")
        return self.pixels(frames, boxes), self.prompt(timestamps, question or self.config.question)

    def pixels(self, frames: np.ndarray, boxes: Sequence[Sequence[int]] | None = None) -> torch.Tensor:
        """Sampled frames as the model's input: each focused on its box as the config says, resized and
        normalised."""
        clip = focus(to_rgb(np.asarray(frames)), boxes, self.config.focus, self.config.crop_scale)
        return self.preprocess(clip)
