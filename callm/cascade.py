"""The cascade: stage 1 scores every frame and gates 16-frame windows; later stages explain the gated ones."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from rich.progress import Progress

from callm.ae.calibrate import Calibration
from callm.ae.events import Event, find_events, gated_windows, window_starts
from callm.ae.score import FrameScorer, scored_range
from callm.ae.weights import AEWeights, load
from callm.device import parse_dtype, pick_device
from callm.errors import CallmError
from callm.files import read_json
from callm.metrics import minmax
from callm.video import DEFAULT_FOLDER_FPS, WINDOW, Video, check_fps

if TYPE_CHECKING:  # stage 2 and the VADor are imported only by callers that asked for them
    from callm.vador.online import VADorDetector
    from callm.vlm.explain import Explainer

CallGrouping = Literal["event", "window"]
FramesDone = Callable[[int, int | None], None]


@dataclass(frozen=True)
class DetectOptions:
    # None: the stride the weights were calibrated at (8 for the shipped ones: windows every 8 frames, each
    # scoring its middle 8, 8x the paper's speed at nearly its accuracy).
    stride: int | None = None
    threshold: float | None = None  # None = the calibrated threshold stored with the weights
    min_event_frames: int = 5  # half a second at Ped2's 10 fps; shorter blips are flicker
    max_gap: int = 10  # below-threshold dips this short do not split an event
    folder_fps: float = DEFAULT_FOLDER_FPS
    batch_size: int = 8

    def __post_init__(self) -> None:
        """Every option checked before any video is read: a bad one must not cost a whole scoring pass first."""
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise CallmError(f"--threshold must be a finite number, got {self.threshold}")
        if self.min_event_frames < 1:
            raise CallmError(f"--min-event must be at least 1 frame, got {self.min_event_frames}")
        if self.max_gap < 0:
            raise CallmError(f"--max-gap must be 0 or more frames, got {self.max_gap}")
        check_fps(self.folder_fps)
        if self.stride is not None:
            scored_range(self.stride)


@dataclass(frozen=True)
class Explanation:
    """Stage 2's answer about one event."""

    verdict: str  # "anomaly" or "normal"
    text: str
    explicit: bool  # False when the answer held no yes/no and the verdict fell back to "anomaly"
    window_starts: list[int]  # the gated windows the model was shown
    frames: list[int]  # the frames sampled from them

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "explanation": self.text,
            "verdict_explicit": self.explicit,
            "vlm_windows": self.window_starts,
            "vlm_frames": self.frames,
        }


@dataclass(frozen=True)
class LTCResult:
    """What the VADor (+ Long-Term Context) found in a video: clip scores, its own events and its answer."""

    clips: list[tuple[int, int]]  # [start, end) frames of each clip
    clip_scores: list[float]  # abnormal probability per clip
    events: list[Event]
    answer: str  # VAD-LLaMA's time-stamped answer
    answer_source: str  # "template", or "llm" when a phase-3 adaptor wrote it
    threshold: float  # the clip score above which a clip is abnormal

    def to_dict(self) -> dict[str, Any]:
        return {
            "clips": [list(c) for c in self.clips],
            "clip_scores": [round(float(s), 4) for s in self.clip_scores],
            "threshold": round(self.threshold, 4),
            "events": [{**e.to_dict(), "found_by": "ltc"} for e in self.events],
            "answer": self.answer,
            "answer_source": self.answer_source,
        }


