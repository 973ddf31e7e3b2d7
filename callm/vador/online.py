"""The VADor on a stream, and what its scores say: events and VAD-LLaMA's time-stamped answer.

``OnlineScorer`` takes one clip's features at a time and returns its abnormal probability (and, for the phase-3
adaptor, the clip's x and x~); the context lists only hold earlier clips, so a clip's score never changes when
later clips arrive, and memory stays at K items per list. ``VADorDetector`` runs an encoder and the scorer over a
video. ``clip_events`` and ``template_answer`` turn clip scores into events and the answer VAD-LLaMA's phase 3
teaches the LLM to give ("Yes, there are anomalies from 1.5s to 2s."); with a trained adaptor the LLM gives it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from callm.ae.events import find_events
from callm.results import Event, timed_answer
from callm.vador.features import ClipEncoder, iter_clip_features
from callm.vador.model import ContextLists, VADor, abnormal_probability
from callm.vador.weights import VADorWeights
from callm.video import Video

if TYPE_CHECKING:  # the LLM is loaded only when an adaptor is given
    from callm.vador.adaptor import AdaptorLLM


class ClipStep(NamedTuple):
    """What the VADor makes of one clip of a stream."""

    score: float  # abnormal probability, g(x~)
    features: torch.Tensor  # x: the clip's standardised features (dim,)
    enriched: torch.Tensor  # x~: x plus what the context lists add (x itself without lists)

    @property
    def pair(self) -> torch.Tensor:
        """[x, x~] (2 dim,): the phase-3 adaptor's input."""
        return torch.cat([self.features, self.enriched])


class OnlineScorer:
    """Scores clips of one stream in arrival order; ``reset`` before the next stream."""

    def __init__(self, model: VADor) -> None:
        self.model = model.eval()
        self.context = ContextLists(model.config.lists, model.config.k)

    def reset(self) -> None:
        self.context.reset()

    def score(self, features: np.ndarray | torch.Tensor) -> float:
        """Abnormal probability of the next clip from its raw features (dim,)."""
        return self.step(features).score

    @torch.no_grad()
    def step(self, features: np.ndarray | torch.Tensor) -> ClipStep:
        """The next clip's score, x and x~ from its raw features (dim,); x~ only draws on earlier clips."""
        x = self.model.standardise(torch.as_tensor(features, dtype=torch.float32))
        plain = self.model.predictor(x)
        if not self.model.config.lists:
            return ClipStep(float(abnormal_probability(plain)), x, x)
        enriched = self.model.contextual(x, self.context.lists(x))
        self.context.add(x, float(abnormal_probability(plain)))
        return ClipStep(float(abnormal_probability(self.model.predictor(enriched))), x, enriched)


def frame_scores(clip_scores: np.ndarray, clips: list[tuple[int, int]], num_frames: int) -> np.ndarray:
    """Clip scores spread over the frames: each frame takes the score of the first clip that holds it."""
    scores = np.zeros(num_frames, dtype=np.float64)
    for (start, end), score in reversed(list(zip(clips, clip_scores, strict=True))):
        scores[start:end] = score
    return scores


def clip_events(
    clip_scores: np.ndarray,
    clips: list[tuple[int, int]],
    num_frames: int,
    fps: float,
    frame_size: tuple[int, int],
    threshold: float,
    min_frames: int = 1,
    max_gap: int = 0,
) -> list[Event]:
    """Events where the clip scores pass ``threshold``, as stage 1's events; the box is the whole frame
    (the VADor scores clips, not places)."""
    whole_frame = np.tile([0, 0, frame_size[1], frame_size[0]], (num_frames, 1))
    return find_events(frame_scores(clip_scores, clips, num_frames), threshold, fps, whole_frame, min_frames, max_gap)


def template_answer(events: list[Event]) -> str:
    """VAD-LLaMA's time-stamped answer for a video's events (the phrasing ``callm instruct --answers timed`` uses)."""
    return timed_answer([(e.start_s, e.end_s) for e in events])


@dataclass
class VADorDetection:
    clips: list[tuple[int, int]]  # [start, end) frames of each clip
    clip_scores: np.ndarray  # abnormal probability per clip
    frame_scores: np.ndarray
    events: list[Event]
    answer: str
    answer_source: str  # "template", or "llm" when the phase-3 adaptor and the LLM wrote the answer


class VADorDetector:
    """An encoder and a trained VADor over whole videos: features, online scores, events, answer.

    With ``answerer`` (a phase-3 adaptor in front of an LLM) the LLM answers from the clips' [x, x~]; without
    it, the answer is the time-stamped template of the events.
    """

    def __init__(
        self,
        encoder: ClipEncoder,
        weights: VADorWeights,
        min_frames: int = 1,
        max_gap: int = 0,
        batch_size: int = 8,
        answerer: AdaptorLLM | None = None,
    ) -> None:
        weights.check_features(encoder.settings, "the encoder given")
        self.encoder = encoder
        self.scorer = OnlineScorer(weights.model)
        self.threshold = weights.threshold  # calibrated, or the 0.5 decision line
        self.min_frames = min_frames
        self.max_gap = max_gap
        self.batch_size = batch_size
        self.answerer = answerer

    def detect(self, video: Video, on_clip: Callable[[int], None] | None = None) -> VADorDetection:
        """``on_clip(frames_done)`` reports progress after every clip."""
        self.scorer.reset()
        clips, steps = [], []
        for clip, features in iter_clip_features(video, self.encoder, self.batch_size):
            clips.append(clip)
            steps.append(self.scorer.step(features))
            if on_clip is not None:
                on_clip(clip[1])
        clip_scores = np.array([step.score for step in steps])
        num_frames = clips[-1][1]
        events = clip_events(
            clip_scores,
            clips,
            num_frames,
            video.info.fps,
            (video.info.height, video.info.width),
            self.threshold,
            self.min_frames,
            self.max_gap,
        )
        if self.answerer is None:
            answer, source = template_answer(events), "template"
        else:
            starts = [start / video.info.fps for start, _ in clips]
            pairs = torch.stack([step.pair for step in steps])
            answer, source = self.answerer.answer(pairs, starts, str(video.path)), "llm"
        return VADorDetection(clips, clip_scores, frame_scores(clip_scores, clips, num_frames), events, answer, source)
