"""VADor evaluation: frame-level ROC AUC over all test videos (AUC_O) and over the abnormal ones (AUC_A).

As in VAD-LLaMA (and UCF-Crime's protocol), each clip's abnormal probability is spread over its frames and the
raw scores of all videos are pooled: a probability means the same in every video, so no per-video rescaling.
AUC_A leaves out the videos without anomalies, where any false alarm cannot be traded against a detection.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from callm.errors import CallmError
from callm.metrics import roc_auc
from callm.vador.features import FeatureIndex, VideoFeatures
from callm.vador.labels import Labelled, frame_labels, match_list, read_video_list
from callm.vador.model import VADor, abnormal_probability
from callm.vador.online import frame_scores
from callm.vador.weights import VADorWeights


@torch.no_grad()
def score_clips(model: VADor, features: np.ndarray) -> np.ndarray:
    """Abnormal probability of every clip of one video, all clips at once (equal to the online scores)."""
    logits = model.eval()(torch.from_numpy(np.asarray(features, dtype=np.float32))[None]).logits[0]
    return abnormal_probability(logits).numpy()


def calibrate_threshold(model: VADor, normal: Sequence[VideoFeatures], quantile: float) -> dict[str, Any]:
    """The clip-score threshold that ``quantile`` of the clips of normal videos the VADor never trained on stay
    under: a fixed false-alarm rate instead of the 0.5 line, which MIL training on few videos can leave far from
    where normal clips score."""
    if not normal:
        raise CallmError("calibration needs held-out normal videos")
    scores = np.concatenate([score_clips(model, video.load()) for video in normal])
    return {
        "threshold": float(np.quantile(scores, quantile)),
        "quantile": quantile,
        "videos": [video.video for video in normal],
        "clips": int(scores.size),
    }


def auc_overall_and_abnormal(labels: Sequence[np.ndarray], scores: Sequence[np.ndarray]) -> dict[str, float | None]:
    """AUC_O over every frame, AUC_A over the frames of videos with at least one abnormal frame."""
    truth, pooled = np.concatenate(labels), np.concatenate(scores)
    if not 0 < truth.sum() < truth.size:
        raise CallmError("frame AUC needs both normal and abnormal frames, but the test frames are all one kind")
    abnormal = [i for i, label in enumerate(labels) if label.any()]
    truth_a = np.concatenate([labels[i] for i in abnormal])
    auc_a = None
    if truth_a.sum() < truth_a.size:  # AUC_A is undefined when the abnormal videos are abnormal throughout
        auc_a = roc_auc(truth_a, np.concatenate([scores[i] for i in abnormal]))
    return {"auc_o": roc_auc(truth, pooled), "auc_a": auc_a}


def evaluate(model: VADor, labelled: Labelled) -> dict[str, Any]:
    """AUC_O, AUC_A and per-video results of ``model`` on videos with frame labels."""
    scores = []
    per_video: dict[str, Any] = {}
    for video, labels in labelled:
        frames = frame_scores(score_clips(model, video.load()), video.clips, video.num_frames)
        if len(labels) != len(frames):
            raise CallmError(f"{video.video}: {len(labels)} frame labels but the features cover {len(frames)} frames")
        scores.append(frames)
        both = 0 < labels.sum() < labels.size
        per_video[video.key] = {
            "frames": int(video.num_frames),
            "abnormal_frames": int(labels.sum()),
            "auc": roc_auc(labels, frames) if both else None,
            "mean_score": float(frames.mean()),
        }
    result = auc_overall_and_abnormal([labels for _, labels in labelled], scores)
    return {
        **result,
        "num_videos": len(labelled),
        "abnormal_videos": sum(1 for _, labels in labelled if labels.any()),
        "num_frames": int(sum(len(labels) for _, labels in labelled)),
        "per_video": per_video,
    }


def labelled_videos(features_dir: Path, labels_path: Path, only: Path | None = None) -> tuple[FeatureIndex, Labelled]:
    """The features index and its videos with frame labels, restricted to the videos ``only`` lists."""
    index = FeatureIndex.read(features_dir)
    labelled = frame_labels(labels_path, index.videos)
    if only is not None:
        entries = read_video_list(only)
        wanted = {v.video for v in match_list(entries, index.videos, only) if v is not None}
        labelled = [(video, labels) for video, labels in labelled if video.video in wanted]
        if not labelled:
            raise CallmError(f"{only}: names none of the labelled videos in {features_dir}")
    return index, labelled


def evaluate_vador(
    weights: VADorWeights, features_dir: Path, labels_path: Path, only: Path | None = None
) -> dict[str, Any]:
    """``callm eval-vador``."""
    index, labelled = labelled_videos(features_dir, labels_path, only)
    weights.check_features(index.encoder, str(features_dir))
    return {**evaluate(weights.model, labelled), "features": str(features_dir), "labels": str(labels_path)}
