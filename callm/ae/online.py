"""Stage 1 on a stream: calibrated scores with a bounded lag, and events that open while they happen.

``callm detect`` smooths a whole video's scores at once and then cuts events; a live camera has no whole video.
Here the same Gaussian smoothing runs with a delay of its radius (4 sigma frames): a frame's smoothed score is
known once the frames that far after it are in, and is then exactly what the whole-video smoothing gives, but
for the last ``radius`` frames of a stream, which see the stream's end as ``detect`` sees a video's. Events are
``find_events``'s runs, found as they grow: an event *opens* when its run spans ``min_frames`` frames and
*closes* once ``max_gap + 1`` frames in a row stay below the threshold and a frame has fallen below the hold
(and, following objects, once its object is lost). ``detect`` replays a whole video through the same
``StreamEvents`` (``replayed_events``), so a stream's events are the events ``detect`` finds in the same file.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from callm.ae.calibrate import Calibration, smoothing_kernel
from callm.ae.regions import ObjectFollower, followed_back, link_tracks, track_gap
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
    """The frames of an event being found: from the first frame of the raised stretch its first frame above the
    threshold lies in, to the last frame above the threshold or still raised after it."""

    start: int
    core_start: int  # first frame above the threshold of the latest run of them (split by more than max_gap)
    last_above: int
    end: int
    peak: int
    peak_score: float
    peak_box: list[int]
    regions: dict[int, np.ndarray] = field(default_factory=dict)
    extending: bool = True  # every frame since last_above has been raised: the event still reaches on
    follower: ObjectFollower | None = None  # the object it follows on in time (see push)
    opened: bool = False

    @property
    def followed(self) -> ObjectFollower | None:
        """The object the event follows, while it is still found."""
        return self.follower if self.follower is not None and not self.follower.lost else None


class StreamEvents:
    """``find_events`` as the frames come: ``push`` each frame's final score, box and regions in order, get back
    ``(change, event)`` pairs; an open event is reported again (``update``) every ``update_every`` frames.

    With ``hold`` (see find_events), an event opens at its first frame above the threshold but starts where the
    raised stretch before it began (the frames' regions are kept meanwhile), and stays open while the scores
    stay raised.

    With ``follow``, an event also covers the visit of the object that set it off: the worst region of its first
    frame above the threshold is followed back through the frames before (as far as the previous event's end, or
    MAX_TRACK_FRAMES) and on through the frames after (once lost, the worst region of the next frame above the
    threshold takes its place); the event starts and lasts as far as the object is found (see
    regions.ObjectFollower). A slow anomaly often stands out
    enough for the threshold only for a moment of its visit; stage 2, the clip and the tracks get all of it.
    """

    def __init__(
        self, threshold: float, fps: float, min_frames: int, max_gap: int, update_every: int,
        hold: float | None = None, follow: bool = False,
    ) -> None:  # fmt: skip
        self.threshold, self.fps = threshold, fps
        self.hold = threshold if hold is None else min(hold, threshold)
        self.min_frames, self.max_gap, self.update_every = min_frames, max_gap, max(1, update_every)
        self.follow = follow
        self.track_gap = track_gap(fps)
        self.run: _Run | None = None
        self.raised_since: int | None = None  # first frame of the current stretch of raised frames
        # The regions of the frames since the last event ended (following objects), or of the current raised
        # stretch (else): where a new event may start.
        self.recent: dict[int, np.ndarray] = {}

    def push(
        self, frame: int, score: float, box: list[int], regions: np.ndarray | None
    ) -> list[tuple[EventChange, Event]]:
        out: list[tuple[EventChange, Event]] = []
        above, raised = score > self.threshold, score > self.hold
        if not raised:
            self.raised_since = None
        elif self.raised_since is None:
            self.raised_since = frame
        run = self.run
        if run is not None:
            run.extending = run.extending and raised
            followed = run.followed
            seen = followed is not None and followed.see(frame, regions)
            if frame - run.last_above > self.max_gap + 1 and not run.extending and run.followed is None:
                out += self.flush()
                self.recent = {f: r for f, r in run.regions.items() if f > run.end}
                run = None
            elif seen:
                run.end = frame
        if run is None:
            if regions is not None:
                _keep(self.recent, frame, regions)
            if not raised and not self.follow:
                self.recent.clear()
            if not above:
                return out
            assert self.raised_since is not None  # a frame above the threshold is raised
            start = self.raised_since
            if self.follow and regions is not None and len(regions):
                start = min(start, followed_back(self.recent, frame, regions[0][:4], self.track_gap))
            run = self.run = _Run(start, frame, frame, frame, frame, score, box)
            run.regions, self.recent = {f: r for f, r in self.recent.items() if f >= start}, {}
        elif regions is not None:
            _keep(run.regions, frame, regions)
        if run.extending:
            run.end = frame
        if above:
            if frame - run.last_above > self.max_gap + 1:  # a new run above, reached by the raised stretch
                run.core_start = frame
            run.last_above = run.end = frame
            run.extending = True
            # The object followed is the worst region of the run's first frame above the threshold, kept while it
            # is found: a later frame's worst region may be something else.
            if self.follow and run.followed is None and regions is not None and len(regions):
                run.follower = ObjectFollower(regions[0][:4], frame, self.track_gap)
            if score > run.peak_score:
                run.peak, run.peak_score, run.peak_box = frame, score, box
            if not run.opened and frame - run.core_start + 1 >= self.min_frames:
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
        linked = link_tracks(run.regions, min(run.regions), run.end, self.track_gap) if tracks and run.regions else []
        return Event(
            start_frame=run.start,
            end_frame=run.end,
            start_s=round(run.start / self.fps, 3),
            end_s=round((run.end + 1) / self.fps, 3),
            peak_frame=run.peak,
            peak_score=run.peak_score,
            box=list(run.peak_box),
            tracks=linked,
        )


def _keep(regions: dict[int, np.ndarray], frame: int, found: np.ndarray) -> None:
    """Add a frame's regions; an event lasting hours keeps its last stretch only (memory stays bounded)."""
    regions[frame] = found
    if len(regions) > MAX_TRACK_FRAMES:
        del regions[next(iter(regions))]


def replayed_events(
    events: StreamEvents, scores: np.ndarray, boxes: np.ndarray, regions: Sequence[np.ndarray] | None
) -> list[Event]:
    """A whole video's events, found by pushing its frames through ``events``: what a live watch of the same file
    reports, tracks included."""
    changes = []
    for frame, score in enumerate(scores):
        found = None if regions is None else regions[frame]
        changes += events.push(frame, float(score), [int(v) for v in boxes[frame]], found)
    changes += events.flush()
    return [event for change, event in changes if change == "close"]
