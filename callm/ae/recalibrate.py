"""``callm calibrate``: fit a trained model's gate to a new site's normal footage, without training.

The shipped (or any) autoencoder is kept as it is; only the calibration changes: the PSNR centre and spread
and the threshold now describe this camera's normal footage, scored at the chosen stride. The scoring
measure (error kind, region size, top-k) stays the model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from rich.progress import Progress

from callm.ae.calibrate import Calibration, calibrate
from callm.ae.score import FrameScorer
from callm.ae.weights import AEWeights
from callm.console import FrameBar
from callm.video import Video


def recalibrate(
    weights: AEWeights,
    videos: Sequence[Video],
    stride: int,
    smooth_sigma: float,
    quantile: float,
    device: torch.device,
    dtype: torch.dtype,
    progress: Progress | None = None,
) -> AEWeights:
    """The same model with a calibration measured on ``videos`` (normal footage the model did not train on)."""
    measure = Calibration.from_dict(weights.calibration).measure
    scorer = FrameScorer(weights.model, measure, device, dtype, stride=stride)
    psnr = []
    for video in videos:
        if progress is None:
            psnr.append(scorer.score(video).psnr)
            continue
        bar, total = FrameBar(progress, video.path.name), video.info.num_frames or None
        psnr.append(scorer.score(video, lambda done, bar=bar, total=total: bar(done, total)).psnr)
        bar.close()
    calibration = calibrate(psnr, [str(v.path) for v in videos], measure, stride, smooth_sigma, quantile)
    return replace(weights, calibration=calibration.to_dict())
