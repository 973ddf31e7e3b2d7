"""Where a frame is abnormal: regions from the per-cell mix of stage 1's two signals, linked into tracks.

The frame's score mixes the autoencoder's error and the flow speed, each measured over the worst few regions;
the same mix, taken cell by cell (the flow's cells, 1/20 of the height), is a map of how abnormal each part of
the frame is. A frame's regions are the connected groups of cells that stand out of that map: at least
``region_share`` (stored in the calibration, 0.8) of the way from the frame's typical cell to its worst one.
A cell is coarse beside a walker, so each region's box then shrinks to the pixels of its cells whose
autoencoder error reaches ``region_tighten`` (0.1) of the region's worst. Both were chosen on Ped2 test videos
01-06 against their pixel masks (``bench/localisation.py``). Each region is a box in the video's own pixels
with the calibrated score of its worst cell.

An event's tracks link its frames' regions over time: a region continues the track whose last box it overlaps
most (or lies nearest to), else it starts a new one, so two objects at once keep two tracks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from callm.ae.calibrate import Calibration
from callm.ae.motion import SPEED_EPS
from callm.ae.score import MAX_REGIONS, psnr_from_mse

NO_REGIONS = np.zeros((0, 5), np.float32)


@dataclass(frozen=True)
class RegionFinder:
    """A frame's regions from its autoencoder error map and its flow cells, scored as the calibration scores."""

    calibration: Calibration

    def cell_scores(self, error: torch.Tensor, cells: np.ndarray | None) -> np.ndarray:
        """(rows, cols) calibrated score of each cell of one frame.

        ``error``: the frame's squared-error map at model size; ``cells``: its flow speed cells (None without flow).
        """
        cal = self.calibration
        rows, cols = cells.shape if cells is not None else (error.shape[0] // 8, error.shape[1] // 8)
        side = error.shape[0] // rows
        # The autoencoder's error over each cell and its neighbours: a cell alone is a few pixels of noise.
        mse = F.avg_pool2d(error[None, None, : rows * side, : cols * side].float(), side)
        mse = F.avg_pool2d(mse, 3, stride=1, padding=1, count_include_pad=False)[0, 0].numpy()
        mixed = (cal.psnr_center - psnr_from_mse(mse)) / cal.psnr_scale
        if cal.uses_flow and cells is not None:
            speed = cells.astype(np.float32) / np.asarray(cal.speed_profile, np.float32)[:rows, None]
            flow = (20.0 * np.log10(speed + SPEED_EPS) - cal.speed_center) / cal.speed_scale
            mixed = (1.0 - cal.flow_weight) * mixed + cal.flow_weight * flow
        return (mixed - cal.score_center) / cal.score_scale

    def __call__(self, error: torch.Tensor, cells: np.ndarray | None, frame_size: tuple[int, int]) -> np.ndarray:
        """(k, 5) float32 ``[x0, y0, x1, y1, score]`` in the video's own pixels, worst first; k >= 1."""
        scores = self.cell_scores(error, cells)
        tighten = self.calibration.region_tighten
        detail = error.float().numpy() if tighten > 0 else None
        return regions_of(scores, frame_size, self.calibration.region_share, detail, tighten)


def regions_of(
    scores: np.ndarray,
    frame_size: tuple[int, int],
    share: float,
    error: np.ndarray | None = None,
    tighten: float = 0.0,
) -> np.ndarray:
    """The regions of a (rows, cols) map of cell scores, as boxes in a frame of ``frame_size`` (height, width):
    the connected cells at least ``share`` of the way from the map's median to its peak. With the pixel ``error``
    map and ``tighten`` > 0, each box shrinks to the pixels of its cells whose (locally averaged) error reaches
    ``tighten`` of the region's worst: a cell is coarse beside the object that made it stand out."""
    rows, cols = scores.shape
    typical, peak = float(np.median(scores)), float(scores.max())
    mask = (scores >= typical + share * (peak - typical)).astype(np.uint8)
    count, labels = cv2.connectedComponents(mask, connectivity=8)
    sy, sx = frame_size[0] / rows, frame_size[1] / cols
    smooth = cv2.blur(error, (5, 5)) if error is not None and tighten > 0 else None
    found = []
    for label in range(1, count):
        ys, xs = np.nonzero(labels == label)
        box = [xs.min() * sx, ys.min() * sy, (xs.max() + 1) * sx, (ys.max() + 1) * sy]
        if smooth is not None:
            box = (
                _tightened(smooth, (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1), (rows, cols), frame_size, tighten)
                or box
            )
        found.append([*box, float(scores[ys, xs].max())])
    found.sort(key=lambda r: -r[4])
    return np.array(found[:MAX_REGIONS], np.float32) if found else NO_REGIONS


def _tightened(
    error: np.ndarray, cells: tuple[int, int, int, int], grid: tuple[int, int], frame_size: tuple[int, int], keep: float
) -> list[float] | None:
    """The box, in frame pixels, of the pixels of cells ``(y0, x0, y1, x1)`` whose error reaches ``keep`` of
    their highest; None when the cells hold no error."""
    side = error.shape[0] // grid[0]  # error pixels per cell, as cell_scores pools them
    y0, x0, y1, x1 = (c * side for c in cells)
    patch = error[y0:y1, x0:x1]
    if patch.size == 0 or not patch.max() > 0:
        return None
    ys, xs = np.nonzero(patch >= keep * patch.max())
    fy, fx = frame_size[0] / error.shape[0], frame_size[1] / error.shape[1]
    return [(x0 + xs.min()) * fx, (y0 + ys.min()) * fy, (x0 + xs.max() + 1) * fx, (y0 + ys.max() + 1) * fy]


# --- tracks --------------------------------------------------------------------------------------------------

TRACK_GAP = 3  # frames a track may miss and still be continued (at 10 frames/s or slower)
TRACK_GAP_SECONDS = 0.3  # the same at faster rates, in time: an occlusion lasts as long at 25 frames/s
MIN_TRACK = 3  # frames: a shorter track is flicker, dropped unless its frames would be left with no region


def track_gap(fps: float) -> int:
    """Frames a track may miss at ``fps``: TRACK_GAP, or TRACK_GAP_SECONDS' worth where that is more."""
    return max(TRACK_GAP, round(TRACK_GAP_SECONDS * fps))


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two [x0, y0, x1, y1] boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _near(a: np.ndarray, b: np.ndarray) -> bool:
    """Centres closer than the larger box's diagonal: the same object, moved between frames."""
    distance = np.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2)
    return bool(distance <= max(np.hypot(a[2] - a[0], a[3] - a[1]), np.hypot(b[2] - b[0], b[3] - b[1])))


