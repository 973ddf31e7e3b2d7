"""Stage-1 scoring: reconstruct windows, turn each frame's reconstruction error into PSNR, a score and a box.

A frame's value comes from the window, among those scored, that contains it and whose centre (its 9th
frame, index 8) is nearest. With ``stride=1`` every window scores only its centre frame, as in the CALLM
paper; with ``stride=k`` windows start every k frames and each scores its middle k frames, k times faster.
Frames before the first centre and after the last one take the nearest window's value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, overload

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from callm.ae.model import ConvAutoencoder3d
from callm.ae.motion import SustainedSpeed, cell_side, row_tops, with_speed_cells
from callm.device import autocast
from callm.errors import CallmError
from callm.video import WINDOW, Video, Window, batched_windows, iter_windows, prefetch

CENTRE = 8  # the 9th frame of a 16-frame window is the one the paper scores


def to_model_range(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 grey frames (..., H, W) to float in [-1, 1], the range of the decoder's Tanh."""
    tensor = torch.as_tensor(frames)
    return tensor.float().div_(127.5).sub_(1.0)


def psnr_from_mse(mse: np.ndarray | torch.Tensor) -> np.ndarray:
    """PSNR in dB of frames in [-1, 1], measured as images in [0, 1] (peak 1): 10 log10(1 / (mse / 4))."""
    mse01 = np.asarray(mse, dtype=np.float64) / 4.0
    return 10.0 * np.log10(1.0 / np.maximum(mse01, 1e-10))


ERROR_KINDS = ("frame", "motion")


def error_maps(clips: torch.Tensor, reconstruction: torch.Tensor, kind: str) -> torch.Tensor:
    """Squared-error maps (B, T, H, W) of clips and their reconstructions, both (B, T, H, W) in [-1, 1].

    ``frame`` compares pixels, as the CALLM paper does. ``motion`` compares the change from the previous
    frame: an autoencoder of normal footage redraws a person where they stand but cannot redraw motion it
    has never seen (a bike's speed, a cart's path), and static texture errors cancel out. Frame 0 has no
    predecessor and takes frame 1's map.
    """
    if kind == "frame":
        return (reconstruction - clips).square_()
    if kind == "motion":
        diff = (reconstruction[:, 1:] - reconstruction[:, :-1]) - (clips[:, 1:] - clips[:, :-1])
        diff = diff.square_()
        return torch.cat([diff[:, :1], diff], dim=1)
    raise CallmError(f"unknown error kind {kind!r}: use one of {', '.join(ERROR_KINDS)}")


@dataclass(frozen=True)
class ErrorMeasure:
    """Which error a frame is scored by; stored in the calibration so detection measures as training did."""

    kind: str = "motion"  # see error_maps
    patch: int = 32  # side of the scored region in model pixels; 0 = the whole frame (the paper's PSNR)
    top_k: int = 8  # mean of the k worst regions (half-overlapping), steadier than the single worst


