"""The cascade: stage 1 scores every frame and gates 16-frame windows; later stages explain the gated ones."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress

from callm.ae.calibrate import Calibration, smooth_curve
from callm.ae.events import Event, find_events, gated_windows, window_starts
from callm.ae.score import FrameScorer
from callm.ae.weights import AEWeights
from callm.metrics import minmax
from callm.video import DEFAULT_FOLDER_FPS, Video


@dataclass(frozen=True)
class DetectOptions:
    # Windows every 8 frames, each scoring its middle 8: 8x the paper's speed (stride 1) at nearly its accuracy.
    stride: int = 8
    threshold: float | None = None  # None = the calibrated threshold stored with the weights
    min_event_frames: int = 5  # half a second at Ped2's 10 fps; shorter blips are flicker
    max_gap: int = 10  # below-threshold dips this short do not split an event
    folder_fps: float = DEFAULT_FOLDER_FPS
    batch_size: int = 8


@dataclass
class Detection:
    """Everything stage 1 found in one video; ``to_dict`` is the documented JSON layout."""

    video: str
    fps: float
    num_frames: int
    frame_size: tuple[int, int]  # (height, width) of the original frames
    threshold: float
    psnr: np.ndarray  # per frame, before smoothing
    scores: np.ndarray  # calibrated, higher = more abnormal; the threshold applies to these
    events: list[Event]
    window_starts: list[int]
    gated_starts: list[int]
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def scores_minmax(self) -> np.ndarray:
        """Per-video min-max normalised score, the benchmark protocol (needs the whole video)."""
        return minmax(self.scores)

    def to_dict(self) -> dict[str, Any]:
        return {
            "video": self.video,
            "fps": self.fps,
            "num_frames": self.num_frames,
            "frame_size": list(self.frame_size),
            "threshold": self.threshold,
            "scores": [round(float(s), 4) for s in self.scores],
            "scores_minmax": [round(float(s), 4) for s in self.scores_minmax],
            "psnr": [round(float(p), 3) for p in self.psnr],
            "events": [e.to_dict() for e in self.events],
            "windows_total": len(self.window_starts),
            "windows_gated": len(self.gated_starts),
            "gated_window_starts": self.gated_starts,
            "seconds": round(self.seconds, 3),
            "settings": self.settings,
        }


class Stage1:
    """A loaded autoencoder with its calibration, ready to score any number of videos."""

    def __init__(self, weights: AEWeights, options: DetectOptions, device: torch.device, dtype: torch.dtype) -> None:
        self.calibration = Calibration.from_dict(weights.calibration)
        self.options = options
        self.scorer = FrameScorer(
            weights.model,
            self.calibration.measure,
            device=device,
            dtype=dtype,
            stride=options.stride,
            batch_size=options.batch_size,
        )

    @property
    def threshold(self) -> float:
        return self.calibration.threshold if self.options.threshold is None else self.options.threshold

    def detect(self, path: str | Path, progress: Progress | None = None) -> Detection:
        began = time.perf_counter()
        video = Video(path, folder_fps=self.options.folder_fps)
        task = None
        if progress is not None:
            task = progress.add_task(video.path.name, total=video.info.num_frames or None)

        def advance(frames_done: int) -> None:
            if progress is not None and task is not None:
                progress.update(task, completed=frames_done)

        frames = self.scorer.score(video, on_window=advance)
        if progress is not None and task is not None:
            progress.remove_task(task)
        scores = self.calibration.calibrated(smooth_curve(frames.psnr, self.calibration.smooth_sigma))
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
            scores=scores,
            events=events,
            window_starts=window_starts(n),
            gated_starts=gated_windows(events, n),
            seconds=time.perf_counter() - began,
            settings={
                "stride": self.options.stride,
                "min_event_frames": self.options.min_event_frames,
                "max_gap": self.options.max_gap,
                "error": self.calibration.error,
                "patch": self.calibration.patch,
                "top_k": self.calibration.top_k,
                "smooth_sigma": self.calibration.smooth_sigma,
            },
        )