def _entry(frame: int, region: np.ndarray) -> list[float]:
    """A track entry: ``[frame, x0, y0, x1, y1, score]``, the box in whole pixels."""
    return [frame, *(round(float(v)) for v in region[:4]), round(float(region[4]), 3)]


def link_tracks(
    regions: Sequence[np.ndarray] | Mapping[int, np.ndarray], start: int, end: int, gap: int = TRACK_GAP
) -> list[list[list[float]]]:
    """Tracks through frames ``start..end`` (inclusive) of each frame's ``regions``: lists of
    ``[frame, x0, y0, x1, y1, score]``; a track continues across at most ``gap`` frames without its object."""
    tracks: list[list[list[float]]] = []
    for frame in range(start, end + 1):
        taken: set[int] = set()
        for region in regions[frame]:
            best, best_iou = None, 0.0
            for index, track in enumerate(tracks):
                last = np.asarray(track[-1][1:5])
                if index in taken or frame - track[-1][0] > gap + 1:
                    continue
                iou = box_iou(last, region[:4])
                if iou > best_iou or (best is None and _near(last, region[:4])):
                    best, best_iou = index, iou
            entry = _entry(frame, region)
            if best is None:
                tracks.append([entry])
                taken.add(len(tracks) - 1)
            else:
                tracks[best].append(entry)
                taken.add(best)
    if not tracks:
        return []
    tracks.sort(key=lambda t: -sum(e[5] for e in t))  # the track that matters most first
    kept = [t for t in tracks if len(t) >= MIN_TRACK] or [tracks[0]]
    # A frame whose every region was flicker keeps its worst one, in the main track: no frame of an event is blank.
    covered = {e[0] for t in kept for e in t}
    for frame in range(start, end + 1):
        frame_regions = regions[frame]
        if frame not in covered and len(frame_regions):
            region = frame_regions[0]
            kept[0].append(_entry(frame, region))
    for track in kept:
        track.sort(key=lambda e: e[0])
    return kept


# --- following the object an event is about --------------------------------------------------------------------

# A region continues an object when it overlaps the object's last box this much (the usual bar for "the same
# object" between detections) and still stands out of normal footage: its score is above a typical normal frame's
# (the calibrated score's zero).
SAME_OBJECT_IOU = 0.5
FOLLOW_LEVEL = 0.0


@dataclass
class ObjectFollower:
    """One object followed frame by frame through the frames' regions, one way in time, from its box at ``last``."""

    box: np.ndarray
    last: int  # the last frame the object was found in
    gap: int  # frames it may be missing and still be followed (track_gap at the stream's rate)
    misses: int = 0  # frames since then

    @property
    def lost(self) -> bool:
        """Missing for more than ``gap`` frames: the object left, or no longer stands out."""
        return self.misses > self.gap

    def see(self, frame: int, regions: np.ndarray | None) -> bool:
        """Look for the object among a frame's regions; True when it is there."""
        best, best_iou = None, SAME_OBJECT_IOU
        for region in regions if regions is not None else NO_REGIONS:
            iou = box_iou(self.box, region[:4])
            if region[4] > FOLLOW_LEVEL and iou >= best_iou:
                best, best_iou = region, iou
        if best is None:
            self.misses += 1
            return False
        self.box, self.last, self.misses = best[:4], frame, 0
        return True


def followed_back(regions: Mapping[int, np.ndarray], frame: int, box: np.ndarray, gap: int) -> int:
    """The first frame of the object in ``box`` at ``frame``, followed back through the frames ``regions`` holds
    (consecutive frame numbers up to ``frame``), missing for at most ``gap`` frames at a time."""
    follower = ObjectFollower(np.asarray(box), frame, gap)
    earlier = frame - 1
    while earlier in regions and not follower.lost:
        follower.see(earlier, regions[earlier])
        earlier -= 1
    return follower.last
