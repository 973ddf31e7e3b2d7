"""Stage 1 on a stream: calibrated scores with a bounded lag, and events that open while they happen.

``callm detect`` smooths a whole video's scores at once and then cuts events; a live camera has no whole video.
Here the same Gaussian smoothing runs with a delay of its radius (4 sigma frames): a frame's smoothed score is
known once the frames that far after it are in, and is then exactly what the whole-video smoothing gives, but
for the last ``radius`` frames of a stream, which see the stream's end as ``detect`` sees a video's. Events are
``find_events``'s runs, found as they grow: an event *opens* when its run spans ``min_frames`` frames and
*closes* once ``max_gap + 1`` frames in a row stay below the threshold, so a stream's events are the events
``detect`` finds in the same file.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from callm.ae.calibrate import Calibration, smoothing_kernel
from callm.ae.regions import link_tracks
from callm.results import Event

EventChange = Literal["open", "update", "close"]
# Frames of regions an open event keeps for its tracks: 10 minutes at 25 fps (memory stays bounded).
MAX_TRACK_FRAMES = 15000


class StreamScores:
    """A calibration applied frame by frame: ``push`` one frame's signals and get back the frames whose
    calibrated score is now final, as ``(frame, score)``; ``flush`` at the stream's end gives the rest."""

    def __init__(self, calibration: Calibration) -> None:
        self.calibration = calibration
        self.kernel = smoothing_kernel(calibration.smooth_sigma)
        self.lag = len(self.kernel) // 2  # frames a score waits for the frames after it
        # The mixed signal of frames ``last - 2 lag .. last``; frames before the first are copies of it.
        self.mixed: deque[float] = deque(maxlen=len(self.kernel))
        self.last = -1
        self.pushed = 0

    def push(self, psnr: float, speed: float | None) -> list[tuple[int, float]]:
        speeds = None if speed is None else np.array([speed])
        value = float(self.calibration.mixed(np.array([psnr]), speeds)[0])
        if not self.mixed:
            self.mixed.extend([value] * self.lag)
        self.pushed += 1
        return self._append(value)

    def flush(self) -> list[tuple[int, float]]:
        """The last ``lag`` frames, the stream's last value standing for the frames after it."""
        out: list[tuple[int, float]] = []
        while self.mixed and self.last - self.lag < self.pushed - 1:
            out += self._append(self.mixed[-1])
        return out

    def _append(self, value: float) -> list[tuple[int, float]]:
        self.mixed.append(value)
        self.last += 1
        frame = self.last - self.lag
        if frame < 0:
            return []
        smoothed = float(np.dot(self.kernel, self.mixed))
        return [(frame, (smoothed - self.calibration.score_center) / self.calibration.score_scale)]


@dataclass
class _Run:
    """The frames of an event being found: from its first frame above the threshold to its last so far."""

    start: int
    last_above: int
    peak: int
    peak_score: float
    peak_box: list[int]
    regions: dict[int, np.ndarray] = field(default_factory=dict)
    opened: bool = False


class StreamEvents:
    """``find_events`` as the frames come: ``push`` each frame's final score, box and regions in order, get back
    ``(change, event)`` pairs; an open event is reported again (``update``) every ``update_every`` frames."""

    def __init__(self, threshold: float, fps: float, min_frames: int, max_gap: int, update_every: int) -> None:
        self.threshold, self.fps = threshold, fps
        self.min_frames, self.max_gap, self.update_every = min_frames, max_gap, max(1, update_every)
        self.run: _Run | None = None

    def push(
        self, frame: int, score: float, box: list[int], regions: np.ndarray | None
    ) -> list[tuple[EventChange, Event]]:
        out: list[tuple[EventChange, Event]] = []
        run = self.run
        if run is not None and frame - run.last_above > self.max_gap + 1:
            out += self.flush()
            run = None
        above = score > self.threshold
        if run is None:
            if not above:
                return out
            run = self.run = _Run(frame, frame, frame, score, box)
        if regions is not None:
            run.regions[frame] = regions
            if len(run.regions) > MAX_TRACK_FRAMES:  # an event lasting hours keeps its last stretch only
                del run.regions[next(iter(run.regions))]
        if above:
            run.last_above = frame
            if score > run.peak_score:
                run.peak, run.peak_score, run.peak_box = frame, score, box
            if not run.opened and frame - run.start + 1 >= self.min_frames:
                run.opened = True
                out.append(("open", self.event(run)))
            elif run.opened and (frame - run.start) % self.update_every == 0:
                out.append(("update", self.event(run)))
        return out

    def flush(self) -> list[tuple[EventChange, Event]]:
        """Close the event being found (the stream ended, or its gap ran out)."""
        run, self.run = self.run, None
        if run is None or not run.opened:
            return []
        return [("close", self.event(run, tracks=True))]

    def event(self, run: _Run, tracks: bool = False) -> Event:
        """The event as far as it is known; its tracks (linked over all its frames) when it closes."""
        end = run.last_above
        linked = link_tracks(run.regions, min(run.regions), end) if tracks and run.regions else []
        return Event(
            start_frame=run.start,
            end_frame=end,
            start_s=round(run.start / self.fps, 3),
            end_s=round((end + 1) / self.fps, 3),
            peak_frame=run.peak,
            peak_score=run.peak_score,
            box=list(run.peak_box),
            tracks=linked,
        )
