"""Dense optical flow on the model's frames, summarised per frame as the fastest cells of each cell row.

The autoencoder says how unusual a clip looks; the flow says how fast things move. On walkways the commonest
anomalies (bikes, carts, skaters, runners) are faster than anything in normal footage, and an autoencoder,
which generalises to reconstruct motion it never saw, under-reports exactly that. OpenCV's DIS flow (fast
preset, finest scale 0) on the model-size frames costs a few milliseconds a frame on one core.

Each frame's flow becomes a grid of cells (mean speed per cell), which the region finder reads while the frame
is scored; what is kept of it is only the ``TOP_PER_ROW`` fastest cells of every cell row. That is enough to apply
a perspective profile later (one divisor per row keeps each row's order), so calibration can fit the profile
after scoring, and a frame costs a few hundred bytes however long the video.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

TOP_PER_ROW = 4
CELLS_PER_HEIGHT = 20  # a cell is 1/20 of the frame height: about one walker's width at Ped2's scale
MIN_FLOW_SIDE = 12  # DIS needs a frame at least this wide or high
SPEED_EPS = 0.02  # px/frame added before the log, so still frames do not dominate the scale
SUSTAIN_SECONDS = 0.5  # default: how long a speed must be kept up to count fully (see SustainedSpeed)


def cell_side(height: int) -> int:
    return max(2, round(height / CELLS_PER_HEIGHT))


def flow_estimator() -> cv2.DISOpticalFlow:
    estimator = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
    estimator.setFinestScale(0)  # the fast preset stops at 1/4 resolution, where a far cyclist is a pixel
    return estimator


def speed_cells(speed: np.ndarray, cell: int) -> np.ndarray:
    """(rows, cols) float32: the mean speed over each ``cell`` x ``cell`` cell of a speed map."""
    h, w = speed.shape
    rows, cols = h // cell, w // cell
    return speed[: rows * cell, : cols * cell].reshape(rows, cell, cols, cell).mean(axis=(1, 3))


def row_tops(cells: np.ndarray) -> np.ndarray:
    """(rows, TOP_PER_ROW) float16: each cell row's fastest cells, fastest first."""
    cols = cells.shape[1]
    k = min(TOP_PER_ROW, cols)
    top = -np.sort(-cells, axis=1)[:, :k]
    if k < TOP_PER_ROW:
        top = np.pad(top, ((0, 0), (0, TOP_PER_ROW - k)))
    return top.astype(np.float16)


def motion_step(fps: float) -> int:
    """Frames between the two images of a flow: about 0.1 s, so speeds read the same at 10 and 30 fps."""
    return max(1, round(fps / 10.0))


@dataclass(frozen=True)
class FlowTiming:
    """The flow's two durations in frames of the footage: ``step`` frames between a flow's two images (about
    0.1 s) and ``sustain`` frames a speed is kept up for to count (see SustainedSpeed; 1 = instantaneous)."""

    step: int = 1
    sustain: int = 1

    @classmethod
    def for_fps(cls, fps: float, sustain_seconds: float) -> FlowTiming:
        return cls(motion_step(fps), max(1, round(sustain_seconds * fps)))


class SustainedSpeed:
    """Each cell's speed as far as it was kept up over the last ``frames`` frames.

    A walker's limbs flick fast for a frame and a flow glitch lasts one; a bike, a cart or a skater keeps its
    speed, even at walking pace. A cell's sustained speed is the lowest, over the last frames, of the fastest
    cell within reach of it: where something moving at the cell's current speed could have been ``j`` frames
    earlier, plus one cell of slack. Fast things have a long reach, so they are followed, not lost. Fed the
    cells of consecutive frames of one stream; with ``frames`` 1 it returns them as they are.
    """

    def __init__(self, frames: int, step: int, cell: int) -> None:
        self.frames = frames
        self.cells_per_px = 1.0 / (step * cell)  # a speed is in px per ``step`` frames; reach is in cells per frame
        # The frames before, latest first, each as {radius: its cells' maximum within that radius}; 0 is the cells
        # themselves. A frame is looked back at for several frames and mostly at the same radii, so each maximum
        # is computed once.
        self.history: deque[dict[int, np.ndarray]] = deque(maxlen=frames - 1)

    def __call__(self, cells: np.ndarray) -> np.ndarray:
        if self.frames <= 1:
            return cells
        sustained = cells.astype(np.float32, copy=True)
        per_frame = cells * self.cells_per_px
        longest = max(cells.shape)
        for lag, past in enumerate(self.history, start=1):
            reach = np.minimum(np.ceil(lag * per_frame).astype(np.int64) + 1, longest)
            nearby = np.empty_like(sustained)
            for radius in np.unique(reach).tolist():
                if radius not in past:
                    side = 2 * radius + 1
                    past[radius] = cv2.dilate(past[0], np.ones((side, side), np.uint8))
                here = reach == radius
                nearby[here] = past[radius][here]
            np.minimum(sustained, nearby, out=sustained)
        self.history.appendleft({0: cells.astype(np.float32)})
        return sustained


