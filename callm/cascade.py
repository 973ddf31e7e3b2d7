"""The cascade: stage 1 scores every frame and gates 16-frame windows; later stages explain the gated ones."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from rich.progress import Progress

from callm.ae.calibrate import Calibration
from callm.ae.events import gated_windows
from callm.ae.online import StreamEvents, replayed_events
from callm.ae.regions import RegionFinder
from callm.ae.score import FrameScorer, scored_range
from callm.ae.weights import AEWeights, load
from callm.device import parse_dtype, pick_device
from callm.errors import CallmError
from callm.results import Detection, Explanation, LTCResult
from callm.video import DEFAULT_FOLDER_FPS, Video, check_fps, window_starts

if TYPE_CHECKING:  # stage 2 and the VADor are imported only by callers that asked for them
    from callm.vador.online import VADorDetector
    from callm.vlm.explain import Explainer
    from callm.vlm.frames import CallGrouping

FramesDone = Callable[[int, int | None], None]
# What an event is, in time: shorter blips above the threshold are flicker, and shorter dips below it do not split
# one. In seconds, so that a 25 frames/s camera gets the same events as Ped2's 10 (5 and 10 frames there).
MIN_EVENT_SECONDS = 0.5
MAX_GAP_SECONDS = 1.0


@dataclass(frozen=True)
class DetectOptions:
    # None: the stride the weights were calibrated at (8 for the shipped ones: windows every 8 frames, each
    # scoring its middle 8, 8x the paper's speed at nearly its accuracy).
    stride: int | None = None
    threshold: float | None = None  # None = the calibrated threshold stored with the weights
    min_event_frames: int | None = None  # None = MIN_EVENT_SECONDS at the video's frame rate
    max_gap: int | None = None  # None = MAX_GAP_SECONDS at the video's frame rate
    # An event covers the visit of the object that set it off, not only the frames scored high enough.
    follow_objects: bool = True
    folder_fps: float = DEFAULT_FOLDER_FPS
    batch_size: int = 8

    def __post_init__(self) -> None:
        """Every option checked before any video is read: a bad one must not cost a whole scoring pass first."""
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise CallmError(f"--threshold must be a finite number, got {self.threshold}")
        if self.min_event_frames is not None and self.min_event_frames < 1:
            raise CallmError(f"--min-event must be at least 1 frame, got {self.min_event_frames}")
        if self.max_gap is not None and self.max_gap < 0:
            raise CallmError(f"--max-gap must be 0 or more frames, got {self.max_gap}")
        check_fps(self.folder_fps)
        if self.stride is not None:
            scored_range(self.stride)

    def event_frames(self, fps: float) -> tuple[int, int]:
        """(shortest event, longest gap bridged) in frames of a video at ``fps``: as given, or the defaults' seconds."""
        min_frames = self.min_event_frames or max(1, round(MIN_EVENT_SECONDS * fps))
        max_gap = self.max_gap if self.max_gap is not None else round(MAX_GAP_SECONDS * fps)
        return min_frames, max_gap


class Stage1:
    """A loaded autoencoder with its calibration, ready to score any number of videos."""

    def __init__(self, weights: AEWeights, options: DetectOptions, device: torch.device, dtype: torch.dtype) -> None:
        self.calibration = Calibration.from_dict(weights.calibration)
        self.options = options
        self.model, self.device, self.dtype = weights.model, device, dtype
        self.scorer = self.new_scorer(options.batch_size)

    def new_scorer(self, batch_size: int) -> FrameScorer:
        """A scorer of this model and calibration; a live stream takes its own with ``batch_size`` 1, so that
        no frame waits for the windows after it."""
        calibration = self.calibration
        return FrameScorer(
            self.model,
            calibration.measure,
            device=self.device,
            dtype=self.dtype,
            stride=self.options.stride or calibration.stride,
            batch_size=batch_size,
            motion_step=calibration.motion_step,
            sustain=calibration.sustain_frames,
            flow=calibration.speed_of if calibration.uses_flow else "off",
            regions=RegionFinder(calibration),
        )

    @property
    def threshold(self) -> float:
        return self.calibration.threshold if self.options.threshold is None else self.options.threshold

    @property
    def hold(self) -> float:
        """The score an event lasts above once the threshold found it (see calibrate.Calibration.event_hold)."""
        return self.calibration.event_hold(self.threshold)

    def stream_events(self, fps: float, update_every: int) -> StreamEvents:
        """The event finder for a stream at ``fps``, with these options: what ``watch`` runs live and ``detect``
        replays a file through, so the two find the same events."""
        return StreamEvents(
            self.threshold, fps, *self.options.event_frames(fps), update_every=update_every, hold=self.hold,
            follow=self.options.follow_objects,
        )  # fmt: skip

    def detect(self, path: str | Path, on_frames: FramesDone | None = None) -> Detection:
        """Score one video; ``on_frames(done, total)`` follows the decoding (total is None when unknown)."""
        began = time.perf_counter()
        video = Video(path, folder_fps=self.options.folder_fps)
        total = video.info.num_frames or None
        frames = self.scorer.score(video, on_window=None if on_frames is None else lambda done: on_frames(done, total))
        scores = self.calibration.calibrated(frames.psnr, frames.speed)
        n = len(scores)
        # The events (and tracks) a live watch of this file reports; no "update" is wanted from a whole file.
        finder = self.stream_events(video.info.fps, update_every=n + 1)
        events = replayed_events(finder, scores, frames.boxes, frames.regions)
        return Detection(
            video=str(video.path),
            fps=video.info.fps,
            num_frames=n,
            frame_size=(video.info.height, video.info.width),
            threshold=self.threshold,
            psnr=frames.psnr,
            speed=frames.speed,
            fps_source=video.info.fps_source,
            regions=frames.regions,
            scores=scores,
            events=events,
            window_starts=window_starts(n),
            gated_starts=gated_windows(events, n),
            seconds=time.perf_counter() - began,
            settings={
                "stride": self.scorer.stride,
                "min_event_frames": finder.min_frames,
                "max_gap": finder.max_gap,
                "error": self.calibration.error,
                "patch": self.calibration.patch,
                "top_k": self.calibration.top_k,
                "smooth_sigma": self.calibration.smooth_sigma,
                "flow_weight": self.calibration.flow_weight,
                "motion_step": self.calibration.motion_step,
                "sustain_frames": self.calibration.sustain_frames,
                "event_hold": self.hold,
                "follow_objects": self.options.follow_objects,
            },
        )


