"""``callm calibrate``: fit a trained model's gate to a new site's normal footage, without training.

The shipped (or any) autoencoder is kept as it is; only the calibration changes: the signal scales, the
camera's perspective profile and the threshold now describe this camera's normal footage, scored at the chosen
stride. The scoring (error kind, region size, flow weight, smoothing) stays the weights' own unless asked
otherwise: weights from before the flow signal gain it with ``--flow-weight``. The model never saw this footage,
so its scores are out of sample as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from rich.progress import Progress

from callm.ae.calibrate import Calibration, NormalFootage, ScoringSettings, calibrate
from callm.ae.motion import FlowTiming
from callm.ae.score import FrameScorer
from callm.ae.weights import AEWeights
from callm.console import FrameBar
from callm.video import Video


def recalibrate(
    weights: AEWeights,
    videos: Sequence[Video],
    settings: ScoringSettings,
    device: torch.device,
    dtype: torch.dtype,
    progress: Progress | None = None,
) -> AEWeights:
    """The same model with a calibration measured on ``videos`` (normal footage the model did not train on),
    scored as ``settings`` say (``scoring_of`` gives the weights' own)."""
    measure = settings.measure(weights.config.height)
    uses_flow = settings.flow_weight > 0
    timing = FlowTiming.for_fps(videos[0].info.fps, settings.sustain_seconds)
    settings = settings.at_fps(videos[0].info.fps)
    scorer = FrameScorer(
        weights.model, measure, device, dtype, stride=settings.stride, motion_step=timing.step,
        sustain=timing.sustain, flow="rows" if uses_flow else "off",
    )  # fmt: skip
    footage = []
    for video in videos:
        bar = FrameBar(progress, video.path.name) if progress is not None else None
        total = video.info.num_frames or None
        scores = scorer.score(video, None if bar is None else lambda done, bar=bar, total=total: bar(done, total))
        if bar is not None:
            bar.close()
        footage.append(NormalFootage(str(video.path), scores.psnr, scores.speed_rows))
    calibration = calibrate(footage, measure, settings, timing, method="scored by a model that never saw it")
    return replace(weights, calibration=calibration.to_dict())


def scoring_of(weights: AEWeights) -> ScoringSettings:
    """How the weights score now, as settings a new calibration starts from."""
    current = Calibration.from_dict(weights.calibration)
    return ScoringSettings(
        error=current.error, patch_fraction=current.patch / weights.config.height, top_k=current.top_k,
        flow_weight=current.flow_weight, speed_top_k=current.speed_top_k, smooth_sigma=current.smooth_sigma,
        stride=current.stride, quantile=current.quantile, sustain_seconds=current.sustain_seconds,
        hold_quantile=current.hold_quantile,
    )  # fmt: skip
