"""Where stage 1 says the anomaly is, measured against pixel masks (``callm eval --masks``).

The measures take any detector's per-frame scores and regions; nothing here knows how they were found.

* The pixel-level criterion (Li, Mahadevan and Vasconcelos, TPAMI 2014): an abnormal frame counts as detected
  only when the frame is flagged and its regions cover at least 40% of its anomalous pixels; a normal frame that is
  flagged (it has regions) is a false positive. At the automatic threshold the flagged frames are the events'
  frames; sweeping the threshold over the frame scores gives the pixel-level ROC curve and its AUC.
* IoU: of the union of a frame's region boxes with the union of the bounding boxes of the mask's blobs (boxes
  against boxes: a box cannot follow a cyclist's outline, so pixels against pixels would punish every box).
* Region size: the area of the union of a frame's boxes over the mask's anomalous area.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from callm.errors import CallmError
from callm.metrics import trapezoid_auc
from callm.results import Detection
from callm.video import frame_files

COVERAGE = 0.4  # the criterion's share of anomalous pixels the regions must cover


@dataclass(frozen=True)
class FrameLocalisation:
    abnormal: bool
    coverage: float  # share of the anomalous pixels inside the regions (0 for a normal frame)
    iou: float  # regions' boxes against the mask's blob boxes (abnormal frames)
    area_ratio: float  # regions' area over the anomalous area (abnormal frames)
    has_regions: bool


def _fill(shape: tuple[int, int], boxes: np.ndarray) -> np.ndarray:
    canvas = np.zeros(shape, bool)
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.float64)[:, :4]:
        canvas[max(0, int(np.floor(y0))) : int(np.ceil(y1)), max(0, int(np.floor(x0))) : int(np.ceil(x1))] = True
    return canvas


def blob_boxes(mask: np.ndarray) -> np.ndarray:
    """(k, 4) bounding boxes of the mask's connected blobs."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return np.array([[x, y, x + w, y + h] for x, y, w, h, _ in stats[1:count]], np.float64).reshape(-1, 4)


def localise_frame(regions: np.ndarray, mask: np.ndarray) -> FrameLocalisation:
    """One frame: its regions (k, >=4) in the mask's pixels, against its boolean mask."""
    covered = _fill(mask.shape, regions) if len(regions) else np.zeros(mask.shape, bool)
    anomalous = int(mask.sum())
    if not anomalous:
        return FrameLocalisation(False, 0.0, 0.0, 0.0, bool(len(regions)))
    truth = _fill(mask.shape, blob_boxes(mask))
    union = int((covered | truth).sum())
    return FrameLocalisation(
        abnormal=True,
        coverage=float((covered & mask).sum() / anomalous),
        iou=float((covered & truth).sum() / union) if union else 0.0,
        area_ratio=float(covered.sum() / anomalous),
        has_regions=bool(len(regions)),
    )


def mask_files(folder: Path, num_frames: int) -> list[Path]:
    """A video's masks, one image per frame in natural order; refuses a folder that does not match the video."""
    if not folder.is_dir():
        raise CallmError(f"{folder}: no masks for this video (expected a folder of one image per frame)")
    files = frame_files(folder)
    if len(files) != num_frames:
        raise CallmError(f"{folder}: {len(files)} masks for a video of {num_frames} frames")
    return files


def localise_video(detection: Detection, folder: Path) -> list[FrameLocalisation]:
    if detection.regions is None:
        raise CallmError(f"{detection.video}: these weights give no regions to measure")
    regions = shown_regions(detection)
    out = []
    for index, file in enumerate(mask_files(folder, detection.num_frames)):
        mask = cv2.imread(str(file), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise CallmError(f"{file}: not a readable mask image")
        if mask.shape != detection.frame_size:
            raise CallmError(f"{file}: {mask.shape[1]}x{mask.shape[0]} mask for {detection.frame_size[1]}x"
                             f"{detection.frame_size[0]} frames")  # fmt: skip
        out.append(localise_frame(regions[index], mask > 0))
    return out


def shown_regions(detection: Detection) -> list[np.ndarray]:
    """Each frame's regions as the user sees them: an event's frames its tracks' entries, other frames (which
    the threshold sweep may flag) their own regions."""
    assert detection.regions is not None
    regions = list(detection.regions)
    for event in detection.events:
        by_frame: dict[int, list[list[float]]] = {}
        for entry in event.track:
            by_frame.setdefault(int(entry[0]), []).append(entry[1:])
        for frame, entries in by_frame.items():
            regions[frame] = np.array(entries, np.float32)
    return regions


def event_flags(detection: Detection) -> np.ndarray:
    """Frames inside an event: the frames that carry regions at the automatic threshold."""
    flags = np.zeros(detection.num_frames, bool)
    for event in detection.events:
        flags[event.start_frame : event.end_frame + 1] = True
    return flags


def localisation(detections: list[Detection], masks: list[Path]) -> dict[str, Any]:
    """The pixel-level measures over videos and their mask folders (one per detection, same order)."""
    frames = [f for d, m in zip(detections, masks, strict=True) for f in localise_video(d, m)]
    scores = np.concatenate([d.scores for d in detections])
    flagged = np.concatenate([event_flags(d) for d in detections])
    abnormal = np.array([f.abnormal for f in frames])
    covers = np.array([f.abnormal and f.coverage >= COVERAGE for f in frames])
    if not abnormal.any() or abnormal.all():
        raise CallmError("the masks mark every frame alike; the pixel-level measures need normal and abnormal frames")
    # Pixel-level ROC: from the highest threshold down, a frame turns positive when its score passes it.
    # Tied frames turn positive together (a point only where the score changes), so frame order cannot matter.
    order = np.argsort(-scores, kind="mergesort")
    steps = np.r_[np.flatnonzero(np.diff(scores[order])), len(order) - 1]
    tpr = np.concatenate([[0.0], (np.cumsum(covers[order]) / abnormal.sum())[steps]])
    fpr = np.concatenate([[0.0], (np.cumsum(~abnormal[order]) / (~abnormal).sum())[steps]])
    found = abnormal & flagged
    ious = [f.iou for f, hit in zip(frames, found, strict=True) if hit]
    ratios = [f.area_ratio for f, hit in zip(frames, found, strict=True) if hit]
    return {
        "criterion": f"an abnormal frame is detected when flagged and its regions cover >= {COVERAGE:.0%} of its mask",
        "abnormal_frames": int(abnormal.sum()),
        "normal_frames": int((~abnormal).sum()),
        "detected_at_threshold": float((covers & flagged).sum() / abnormal.sum()),
        "flagged_abnormal_at_threshold": float(found.sum() / abnormal.sum()),
        "false_positive_rate_at_threshold": float((flagged & ~abnormal).sum() / (~abnormal).sum()),
        "pixel_auc": trapezoid_auc(fpr, tpr),
        "mean_iou_flagged_abnormal": float(np.mean(ious)) if ious else None,
        "median_area_ratio_flagged_abnormal": float(np.median(ratios)) if ratios else None,
        "frames_covered_40_any_threshold": float(covers.sum() / abnormal.sum()),
    }