@dataclass
class Detection:
    """Everything stage 1 found in one video; ``to_dict`` is the documented JSON layout."""

    video: str
    fps: float
    num_frames: int
    frame_size: tuple[int, int]  # (height, width) of the original frames
    threshold: float
    psnr: np.ndarray  # per frame, before smoothing: the autoencoder's signal
    scores: np.ndarray  # calibrated, higher = more abnormal; the threshold applies to these
    events: list[Event]
    window_starts: list[int]
    gated_starts: list[int]
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    explanations: list[Explanation] | None = None  # one per event once stage 2 ran, None without it
    vlm_calls: int = 0
    ltc: LTCResult | None = None  # the VAD-LLaMA path's own finding, with --explainer ltc
    speed: np.ndarray | None = None  # per frame, dB: the optical-flow signal, when the weights use it
    fps_source: str = "container"  # see VideoInfo.fps_source; "assumed" means every time is a guess

    @property
    def scores_minmax(self) -> np.ndarray:
        """Per-video min-max normalised score, the benchmark protocol (needs the whole video)."""
        return minmax(self.scores)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Detection:
        """The Detection a ``to_dict`` (a ``detect --json`` file) was written from; KeyError etc. if it is not one."""
        num_frames = int(data["num_frames"])
        explanations = None
        if "vlm_calls" in data:  # stage 2 ran: every event carries its verdict
            explanations = [
                Explanation(e["verdict"], e["explanation"], e["verdict_explicit"], e["vlm_windows"], e["vlm_frames"])
                for e in data["events"]
            ]
        return cls(
            video=data["video"],
            fps=float(data["fps"]),
            num_frames=num_frames,
            frame_size=(int(data["frame_size"][0]), int(data["frame_size"][1])),
            threshold=float(data["threshold"]),
            psnr=np.asarray(data["psnr"], dtype=np.float64),
            speed=np.asarray(data["speed"], dtype=np.float64) if "speed" in data else None,
            fps_source=data.get("fps_source", "container"),
            scores=np.asarray(data["scores"], dtype=np.float64),
            events=[Event(**{f.name: event[f.name] for f in fields(Event)}) for event in data["events"]],
            window_starts=window_starts(num_frames),
            gated_starts=[int(s) for s in data["gated_window_starts"]],
            seconds=float(data["seconds"]),
            settings=data.get("settings", {}),
            explanations=explanations,
            vlm_calls=int(data.get("vlm_calls", 0)),
        )

    def to_dict(self) -> dict[str, Any]:
        events = [e.to_dict() for e in self.events]
        if self.explanations is not None:
            for event, explanation in zip(events, self.explanations, strict=True):
                event.update(explanation.to_dict())
        for event in events:
            event["found_by"] = "stage1"
        result = {
            "video": self.video,
            "fps": self.fps,
            "fps_source": self.fps_source,
            "num_frames": self.num_frames,
            "frame_size": list(self.frame_size),
            "threshold": self.threshold,
            "scores": [round(float(s), 4) for s in self.scores],
            "scores_minmax": [round(float(s), 4) for s in self.scores_minmax],
            "psnr": [round(float(p), 3) for p in self.psnr],
            **({"speed": [round(float(v), 3) for v in self.speed]} if self.speed is not None else {}),
            "events": events,
            "windows_total": len(self.window_starts),
            "windows_gated": len(self.gated_starts),
            "gated_window_starts": self.gated_starts,
            "seconds": round(self.seconds, 3),
            "settings": self.settings,
        }
        if self.explanations is not None:
            result["vlm_calls"] = self.vlm_calls
        if self.ltc is not None:
            result["ltc"] = self.ltc.to_dict()
        return result


