"""The gate's calibration: what stage 1's signals look like on normal footage the model never trained on.

A frame has two signals: the autoencoder's reconstruction PSNR (of the motion, over its worst regions) and the
optical-flow speed of its fastest cells, divided by the camera's perspective profile. Each is standardised by
its median and spread on normal footage, the two are mixed (``flow_weight``), smoothed over time and
standardised again: the *calibrated score*, in spreads above normal, that needs no look at the rest of its video.

The threshold is set on 16-frame windows, the unit the gate passes to stage 2: each normal window's highest
score is one observation. Neighbouring frames are nearly copies of each other, so counting frames would claim
hundreds of times the evidence there is; and a far tail (one window in a hundred) is beyond what a few hundred
windows show directly, so an exponential tail is fitted to the highest fifth of them. ``evidence`` in
``ae.json`` says how many windows (and how many effectively independent ones) the threshold rests on, and the
interval a bootstrap over videos gives it.

An event is found where the score passes the threshold, and then lasts while the score stays *raised*: above
``hold_score``, the level a share ``hold_quantile`` of normal frames stay below. An anomaly often passes the
threshold only at its height (a slow cyclist while it crosses the busiest rows); stage 2 should see all of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from callm.ae.events import HOLD_QUANTILE
from callm.ae.motion import SUSTAIN_SECONDS, FlowTiming, SpeedProfile, speed_signal
from callm.ae.score import ErrorMeasure
from callm.errors import CallmError
from callm.video import WINDOW, window_starts

VERSION = 4
TAIL_SHARE = 0.2  # the exponential tail is fitted to the highest fifth of the normal windows
# Effectively independent normal windows below which a threshold is refused, and below which it is only provisional.
MIN_WINDOWS, ENOUGH_WINDOWS = 4, 100
BOOTSTRAP_ROUNDS = 200
# Quantiles of normal frames' scores kept in the evidence: what "raised" means on this footage, and the levels
# an event hold can be compared at without scoring the footage again (bench/stage1.py).
FRAME_QUANTILES = (0.5, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99)


def smoothing_kernel(sigma: float) -> np.ndarray:
    """The Gaussian over time that scores are smoothed with: ``4 sigma`` frames each side (one frame at 0)."""
    if sigma <= 0:
        return np.ones(1)
    radius = int(4 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def smooth_curve(values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along time: anomalies last many frames, single-frame flickers do not."""
    values = np.asarray(values, dtype=np.float64)
    if sigma <= 0 or len(values) < 2:
        return values
    kernel = smoothing_kernel(sigma)
    # Edge frames repeat outward, so the ends are not pulled toward zero.
    padded = np.pad(values, len(kernel) // 2, mode="edge")
    return np.convolve(padded, kernel, mode="valid")


def robust_center_scale(values: np.ndarray) -> tuple[float, float]:
    """Median and 1.4826 MAD (the standard deviation for Gaussian data, blind to the outliers), floored."""
    center = float(np.median(values))
    return center, max(float(1.4826 * np.median(np.abs(values - center))), 1e-3)


_VERSION_1_FIELDS = {
    "error", "patch", "top_k", "smooth_sigma", "stride", "psnr_center", "psnr_scale", "threshold", "quantile",
    "holdout_frames", "holdout_videos",
}  # fmt: skip


# What each number of a stored calibration must be: a damaged or hand-edited ae.json is refused on loading, before
# any video is read, instead of scoring NaN or never firing.
_NUMBERS = {
    "patch": "count", "top_k": "positive count", "smooth_sigma": "non-negative", "stride": "positive count",
    "psnr_center": "finite", "psnr_scale": "positive", "threshold": "finite", "quantile": "share",
    "holdout_frames": "count", "flow_weight": "share", "speed_top_k": "positive count",
    "motion_step": "positive count", "speed_center": "finite", "speed_scale": "positive", "score_center": "finite",
    "score_scale": "positive", "version": "positive count", "sustain_seconds": "non-negative",
    "sustain_frames": "positive count", "region_share": "share", "region_tighten": "share",
    "hold_quantile": "share", "hold_score": "finite",
}  # fmt: skip


def _checked(name: str, value: Any, rule: str) -> Any:
    """``value`` if it is a number that obeys ``rule``, else a one-line refusal naming the field."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = {
            "finite": True,
            "positive": value > 0,
            "non-negative": value >= 0,
            "count": value >= 0 and float(value).is_integer(),
            "positive count": value >= 1 and float(value).is_integer(),
            "share": 0 <= value <= 1,
        }[rule]
    if not ok:
        raise CallmError(f"weights calibration: {name} must be a {rule} number, got {value!r}; recalibrate or retrain")
    return int(value) if rule.endswith("count") else value


@dataclass(frozen=True)
class Calibration:
    error: str  # ErrorMeasure.kind
    patch: int  # ErrorMeasure.patch
    top_k: int  # ErrorMeasure.top_k
    smooth_sigma: float  # temporal smoothing of the mixed signal, in frames
    stride: int  # the scoring stride it was measured at: other strides shift the PSNR a little
    psnr_center: float  # median PSNR of normal frames (autoencoder signal)
    psnr_scale: float  # robust spread (1.4826 MAD) of the same
    threshold: float  # gate threshold on the calibrated score
    quantile: float  # share of normal 16-frame windows whose highest score stays below the threshold
    holdout_frames: int
    holdout_videos: tuple[str, ...]
    # Version 2: the optical-flow signal and the window-based threshold. Version-1 files load with the defaults,
    # which reproduce their scores exactly (no flow, no second standardisation).
    flow_weight: float = 0.0  # share of the flow signal in the mix; 0 = the autoencoder alone
    speed_profile: tuple[float, ...] = ()  # per cell row, see motion.SpeedProfile
    speed_top_k: int = 4  # fastest cells averaged per frame
    motion_step: int = 1  # frames between the two images of a flow (about 0.1 s)
    # Version 3: speeds count as far as they are kept up (motion.SustainedSpeed); older files are instantaneous.
    sustain_seconds: float = 0.0
    sustain_frames: int = 1  # sustain_seconds at the calibration footage's fps
    speed_center: float = 0.0
    speed_scale: float = 1.0
    score_center: float = 0.0  # the smoothed mix standardised once more, so the threshold reads in spreads
    score_scale: float = 1.0
    # The two region knobs (see ae.regions), chosen on Ped2 test videos 01-06 by IoU with the pixel masks.
    region_share: float = 0.8  # how far toward its worst cell a frame's region reaches
    region_tighten: float = 0.1  # a region's box shrunk to its pixels of at least this share of its worst error
    # Version 4: events last while the score stays above hold_score, the hold_quantile of normal frames' scores;
    # a quantile of 0 (older files) ends them at the threshold.
    hold_quantile: float = 0.0
    hold_score: float = 0.0
    evidence: dict[str, Any] = field(default_factory=dict)
    version: int = 1

    @property
    def measure(self) -> ErrorMeasure:
        return ErrorMeasure(self.error, self.patch, self.top_k)

    @property
    def uses_flow(self) -> bool:
        return self.flow_weight > 0

    def event_hold(self, threshold: float) -> float:
        """The score an event at ``threshold`` lasts above: the calibrated hold, as far below a threshold set by
        hand (``--threshold``) as it is below the calibrated one; the threshold itself where there is no hold."""
        if self.hold_quantile <= 0 or self.hold_score >= self.threshold:
            return threshold
        return self.hold_score + (threshold - self.threshold)

    @property
    def profile(self) -> SpeedProfile:
        return SpeedProfile(self.speed_profile)

    def speed_of(self, tops: np.ndarray) -> float:
        """One frame's flow signal (dB) from its row tops."""
        return float(speed_signal(tops[None], self.profile, self.speed_top_k)[0])

    def mixed(self, psnr: np.ndarray, speed: np.ndarray | None) -> np.ndarray:
        """The per-frame mix of the standardised signals, before smoothing."""
        ae = (self.psnr_center - np.asarray(psnr, dtype=np.float64)) / self.psnr_scale
        if not self.uses_flow:
            return ae
        if speed is None:
            raise CallmError("these weights score optical flow too, but no flow signal was computed")
        flow = (np.asarray(speed, dtype=np.float64) - self.speed_center) / self.speed_scale
        return (1.0 - self.flow_weight) * ae + self.flow_weight * flow

    def calibrated(self, psnr: np.ndarray, speed: np.ndarray | None = None) -> np.ndarray:
        """Calibrated anomaly score of a video's frames: spreads above normal; higher = worse."""
        smoothed = smooth_curve(self.mixed(psnr, speed), self.smooth_sigma)
        return (smoothed - self.score_center) / self.score_scale

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["holdout_videos"] = list(self.holdout_videos)
        data["speed_profile"] = list(self.speed_profile)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        known = {f.name for f in fields(cls)}
        missing = _VERSION_1_FIELDS - set(data)
        if missing:
            raise CallmError(f"weights calibration lacks {sorted(missing)}; retrain with callm train-ae")
        values = {k: v for k, v in data.items() if k in known}
        for name, rule in _NUMBERS.items():
            if name in values:
                values[name] = _checked(name, values[name], rule)
        if not isinstance(values["holdout_videos"], list | tuple) or not isinstance(values["error"], str):
            raise CallmError("weights calibration is damaged: holdout_videos must be a list and error a string")
        values["holdout_videos"] = tuple(str(v) for v in values["holdout_videos"])
        profile = values.get("speed_profile", ())
        if not isinstance(profile, list | tuple):
            raise CallmError("weights calibration: speed_profile must be a list of numbers")
        values["speed_profile"] = tuple(_checked("speed_profile", v, "positive") for v in profile)
        calibration = cls(**values)
        if calibration.uses_flow and not calibration.speed_profile:
            raise CallmError("weights calibration mixes in optical flow but has no speed profile")
        return calibration


@dataclass(frozen=True)
class NormalFootage:
    """Stage-1 signals of normal videos scored by a model that never trained on them."""

    name: str
    psnr: np.ndarray  # (n,)
    speed_rows: np.ndarray | None  # (n, rows, k) row tops, or None where flow is not mixed in


# The default temporal smoothing: 0.2 s, but never under 2 frames (Ped2's 10 frames/s gives 2 either way). Scores
# come from 16-frame windows, so below 10 frames/s 2 frames still smooth a window's worth; above it, a sigma in
# frames would smooth ever less time (0.07 s at 30 frames/s), and single-frame peaks of normal footage would raise
# the threshold.
SMOOTH_SECONDS, MIN_SMOOTH_FRAMES = 0.2, 2.0


def smoothing_frames(fps: float) -> float:
    """The default smoothing sigma, in frames of footage at ``fps``."""
    return round(max(MIN_SMOOTH_FRAMES, SMOOTH_SECONDS * fps), 2)


@dataclass(frozen=True)
class ScoringSettings:
    """How frames are scored and the gate is set; stored in the calibration so detect scores the same way."""

    error: str = "motion"
    patch_fraction: float = 0.125  # side of the scored error region, as a share of the model's frame height
    top_k: int = 4
    flow_weight: float = 0.5
    speed_top_k: int = 4
    smooth_sigma: float | None = None  # frames; None = smoothing_frames at the footage's rate (see at_fps)
    sustain_seconds: float = SUSTAIN_SECONDS  # how long a speed must be kept up to count fully
    stride: int = 8
    quantile: float = 0.99  # of normal windows below the threshold
    hold_quantile: float = HOLD_QUANTILE  # of normal frames an event's score must stay above to last; 0 = none

    def at_fps(self, fps: float) -> ScoringSettings:
        """These settings for footage at ``fps``: the default smoothing made frames of it."""
        return self if self.smooth_sigma is not None else replace(self, smooth_sigma=smoothing_frames(fps))

    def measure(self, height: int) -> ErrorMeasure:
        patch = max(1, round(self.patch_fraction * height)) if self.patch_fraction > 0 else 0
        return ErrorMeasure(self.error, patch, self.top_k)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def window_maxima(scores: np.ndarray) -> np.ndarray:
    """The highest score of each window of the tiling stage 2 is given (see ``events.window_starts``)."""
    return np.array([scores[s : s + WINDOW].max() for s in window_starts(len(scores))], dtype=np.float64)


def tail_threshold(maxima: np.ndarray, quantile: float) -> tuple[float, dict[str, Any]]:
    """The score a share ``quantile`` of normal windows stays below.

    Where the share asked for lies inside the bulk, the empirical quantile. In the tail, the highest
    ``TAIL_SHARE`` of windows above their lower edge ``u`` are taken as exponential (the limit of most light
    tails), with mean excess ``beta``: ``P(max > u + x) = p_u exp(-x / beta)``, so the threshold is
    ``u + beta ln(p_u / (1 - quantile))``. An exponential over-states a Gaussian-like tail: the error is on
    the side of fewer false alarms.
    """
    alpha = 1.0 - quantile
    edge = float(np.quantile(maxima, 1.0 - TAIL_SHARE))
    above = maxima[maxima > edge]
    share = above.size / maxima.size
    if above.size < 2 or alpha >= share:
        return float(np.quantile(maxima, quantile)), {"model": "empirical"}
    beta = float(np.mean(above - edge))
    threshold = edge + beta * math.log(share / alpha)
    return threshold, {"model": "exponential", "edge": round(edge, 4), "mean_excess": round(beta, 4),
                       "tail_windows": int(above.size)}  # fmt: skip


def effective_windows(per_video: Sequence[np.ndarray]) -> float:
    """How many independent windows the maxima are worth: adjacent windows of a video are correlated, and
    with lag-one correlation rho a series of n counts about n (1 - rho) / (1 + rho) (an AR(1) model)."""
    pairs = [(m[:-1], m[1:]) for m in per_video if len(m) > 1]
    n = sum(len(m) for m in per_video)
    if not pairs:
        return float(n)
    a = np.concatenate([p[0] for p in pairs])
    b = np.concatenate([p[1] for p in pairs])
    rho = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else 0.0
    rho = min(max(rho, 0.0), 0.95)
    return max(float(len(per_video)), n * (1 - rho) / (1 + rho))


def calibrate(
    footage: Sequence[NormalFootage],
    measure: ErrorMeasure,
    settings: ScoringSettings,
    timing: FlowTiming,
    method: str,
) -> Calibration:
    """Fit the signal scales, the perspective profile and the window threshold to out-of-sample normal footage.

    ``method`` says how the footage was kept out of the model's training (stored with the evidence).
    """
    if not footage:
        raise CallmError("calibration needs normal footage the model did not train on")
    sigma = settings.smooth_sigma
    if sigma is None:
        raise ValueError("calibrate needs the smoothing in frames: pass settings.at_fps(fps)")
    flow_weight = settings.flow_weight if all(f.speed_rows is not None for f in footage) else 0.0
    psnr = np.concatenate([f.psnr for f in footage])
    psnr_center, psnr_scale = robust_center_scale(psnr)
    profile, speed_center, speed_scale = SpeedProfile(()), 0.0, 1.0
    speeds: list[np.ndarray | None] = [None] * len(footage)
    if flow_weight > 0:
        rows = [f.speed_rows for f in footage if f.speed_rows is not None]
        profile = SpeedProfile.fit(rows)
        speeds = [speed_signal(r, profile, settings.speed_top_k) for r in rows]
        speed_center, speed_scale = robust_center_scale(np.concatenate(speeds))  # type: ignore[arg-type]
    partial = Calibration(
        error=measure.kind, patch=measure.patch, top_k=measure.top_k, smooth_sigma=sigma,
        stride=settings.stride, psnr_center=psnr_center, psnr_scale=psnr_scale, threshold=math.inf,
        quantile=settings.quantile, holdout_frames=int(psnr.size), holdout_videos=tuple(f.name for f in footage),
        flow_weight=flow_weight, speed_profile=profile.per_row, speed_top_k=settings.speed_top_k,
        motion_step=timing.step, sustain_seconds=settings.sustain_seconds, sustain_frames=timing.sustain,
        speed_center=speed_center, speed_scale=speed_scale, version=VERSION,
    )  # fmt: skip
    smoothed = [smooth_curve(partial.mixed(f.psnr, s), sigma) for f, s in zip(footage, speeds, strict=True)]
    score_center, score_scale = robust_center_scale(np.concatenate(smoothed))
    standardised = [(s - score_center) / score_scale for s in smoothed]
    frame_scores = np.concatenate(standardised)
    hold_score = float(np.quantile(frame_scores, settings.hold_quantile))
    per_video = [window_maxima(s) for s in standardised]
    per_video = [m for m in per_video if m.size]
    if not per_video:
        raise CallmError(f"calibration needs videos of at least {WINDOW} frames")
    maxima = np.concatenate(per_video)
    n_eff = effective_windows(per_video)
    if n_eff < MIN_WINDOWS:
        raise CallmError(
            f"too little normal footage to set a threshold: {maxima.size} windows of {WINDOW} frames; give at "
            f"least a few minutes of ordinary footage ({ENOUGH_WINDOWS} windows for a dependable threshold)"
        )
    threshold, tail = tail_threshold(maxima, settings.quantile)
    evidence = {
        "method": method,
        "unit": f"{WINDOW}-frame window",
        "frames": int(psnr.size),
        "videos": len(footage),
        "windows": int(maxima.size),
        "effective_windows": round(n_eff, 1),
        "enough": bool(n_eff >= ENOUGH_WINDOWS),
        "tail": tail,
        "threshold_interval_90": _bootstrap_interval(per_video, settings.quantile),
        "normal_windows_above": int((maxima > threshold).sum()),
        "frame_score_quantiles": {
            str(q): round(float(v), 4)
            for q, v in zip(FRAME_QUANTILES, np.quantile(frame_scores, FRAME_QUANTILES), strict=True)
        },
    }
    return replace(
        partial, threshold=threshold, score_center=score_center, score_scale=score_scale,
        hold_quantile=settings.hold_quantile, hold_score=hold_score, evidence=evidence,
    )  # fmt: skip


def _bootstrap_interval(per_video: Sequence[np.ndarray], quantile: float) -> list[float] | None:
    """5-95% interval of the threshold over resamplings of whole videos (or of windows, for one video)."""
    rng = np.random.default_rng(0)
    units = list(per_video) if len(per_video) >= 4 else [np.array([v]) for v in np.concatenate(per_video)]
    if len(units) < 4:
        return None
    draws = []
    for _ in range(BOOTSTRAP_ROUNDS):
        picked = np.concatenate([units[i] for i in rng.integers(len(units), size=len(units))])
        draws.append(tail_threshold(picked, quantile)[0])
    low, high = np.quantile(draws, [0.05, 0.95])
    return [round(float(low), 4), round(float(high), 4)]