def with_speed_cells(frames: Iterable[np.ndarray], step: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(frame, speed cells) for every grey uint8 frame; the speed is the flow from ``step`` frames earlier.

    The first ``step`` frames have no earlier frame and take the first computed cells, so a video's start
    does not read as a standstill.
    """
    estimator = flow_estimator()
    history: deque[np.ndarray] = deque(maxlen=step)
    waiting: list[np.ndarray] = []  # the first frames, until the first flow exists
    for frame in frames:
        if len(history) < step:
            history.append(frame)
            waiting.append(frame)
            continue
        if max(frame.shape) >= MIN_FLOW_SIDE:
            flow = estimator.calc(history[0], frame, None)
            speed = np.sqrt(flow[..., 0] ** 2 + flow[..., 1] ** 2)
        else:  # too small for DIS's pyramid: no motion is measured
            speed = np.zeros(frame.shape, np.float32)
        history.append(frame)
        cells = speed_cells(speed, cell_side(frame.shape[0]))
        for early in waiting:
            yield early, cells
        waiting.clear()
        yield frame, cells
    if waiting:  # shorter than one step: no motion can be measured
        side = cell_side(waiting[0].shape[0])
        cells = np.zeros((waiting[0].shape[0] // side, waiting[0].shape[1] // side), np.float32)
        for early in waiting:
            yield early, cells


@dataclass(frozen=True)
class SpeedProfile:
    """Typical speed of moving things per cell row: perspective makes near people fast and far ones slow.

    Fitted on normal footage as a straight line over rows (a ground plane's image speed changes about linearly
    with the row), floored at half the typical speed so rows nobody walks in do not blow up.
    """

    per_row: tuple[float, ...]

    def normalise(self, rows: np.ndarray) -> np.ndarray:
        """Row tops (..., rows, k) divided by the profile."""
        return rows.astype(np.float32) / np.asarray(self.per_row, dtype=np.float32)[:, None]

    @classmethod
    def flat(cls, rows: int) -> SpeedProfile:
        return cls(tuple([1.0] * rows))

    @classmethod
    def fit(cls, tops: Sequence[np.ndarray], min_frames: int = 20) -> SpeedProfile:
        """From the row tops (frames, rows, k) of normal videos."""
        fastest = np.concatenate([t[:, :, 0].astype(np.float32) for t in tops])  # (frames, rows)
        rows = fastest.shape[1]
        moving = 0.25 * float(np.quantile(fastest, 0.99))
        if moving <= 0:
            return cls.flat(rows)
        typical, weight = np.full(rows, np.nan), np.zeros(rows)
        for r in range(rows):
            speeds = fastest[:, r][fastest[:, r] > moving]
            if speeds.size >= min_frames:
                typical[r], weight[r] = np.median(speeds), np.sqrt(speeds.size)
        valid = np.flatnonzero(weight > 0)
        if valid.size < 3:
            return cls.flat(rows)
        slope, intercept = np.polyfit(valid, typical[valid], 1, w=weight[valid])
        median = float(np.median(typical[valid]))
        line = np.maximum(intercept + slope * np.arange(rows), 0.5 * median) / median
        return cls(tuple(round(float(v), 5) for v in line))


def speed_signal(tops: np.ndarray, profile: SpeedProfile, top_k: int) -> np.ndarray:
    """Per-frame flow signal in dB: 20 log10 of the mean of the ``top_k`` fastest profile-normalised cells."""
    normalised = profile.normalise(tops).reshape(len(tops), -1)
    k = min(top_k, normalised.shape[1])
    fastest = -np.sort(-normalised, axis=1)[:, :k]
    return 20.0 * np.log10(fastest.mean(axis=1) + SPEED_EPS)
