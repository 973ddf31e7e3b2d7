"""`callm eval`: frame-level AUC of stage 1 on a labelled test set in the community layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from callm.cascade import Stage1
from callm.console import FrameBar
from callm.errors import CallmError
from callm.localisation import localisation, mask_files
from callm.metrics import default_labels, parse_ucsd_m, read_frame_labels, roc_auc
from callm.results import Detection
from callm.video import Video, testing_videos


@dataclass
class GateCoverage:
    anomalous_in_gated: float  # share of abnormal frames that stage 2 would see
    normal_in_gated: float  # share of normal frames sent to stage 2 anyway


def gate_coverage(detections: list[Detection], labels: list[np.ndarray]) -> GateCoverage:
    gated_flags = []
    for detection in detections:
        flags = np.zeros(detection.num_frames, dtype=bool)
        for start in detection.gated_starts:
            flags[start : start + 16] = True
        gated_flags.append(flags)
    gated = np.concatenate(gated_flags)
    truth = np.concatenate(labels).astype(bool)
    return GateCoverage(
        anomalous_in_gated=float(gated[truth].mean()) if truth.any() else float("nan"),
        normal_in_gated=float(gated[~truth].mean()) if (~truth).any() else float("nan"),
    )


def check_labels(labels_path: Path, videos: list[Path], folder_fps: float) -> None:
    """Read the labels against the videos' frame counts before scoring them: a wrong file fails in a second, not
    after the whole test set. Frame folders count exactly; a video file's container count may be off by a
    frame or two, so with any files only the format and the number of videos are checked here."""
    infos = [Video(v, folder_fps=folder_fps).info for v in videos]
    if all(i.is_frame_folder for i in infos):
        read_frame_labels(labels_path, [i.num_frames for i in infos])
        return
    if not labels_path.is_file():
        raise CallmError(f"{labels_path}: labels file not found")
    if labels_path.suffix.lower() == ".m" and len(parse_ucsd_m(labels_path)) != len(videos):
        raise CallmError(f"{labels_path}: ground truth for another number of videos than the {len(videos)} found")


def evaluate(
    root: Path, labels_path: Path | None, stage1: Stage1, progress: Progress | None = None, masks: Path | None = None
) -> dict[str, Any]:
    """Frame-level AUC and gate coverage; with ``masks`` (a folder of one mask folder per test video, named as
    the video) also the pixel-level localisation measures."""
    videos = testing_videos(root)
    labels_path = labels_path or default_labels(root)
    check_labels(labels_path, videos, stage1.options.folder_fps)
    mask_folders = [masks / v.name for v in videos] if masks is not None else []
    for folder, video in zip(mask_folders, videos, strict=False):
        mask_files(folder, Video(video, folder_fps=stage1.options.folder_fps).info.num_frames)
    detections = []
    task = progress.add_task("videos", total=len(videos)) if progress else None
    for path in videos:
        bar = FrameBar(progress, path.name) if progress else None
        detections.append(stage1.detect(path, bar))
        if bar is not None:
            bar.close()
        if progress is not None and task is not None:
            progress.update(task, advance=1)
    labels = read_frame_labels(labels_path, [d.num_frames for d in detections])
    truth = np.concatenate(labels)
    if not 0 < truth.sum() < truth.size:
        raise CallmError(f"{labels_path}: frame AUC needs both normal and abnormal frames, but all are one kind")
    per_video: dict[str, Any] = {}
    for path, detection, label in zip(videos, detections, labels, strict=True):
        both = 0 < label.sum() < label.size
        per_video[path.name] = {
            "frames": detection.num_frames,
            "abnormal_frames": int(label.sum()),
            "auc": roc_auc(label, detection.scores) if both else None,
            "events": len(detection.events),
        }
    coverage = gate_coverage(detections, labels)
    seconds = sum(d.seconds for d in detections)
    extra = {"localisation": localisation(detections, mask_folders)} if masks is not None else {}
    return {
        "frame_auc": roc_auc(truth, np.concatenate([d.scores_minmax for d in detections])),
        "frame_auc_raw": roc_auc(truth, np.concatenate([d.scores for d in detections])),
        "num_frames": int(truth.size),
        "num_videos": len(videos),
        "abnormal_frames": int(truth.sum()),
        "anomalous_frames_in_gated_windows": coverage.anomalous_in_gated,
        "normal_frames_in_gated_windows": coverage.normal_in_gated,
        "threshold": stage1.threshold,
        "frames_per_second": float(truth.size / seconds) if seconds > 0 else None,
        "per_video": per_video,
        "settings": detections[0].settings,
        **extra,
    }
