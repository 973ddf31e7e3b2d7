"""The gate's calibration on held-out normal footage, and the temporal smoothing of PSNR curves."""

from __future__ import annotations

import numpy as np
import pytest

from callm.ae.calibrate import Calibration, calibrate, smooth_curve
from callm.ae.score import ErrorMeasure
from callm.errors import CallmError


def fitted(quantile: float = 0.9, sigma: float = 0.0) -> tuple[Calibration, list[np.ndarray]]:
    rng = np.random.default_rng(3)
    holdout = [30 + rng.normal(0, 1.5, 200), 31 + rng.normal(0, 1.0, 150)]
    return calibrate(holdout, ["a.avi", "b.avi"], ErrorMeasure("motion", 8, 4), 8, sigma, quantile), holdout


def test_centre_and_spread_are_median_and_mad() -> None:
    cal, holdout = fitted()
    values = np.concatenate(holdout)
    assert cal.psnr_center == pytest.approx(np.median(values))
    assert cal.psnr_scale == pytest.approx(1.4826 * np.median(np.abs(values - np.median(values))))
    assert cal.holdout_frames == 350
    assert cal.holdout_videos == ("a.avi", "b.avi")
    assert (cal.error, cal.patch, cal.top_k, cal.quantile) == ("motion", 8, 4, 0.9)
    assert cal.measure == ErrorMeasure("motion", 8, 4)
    assert cal.stride == 8


def test_calibrated_score_falls_as_psnr_rises() -> None:
    cal, _ = fitted()
    psnr = np.linspace(20, 40, 50)
    scores = cal.calibrated(psnr)
    assert np.all(np.diff(scores) < 0)
    assert cal.calibrated(np.array([cal.psnr_center]))[0] == pytest.approx(0.0)
    # One robust spread below normal PSNR scores 1.
    assert cal.calibrated(np.array([cal.psnr_center - cal.psnr_scale]))[0] == pytest.approx(1.0)


@pytest.mark.parametrize("quantile", [0.5, 0.9, 0.99])
def test_threshold_is_the_quantile_of_held_out_scores(quantile: float) -> None:
    cal, holdout = fitted(quantile)
    scores = cal.calibrated(np.concatenate(holdout))
    assert cal.threshold == pytest.approx(np.quantile(scores, quantile))
    assert np.mean(scores <= cal.threshold) == pytest.approx(quantile, abs=0.01)


def test_threshold_uses_the_smoothed_curves() -> None:
    cal, holdout = fitted(0.99, sigma=3.0)
    smoothed = np.concatenate([smooth_curve(h, 3.0) for h in holdout])
    assert cal.threshold == pytest.approx(np.quantile(cal.calibrated(smoothed), 0.99))
    raw_cal, _ = fitted(0.99, sigma=0.0)
    assert cal.psnr_scale < raw_cal.psnr_scale  # smoothing removes frame-to-frame noise


def test_constant_holdout_has_a_floor_on_the_spread() -> None:
    cal = calibrate([np.full(40, 25.0)], ["flat"], ErrorMeasure("frame", 0), 1, 0.0, 0.99)
    assert cal.psnr_scale == pytest.approx(1e-3)
    assert np.isfinite(cal.calibrated(np.array([20.0]))).all()


def test_calibration_needs_held_out_footage() -> None:
    with pytest.raises(CallmError, match="held-out normal footage"):
        calibrate([], [], ErrorMeasure(), 8, 5.0, 0.99)


def test_calibration_dict_round_trip_and_missing_fields() -> None:
    cal, _ = fitted()
    data = cal.to_dict()
    assert data["holdout_videos"] == ["a.avi", "b.avi"]
    assert Calibration.from_dict(data) == cal
    del data["threshold"]
    with pytest.raises(CallmError, match=r"lacks \['threshold'\]"):
        Calibration.from_dict(data)


def test_smooth_curve_keeps_length_and_constants() -> None:
    assert np.allclose(smooth_curve(np.full(30, 7.5), 5.0), 7.5)  # edges repeat outward: no sag at the ends
    values = np.random.default_rng(0).normal(size=37)
    for sigma in (0.5, 2.0, 10.0):
        assert smooth_curve(values, sigma).shape == values.shape
    assert smooth_curve(values, 10.0).std() < values.std()


def test_smooth_curve_spreads_a_spike_and_keeps_its_mass() -> None:
    spike = np.zeros(41)
    spike[20] = 1.0
    out = smooth_curve(spike, 2.0)
    assert out.argmax() == 20 and out[20] < 0.5
    assert out.sum() == pytest.approx(1.0)
    assert out[15] == pytest.approx(out[25])  # symmetric


def test_smooth_curve_is_identity_without_sigma_or_data() -> None:
    values = np.array([3.0, 1.0, 2.0])
    assert np.array_equal(smooth_curve(values, 0.0), values)
    assert np.array_equal(smooth_curve(np.array([4.0]), 5.0), [4.0])
