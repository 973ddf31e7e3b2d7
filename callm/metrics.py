"""Frame-level ROC AUC and the ground-truth formats anomaly benchmarks ship."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from callm.errors import CallmError


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve, via the Mann-Whitney U statistic with average ranks for ties.

    Equal to the trapezoidal area under the exact ROC curve; needs both classes present.
    """
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} labels but {scores.size} scores")
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        raise ValueError("ROC AUC needs both normal and abnormal frames")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # Tied scores share the mean of the ranks they span.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [scores.size]])
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    u = ranks[labels].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def minmax(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] within one video, the standard protocol; a flat curve maps to zeros."""
    values = np.asarray(values, dtype=np.float64)
    span = values.max() - values.min()
    if span <= 0:
        return np.zeros_like(values)
    return (values - values.min()) / span


_RANGE = re.compile(r"(\d+)\s*:\s*(\d+)|(\d+)")


def parse_ucsd_m(path: Path) -> list[list[tuple[int, int]]]:
    """Ranges per video from a UCSD ``.m`` file (``TestVideoFile{end+1}.gt_frame = [61:180];``), 1-based."""
    videos: list[list[tuple[int, int]]] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = re.search(r"gt_frame\s*=\s*\[([^\]]*)\]", line)
        if not match:
            continue
        ranges = []
        for a, b, single in _RANGE.findall(match.group(1)):
            lo, hi = (int(a), int(b)) if a else (int(single), int(single))
            ranges.append((lo, hi))
        videos.append(ranges)
    if not videos:
        raise CallmError(f"{path}: no 'gt_frame = [...]' lines; not a UCSD ground-truth .m file")
    return videos


def read_frame_labels(path: str | Path, video_lengths: Sequence[int]) -> list[np.ndarray]:
    """Per-video 0/1 frame labels from a UCSD ``.m`` file or a ``.npy`` of all test frames concatenated.

    Refuses labels that do not match the frames the videos have.
    """
    path = Path(path)
    if not path.is_file():
        raise CallmError(f"{path}: labels file not found")
    total = int(sum(video_lengths))
    if path.suffix.lower() == ".npy":
        try:
            flat = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise CallmError(f"{path}: not a readable .npy array ({exc})") from None
        flat = np.asarray(flat).ravel()
        if flat.size != total:
            raise CallmError(f"{path}: {flat.size} labels but the {len(video_lengths)} test videos have {total} frames")
        bounds = np.cumsum([0, *video_lengths])
        return [(flat[bounds[i] : bounds[i + 1]] > 0).astype(np.uint8) for i in range(len(video_lengths))]
    if path.suffix.lower() == ".m":
        per_video = parse_ucsd_m(path)
        if len(per_video) != len(video_lengths):
            raise CallmError(
                f"{path}: ground truth for {len(per_video)} videos but {len(video_lengths)} test videos found"
            )
        labels = []
        for index, (ranges, length) in enumerate(zip(per_video, video_lengths, strict=True)):
            video = np.zeros(length, dtype=np.uint8)
            for lo, hi in ranges:
                if lo < 1 or hi > length or lo > hi:
                    raise CallmError(f"{path}: video {index + 1} marks frames {lo}:{hi} but has {length} frames")
                video[lo - 1 : hi] = 1
            labels.append(video)
        return labels
    raise CallmError(f"{path}: unknown labels format; use a UCSD .m ground-truth file or a .npy of 0/1 labels")


def default_labels(root: Path) -> Path:
    found = sorted(root.glob("*.m")) + sorted(root.glob("*.npy"))
    if len(found) != 1:
        raise CallmError(f"{root}: pass --labels (a UCSD .m ground-truth file or a .npy of frame labels)")
    return found[0]


def trapezoid_auc(x: np.ndarray, y: np.ndarray) -> float:
    """Area under a curve through the points (x, y), x ascending: the ROC AUC of a swept threshold."""
    return float(np.trapezoid(np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64)))