class Stage1:
    """A loaded autoencoder with its calibration, ready to score any number of videos."""

    def __init__(self, weights: AEWeights, options: DetectOptions, device: torch.device, dtype: torch.dtype) -> None:
        self.calibration = Calibration.from_dict(weights.calibration)
        self.options = options
        calibration = self.calibration
        self.scorer = FrameScorer(
            weights.model,
            calibration.measure,
            device=device,
            dtype=dtype,
            stride=options.stride or calibration.stride,
            batch_size=options.batch_size,
            motion_step=calibration.motion_step,
            flow=calibration.speed_of if calibration.uses_flow else "off",
        )

    @property
    def threshold(self) -> float:
        return self.calibration.threshold if self.options.threshold is None else self.options.threshold

    def detect(self, path: str | Path, on_frames: FramesDone | None = None) -> Detection:
        """Score one video; ``on_frames(done, total)`` follows the decoding (total is None when unknown)."""
        began = time.perf_counter()
        video = Video(path, folder_fps=self.options.folder_fps)
        total = video.info.num_frames or None
        frames = self.scorer.score(video, on_window=None if on_frames is None else lambda done: on_frames(done, total))
        scores = self.calibration.calibrated(frames.psnr, frames.speed)
        n = len(scores)
        events = find_events(
            scores,
            self.threshold,
            video.info.fps,
            frames.boxes,
            min_frames=self.options.min_event_frames,
            max_gap=self.options.max_gap,
        )
        return Detection(
            video=str(video.path),
            fps=video.info.fps,
            num_frames=n,
            frame_size=(video.info.height, video.info.width),
            threshold=self.threshold,
            psnr=frames.psnr,
            speed=frames.speed,
            fps_source=video.info.fps_source,
            scores=scores,
            events=events,
            window_starts=window_starts(n),
            gated_starts=gated_windows(events, n),
            seconds=time.perf_counter() - began,
            settings={
                "stride": self.scorer.stride,
                "min_event_frames": self.options.min_event_frames,
                "max_gap": self.options.max_gap,
                "error": self.calibration.error,
                "patch": self.calibration.patch,
                "top_k": self.calibration.top_k,
                "smooth_sigma": self.calibration.smooth_sigma,
                "flow_weight": self.calibration.flow_weight,
                "motion_step": self.calibration.motion_step,
            },
        )


def read_detection(path: str | Path) -> Detection:
    """A ``callm detect --json`` file (or a scan's per-video JSON) back as a Detection."""
    try:
        return Detection.from_dict(read_json(path))
    except (KeyError, TypeError, ValueError, IndexError):
        raise CallmError(f"{path}: not a callm detect JSON file (written by callm detect --json)") from None


def call_frames(window_starts: list[int], count: int) -> list[int]:
    """The ``count`` frames a stage-2 call about these (adjacent) windows shows, sampled across all of them."""
    from callm.vlm.frames import window_indices

    return window_indices(window_starts[0], window_starts[-1] + WINDOW, count)


def stage2_calls(detection: Detection, grouping: CallGrouping) -> list[tuple[int, list[int]]]:
    """(event index, window starts) for each stage-2 call: an event's gated windows in one call, or one each."""
    calls = []
    for index, event in enumerate(detection.events):
        starts = [s for s in detection.gated_starts if s <= event.end_frame and s + WINDOW > event.start_frame]
        if grouping == "event":
            calls.append((index, starts))
        else:
            calls.extend((index, [s]) for s in starts)
    return calls


class Stage2:
    """Puts each gated event in front of the video LLM and records its verdict."""

    def __init__(self, explainer: Explainer, grouping: CallGrouping = "event", folder_fps: float = DEFAULT_FOLDER_FPS):
        self.explainer = explainer
        self.grouping = grouping
        self.folder_fps = folder_fps

    def explain(self, detection: Detection, progress: Progress | None = None) -> None:
        calls = stage2_calls(detection, self.grouping)
        sampled = [call_frames(starts, self.explainer.config.frames) for _, starts in calls]
        # One decoding pass fetches every sampled frame, at full size and in colour, for all calls.
        frames = Video(detection.video, folder_fps=self.folder_fps).read_frames(i for f in sampled for i in f)
        answers: dict[int, list[Explanation]] = {}
        task = progress.add_task("stage 2", total=len(calls)) if progress else None
        for (event_index, starts), indices in zip(calls, sampled, strict=True):
            event = detection.events[event_index]
            answer = self.explainer.explain_sampled(
                np.stack([frames[i] for i in indices]), [i / detection.fps for i in indices], event.box
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