def frame_mse(errors: torch.Tensor, measure: ErrorMeasure) -> torch.Tensor:
    """Mean squared error per frame from squared-error maps (N, H, W).

    With ``patch > 0`` only the worst regions count, so a small abnormal object is not diluted by a
    large static background.
    """
    if measure.patch <= 0:
        return errors.mean(dim=(-2, -1))
    pooled = F.avg_pool2d(errors[:, None], kernel_size=measure.patch, stride=max(1, measure.patch // 2)).flatten(1)
    return pooled.topk(min(measure.top_k, pooled.shape[1]), dim=1).values.mean(dim=1)


def error_box(error: np.ndarray, frame_size: tuple[int, int], blur: int) -> list[int]:
    """Box ``[x0, y0, x1, y1]`` in original-frame pixels around the region of largest reconstruction error.

    The error map is smoothed, the blob above half its peak that holds the peak is taken, and its bounding
    box is scaled from model resolution to the frame's own size.
    """
    h, w = error.shape
    k = max(3, blur | 1)
    smooth = cv2.GaussianBlur(error.astype(np.float32), (k, k), 0)
    peak = float(smooth.max())
    y, x = np.unravel_index(int(smooth.argmax()), smooth.shape)
    if peak <= 0:
        return [0, 0, frame_size[1], frame_size[0]]
    mask = (smooth >= 0.5 * peak).astype(np.uint8)
    _, labels = cv2.connectedComponents(mask, connectivity=8)
    ys, xs = np.nonzero(labels == labels[y, x])
    sy, sx = frame_size[0] / h, frame_size[1] / w
    return [
        int(np.floor(xs.min() * sx)),
        int(np.floor(ys.min() * sy)),
        int(np.ceil((xs.max() + 1) * sx)),
        int(np.ceil((ys.max() + 1) * sy)),
    ]


MAX_REGIONS = 4  # per frame; more is noise on a surveillance frame


class FrameRegions(Sequence[np.ndarray]):
    """Each frame's regions, (k, 5) float32 ``[x0, y0, x1, y1, score]`` worst first, k <= MAX_REGIONS.

    Held in fixed blocks of frames rather than an array per frame: about 80 bytes a frame however many hours
    are scored, where a small array each would cost several times that.
    """

    BLOCK = 4096

    def __init__(self) -> None:
        self._blocks: dict[int, np.ndarray] = {}  # block index -> (BLOCK, MAX_REGIONS, 5)
        self._counts: dict[int, np.ndarray] = {}  # block index -> (BLOCK,) regions per frame
        self._length = 0

    def __setitem__(self, frame: int, regions: np.ndarray) -> None:
        if frame < 0:
            raise IndexError(f"frame {frame}: regions are stored by frame number from 0")
        block, row = divmod(frame, self.BLOCK)
        if block not in self._blocks:
            self._blocks[block] = np.zeros((self.BLOCK, MAX_REGIONS, 5), np.float32)
            self._counts[block] = np.zeros(self.BLOCK, np.int8)
        k = min(len(regions), MAX_REGIONS)
        self._blocks[block][row, :k] = regions[:k]
        self._counts[block][row] = k
        self._length = max(self._length, frame + 1)

    @overload
    def __getitem__(self, frame: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, frame: slice) -> list[np.ndarray]: ...
    def __getitem__(self, frame: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(frame, slice):
            return [self[i] for i in range(*frame.indices(self._length))]
        if not -self._length <= frame < self._length:
            raise IndexError(frame)
        block, row = divmod(frame % self._length, self.BLOCK)
        if block not in self._blocks:
            return np.zeros((0, 5), np.float32)
        return self._blocks[block][row, : self._counts[block][row]].copy()

    def __len__(self) -> int:
        return self._length


@dataclass
class FrameScores:
    """Per-frame stage-1 output of one video."""

    psnr: np.ndarray  # (n,) dB of the autoencoder's error, lower = worse reconstruction
    boxes: np.ndarray  # (n, 4) int, [x0, y0, x1, y1] in original-frame pixels
    windows_scored: int
    # The optical-flow side: the flow signal (n,) when the scorer knew how to reduce it, else every frame's row
    # tops (n, rows, TOP_PER_ROW) for a calibration to fit its speed profile on.
    speed: np.ndarray | None = None
    speed_rows: np.ndarray | None = None
    # Each frame's regions, (k, 5) [x0, y0, x1, y1, score] in original pixels, when the scorer had a region finder.
    regions: FrameRegions | None = None


@dataclass
class ScoredFrame:
    """One frame's stage-1 output, final: no later window scores it again."""

    index: int
    psnr: float
    box: list[int]  # [x0, y0, x1, y1] in original-frame pixels
    speed: float | None = None  # the flow signal, when the scorer reduces the flow as it goes
    rows: np.ndarray | None = None  # the flow's row tops, when the scorer keeps them for a calibration
    regions: np.ndarray | None = None  # (k, 5) [x0, y0, x1, y1, score], with a region finder


def scored_range(stride: int) -> tuple[int, int]:
    """Offsets [lo, hi) inside a window of the frames it scores: its middle ``stride`` frames."""
    if not 1 <= stride <= WINDOW:
        raise CallmError(f"--stride must be between 1 and {WINDOW}, got {stride}")
    lo = CENTRE - stride // 2
    return lo, lo + stride


SpeedReducer = Callable[[np.ndarray], float]  # a frame's row tops -> its flow signal
# A frame's regions from its error map (H, W), its flow cells (or None) and the original frame size.
RegionFinding = Callable[[torch.Tensor, np.ndarray | None, tuple[int, int]], np.ndarray]
FlowMode = SpeedReducer | Literal["rows", "off"]


class FrameScorer:
    """Scores videos with a trained autoencoder and optical flow; stateless between videos."""

    def __init__(
        self,
        model: ConvAutoencoder3d,
        measure: ErrorMeasure,
        device: torch.device,
        dtype: torch.dtype,
        stride: int = 1,
        batch_size: int = 8,
        motion_step: int = 1,
        sustain: int = 1,
        flow: FlowMode = "off",
        regions: RegionFinding | None = None,
    ) -> None:
        """``flow``: "off" computes no optical flow (weights without it); "rows" keeps every frame's row tops
        (for a calibration to fit its profile on); a function reduces each frame's row tops to its flow signal
        as it goes, so a long video costs one number a frame; its speeds are those kept up over ``sustain`` frames
        (see motion.SustainedSpeed). ``regions`` finds each frame's regions (the box of a frame is then its worst
        region's) from the error and the instantaneous flow."""
        # Channels-last 3D lets oneDNN pick its fast Conv3d kernels: about 2x faster on CPU, same results.
        self.model = model.to(device, memory_format=torch.channels_last_3d).eval()
        self.measure = measure
        self.device = device
        self.dtype = dtype
        self.stride = stride
        self.batch_size = batch_size
        self.motion_step = motion_step
        self.sustain = sustain
        self.flow = flow
        self.regions = regions
        scored_range(stride)  # validate early

    @property
    def size(self) -> tuple[int, int]:
        return self.model.config.height, self.model.config.width

    @torch.inference_mode()
    def reconstruction_errors(self, clips: np.ndarray) -> torch.Tensor:
        """Squared error maps (B, T, H, W) of uint8 clips (B, T, H, W)."""
        x = to_model_range(clips).to(self.device)[:, None].contiguous(memory_format=torch.channels_last_3d)
        with autocast(self.device, self.dtype):
            y = self.model(x)
        return error_maps(x[:, 0], y.float()[:, 0], self.measure.kind).cpu()

    def score(self, video: Video, on_window: Callable[[int], None] | None = None) -> FrameScores:
        """Stream ``video`` window by window; ``on_window(frames_done)`` reports progress."""
        return self.score_frames(
            video.frames(self.size), (video.info.height, video.info.width), str(video.path), on_window
        )

    def score_frames(
        self,
        frames: Iterable[np.ndarray],
        frame_size: tuple[int, int],
        source: str,
        on_window: Callable[[int], None] | None = None,
    ) -> FrameScores:
        """Score a stream of uint8 grey frames already at model size; boxes are scaled to ``frame_size``."""
        psnr, boxes, speeds, rows = [], [], [], []
        regions = FrameRegions() if self.regions is not None else None
        windows = 0

        def counted(done: int) -> None:  # every window scored reports once
            nonlocal windows
            windows += 1
            if on_window is not None:
                on_window(done)

        for frame in self.scored_frames(frames, frame_size, source, counted):
            psnr.append(frame.psnr)
            boxes.append(frame.box)
            speeds.append(frame.speed)
            rows.append(frame.rows)
            if regions is not None and frame.regions is not None:
                regions[frame.index] = frame.regions
        return FrameScores(
            psnr=np.array(psnr, dtype=np.float64),
            boxes=np.array(boxes, dtype=np.int64),
            windows_scored=windows,
            speed=np.array(speeds, dtype=np.float64) if callable(self.flow) else None,
            speed_rows=np.stack(rows) if self.flow == "rows" else None,
            regions=regions,
        )

    def scored_frames(
        self,
        frames: Iterable[np.ndarray],
        frame_size: tuple[int, int],
        source: str,
        on_window: Callable[[int], None] | None = None,
    ) -> Iterator[ScoredFrame]:
        """Each frame of a stream of uint8 grey frames at model size, in order, as soon as no later window can
        score it again: what a live camera is scored with. A frame comes out at most ``WINDOW + stride`` frames
        after it went in (with ``batch_size`` 1)."""
        found = _Found()
        sustained = SustainedSpeed(self.sustain, self.motion_step, cell_side(self.size[0]))
        # A stream's first frames have no past to keep a speed up over, so a one-frame flicker would count in full
        # there (every video's start read as fast). They take the speed of the first frame that has that past:
        # the speeds kept up over the stream's first frames. At most a window's worth, so that the speed is known
        # before the first window releases them.
        backfill = min(self.sustain, WINDOW) - 1

        def record_speed(indices: list[int], tops: np.ndarray) -> None:
            for index in indices:
                if callable(self.flow):
                    found.speeds[index] = self.flow(tops)
                else:
                    found.rows[index] = tops

        def record_motion(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[np.ndarray]:
            waiting: list[int] = []  # a stream shorter than the backfill is refused as shorter than a window
            for index, (frame, cells) in enumerate(pairs):
                if self.regions is not None:
                    found.cells[index] = cells  # read when the frame is scored, dropped after
                if self.flow != "off":
                    tops = row_tops(sustained(cells))
                    waiting.append(index)
                    if index >= backfill:
                        record_speed(waiting, tops)
                        waiting.clear()
                yield frame

        # Decoding and flow run ahead on their own thread, beside the model.
        stream: Iterable[np.ndarray] = frames
        if self.flow != "off" or self.regions is not None:
            stream = record_motion(with_speed_cells(frames, self.motion_step))
        lo = scored_range(self.stride)[0]
        released = n = 0
        ahead = prefetch(stream, depth=WINDOW + self.batch_size * self.stride)
        windows_iter = iter_windows(ahead, step=self.stride, source=source)
        for batch in batched_windows(windows_iter, self.batch_size):
            errors = self.reconstruction_errors(np.stack([w.frames for w in batch]))
            for window, error in zip(batch, errors, strict=True):
                n = window.start + WINDOW
                self._assign(window, error, frame_size, found)
                if on_window is not None:
                    on_window(n)
            # Later windows start after this batch's last and score from their own offset ``lo`` on.
            final = batch[-1].start + lo
            for index in range(released, final + 1):
                yield self._release(index, found, frame_size)
            released = final + 1
            # A snapshot of the keys (list() runs without letting another thread in): the flow thread adds
            # frames meanwhile, and iterating the dict itself then fails now and again.
            for index in [i for i in list(found.cells) if i < batch[-1].start]:
                del found.cells[index]
        for index in range(released, n):
            yield self._release(index, found, frame_size)

    def _release(self, index: int, found: _Found, frame_size: tuple[int, int]) -> ScoredFrame:
        """Frame ``index``'s output, its scoring state dropped. Frames before the first scored frame and after
        the last take the nearest scored one's value: a window's edge frames reconstruct worse than its middle,
        and would read as anomalies at every video's ends."""
        if index in found.psnr:
            found.distance.pop(index, None)
            found.nearest = (found.psnr.pop(index), found.boxes.pop(index, None), found.regions.pop(index, None))
            value = found.nearest
        elif found.nearest is None:  # before the first scored frame
            first = min(found.psnr)
            value = (found.psnr[first], found.boxes.get(first), found.regions.get(first))
        else:
            value = found.nearest
        psnr, box, regions = value
        if regions is not None:  # the frame's box is its worst region's
            box = regions[0, :4].tolist() if len(regions) else [0, 0, frame_size[1], frame_size[0]]
        assert box is not None
        return ScoredFrame(
            index=index,
            psnr=psnr,
            box=[int(v) for v in box],
            speed=found.speeds.pop(index, None),
            rows=found.rows.pop(index, None),
            regions=regions,
        )

    def _assign(self, window: Window, error: torch.Tensor, frame_size: tuple[int, int], found: _Found) -> None:
        lo, hi = scored_range(self.stride)
        offsets = [o for o in range(lo, hi) if abs(o - CENTRE) < found.distance.get(window.start + o, WINDOW + 1)]
        if not offsets:
            return
        mse = frame_mse(error[offsets], self.measure).numpy()
        blur = max(3, self.measure.patch or min(error.shape[-2:]) // 16)
        for o, value in zip(offsets, psnr_from_mse(mse), strict=True):
            frame = window.start + o
            found.psnr[frame] = float(value)
            found.distance[frame] = abs(o - CENTRE)
            if self.regions is None:
                found.boxes[frame] = error_box(error[o].numpy(), frame_size, blur)
            else:
                found.regions[frame] = self.regions(error[o], found.cells.get(frame), frame_size)


@dataclass
class _Found:
    """What scoring a stream gathers of the frames not yet released."""

    psnr: dict[int, float] = field(default_factory=dict)
    boxes: dict[int, list[int]] = field(default_factory=dict)  # without a region finder
    distance: dict[int, int] = field(default_factory=dict)  # from the centre of the window that scored the frame
    regions: dict[int, np.ndarray] = field(default_factory=dict)
    cells: dict[int, np.ndarray] = field(default_factory=dict)  # flow cells of frames not yet scored for good
    speeds: dict[int, float] = field(default_factory=dict)
    rows: dict[int, np.ndarray] = field(default_factory=dict)
    # The last released frame's (psnr, box, regions): the value of the frames after the last scored one.
    nearest: tuple[float, list[int] | None, np.ndarray | None] | None = None