class Stage2:
    """Puts each gated event in front of the video LLM and records its verdict."""

    def __init__(self, explainer: Explainer, grouping: CallGrouping = "event", folder_fps: float = DEFAULT_FOLDER_FPS):
        self.explainer = explainer
        self.grouping = grouping
        self.folder_fps = folder_fps

    def explain(self, detection: Detection, progress: Progress | None = None) -> None:
        from callm.vlm.frames import call_frames, stage2_calls

        calls = stage2_calls(detection, self.grouping)
        sampled = [call_frames(starts, self.explainer.config.frames) for _, starts in calls]
        # One decoding pass fetches every sampled frame, at full size and in colour, for all calls.
        frames = Video(detection.video, folder_fps=self.folder_fps).read_frames(i for f in sampled for i in f)
        answers: dict[int, list[Explanation]] = {}
        task = progress.add_task("stage 2", total=len(calls)) if progress else None
        for (event_index, starts), indices in zip(calls, sampled, strict=True):
            event = detection.events[event_index]
            answer = self.explainer.explain_sampled(
                np.stack([frames[i] for i in indices]),
                [i / detection.fps for i in indices],
                [event.box_at(i) for i in indices],
            )
            answers.setdefault(event_index, []).append(
                Explanation(answer.verdict, answer.text, answer.explicit, starts, indices)
            )
            if progress is not None and task is not None:
                progress.update(task, advance=1)
        detection.explanations = [_merge(answers[i]) for i in range(len(detection.events))]
        detection.vlm_calls = len(calls)


def explain_with_ltc(detection: Detection, detector: VADorDetector, folder_fps: float = DEFAULT_FOLDER_FPS) -> None:
    """Run the VADor over the video; its events join stage 1's in the result, marked as found by the LTC path.

    The answer is the LLM's when the detector has a phase-3 adaptor (``answer_source`` "llm"), else the template's.
    """
    found = detector.detect(Video(detection.video, folder_fps=folder_fps))
    detection.ltc = LTCResult(
        found.clips,
        [float(s) for s in found.clip_scores],
        found.events,
        found.answer,
        found.answer_source,
        detector.threshold,
    )


def _merge(parts: list[Explanation]) -> Explanation:
    """One event's answers from per-window calls: an anomaly if any window is one; texts joined in time order."""
    if len(parts) == 1:
        return parts[0]
    abnormal = [p for p in parts if p.verdict == "anomaly"]
    return Explanation(
        verdict="anomaly" if abnormal else "normal",
        text=" | ".join(p.text for p in parts),
        explicit=all(p.explicit for p in parts),
        window_starts=[s for p in parts for s in p.window_starts],
        frames=[f for p in parts for f in p.frames],
    )


@dataclass(frozen=True)
class Stage1Recipe:
    """How to build the stage-1 model in a worker (a loaded model does not travel between processes)."""

    weights: str
    options: DetectOptions
    device: str
    dtype: str

    def build(self) -> Stage1:
        device = pick_device(self.device)
        return Stage1(load(self.weights, device), self.options, device, parse_dtype(self.dtype, device))
