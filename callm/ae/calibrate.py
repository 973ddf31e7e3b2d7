"""The gate's calibration: what PSNR looks like on normal footage the model never trained on.

With it a frame gets a score without seeing the rest of its video (online use), and the gate threshold
is a fixed false-alarm rate on normal frames, chosen for the user.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from callm.ae.score import ErrorMeasure
from callm.errors import CallmError


def smooth_curve(values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along time: anomalies last many frames, single-frame flickers do not."""
    values = np.asarray(values, dtype=np.float64)
    if sigma <= 0 or len(values) < 2:
        return values
    radius = int(4 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    # Edge frames repeat outward, so the ends are not pulled toward zero.
    padded = np.pad(values, radius, mode="edge")
    return np.convolve(padded, kernel, mode="valid")


@dataclass(frozen=True)
class Calibration:
    error: str  # ErrorMeasure.kind
    patch: int  # ErrorMeasure.patch
    top_k: int  # ErrorMeasure.top_k
    smooth_sigma: float  # temporal smoothing of the PSNR curve, in frames
    stride: int  # the scoring stride it was measured at: other strides shift the PSNR a little
    psnr_center: float  # median PSNR of held-out normal frames
    psnr_scale: float  # robust spread (1.4826 MAD) of the same
    threshold: float  # gate threshold on the calibrated score
    quantile: float  # share of held-out normal frames at or below the threshold
    holdout_frames: int
    holdout_videos: tuple[str, ...]

    @property
    def measure(self) -> ErrorMeasure:
        return ErrorMeasure(self.error, self.patch, self.top_k)

    def calibrated(self, psnr: np.ndarray) -> np.ndarray:
        """Calibrated anomaly score: how many normal spreads a frame's PSNR lies below normal; higher = worse."""
        return (self.psnr_center - np.asarray(psnr, dtype=np.float64)) / self.psnr_scale

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["holdout_videos"] = list(self.holdout_videos)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        names = {f.name for f in fields(cls)}
        missing = names - set(data)
        if missing:
            raise CallmError(f"weights calibration lacks {sorted(missing)}; retrain with callm train-ae")
        values = {k: data[k] for k in names}
        values["holdout_videos"] = tuple(values["holdout_videos"])
        return cls(**values)


def calibrate(
    holdout_psnr: Sequence[np.ndarray],
    holdout_names: Sequence[str],
    measure: ErrorMeasure,
    stride: int,
    smooth_sigma: float,
    quantile: float,
) -> Calibration:
    """Fit centre and spread of held-out normal PSNR and put the threshold at its ``quantile``."""
    if not holdout_psnr:
        raise CallmError("calibration needs held-out normal footage; give more than one video or a longer one")
    curves = [smooth_curve(p, smooth_sigma) for p in holdout_psnr]
    values = np.concatenate(curves)
    center = float(np.median(values))
    scale = float(1.4826 * np.median(np.abs(values - center)))
    scale = max(scale, 1e-3)
    scores = (center - values) / scale
    return Calibration(
        error=measure.kind,
        patch=measure.patch,
        top_k=measure.top_k,
        smooth_sigma=smooth_sigma,
        stride=stride,
        psnr_center=center,
        psnr_scale=scale,
        threshold=float(np.quantile(scores, quantile)),
        quantile=quantile,
        holdout_frames=int(values.size),
        holdout_videos=tuple(holdout_names),
    )
