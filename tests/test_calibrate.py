"""The gate's calibration on out-of-sample normal footage: signal scales, perspective, window threshold, evidence."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from callm.ae.calibrate import (
    Calibration,
    NormalFootage,
    ScoringSettings,
    calibrate,
    effective_windows,
    smooth_curve,
    tail_threshold,
    window_maxima,
)
from callm.ae.motion import SPEED_EPS, TOP_PER_ROW, FlowTiming, SpeedProfile, speed_signal
from callm.ae.score import ErrorMeasure
from callm.errors import CallmError

SETTINGS = ScoringSettings(smooth_sigma=0.0, stride=8, quantile=0.9, flow_weight=0.5, speed_top_k=2)


def footage(name: str, psnr: np.ndarray, speed: float | np.ndarray = 1.0, rows: int = 4) -> NormalFootage:
    """Normal footage with the given PSNR curve and row tops all at ``speed`` (flat perspective)."""
    speed = np.broadcast_to(np.asarray(speed, dtype=np.float64), psnr.shape)
    tops = np.broadcast_to(speed[:, None, None], (len(psnr), rows, TOP_PER_ROW)).astype(np.float16)
    return NormalFootage(name, psnr, tops)


def fitted(quantile: float = 0.9, sigma: float = 0.0, flow: bool = True) -> tuple[Calibration, list[NormalFootage]]:
    rng = np.random.default_rng(3)
    normal = [
        footage("a.avi", 30 + rng.normal(0, 1.5, 200), 1 + 0.1 * rng.random(200)),
        footage("b.avi", 31 + rng.normal(0, 1.0, 150), 1 + 0.1 * rng.random(150)),
    ]
    if not flow:
        normal = [NormalFootage(f.name, f.psnr, None) for f in normal]
    settings = replace(SETTINGS, quantile=quantile, smooth_sigma=sigma, sustain_seconds=0.5)
    return calibrate(normal, ErrorMeasure("motion", 8, 4), settings, FlowTiming(1, 5), "test"), normal


def test_signal_centres_and_spreads_are_medians_and_mads() -> None:
    cal, normal = fitted()
    values = np.concatenate([f.psnr for f in normal])
    assert cal.psnr_center == pytest.approx(np.median(values))
    assert cal.psnr_scale == pytest.approx(1.4826 * np.median(np.abs(values - np.median(values))))
    speeds = np.concatenate([speed_signal(f.speed_rows, cal.profile, 2) for f in normal])
    assert cal.speed_center == pytest.approx(np.median(speeds))
    assert cal.holdout_frames == 350
    assert cal.holdout_videos == ("a.avi", "b.avi")
    assert (cal.error, cal.patch, cal.top_k, cal.quantile, cal.flow_weight) == ("motion", 8, 4, 0.9, 0.5)
    assert cal.measure == ErrorMeasure("motion", 8, 4)
    assert cal.stride == 8 and cal.version == 4
    assert (cal.sustain_seconds, cal.sustain_frames) == (0.5, 5)
    # The mix of normal footage is standardised again: median 0, spread 1.
    mixed = np.concatenate([cal.calibrated(f.psnr, speed_signal(f.speed_rows, cal.profile, 2)) for f in normal])
    assert np.median(mixed) == pytest.approx(0.0, abs=1e-9)
    assert 1.4826 * np.median(np.abs(mixed)) == pytest.approx(1.0)


def test_score_rises_as_psnr_falls_and_as_speed_rises() -> None:
    cal, _ = fitted()
    psnr = np.linspace(20, 40, 50)
    assert np.all(np.diff(cal.calibrated(psnr, np.zeros(50))) < 0)
    assert np.all(np.diff(cal.calibrated(np.full(50, 30.0), np.linspace(-10, 10, 50))) > 0)
    # Half of each: one spread lower PSNR moves the mix as much as one spread more speed.
    base = cal.calibrated(np.array([cal.psnr_center]), np.array([cal.speed_center]))
    slower = cal.calibrated(np.array([cal.psnr_center - cal.psnr_scale]), np.array([cal.speed_center]))
    faster = cal.calibrated(np.array([cal.psnr_center]), np.array([cal.speed_center + cal.speed_scale]))
    assert slower - base == pytest.approx(faster - base)
    with pytest.raises(CallmError, match="no flow signal"):
        cal.calibrated(psnr)


def test_without_flow_the_autoencoder_alone_scores() -> None:
    cal, _ = fitted(flow=False)
    assert cal.flow_weight == 0 and not cal.uses_flow
    assert np.isfinite(cal.calibrated(np.linspace(20, 40, 5))).all()


def test_version_1_weights_score_as_they_always_did() -> None:
    """An ``ae.json`` from before the flow signal: no flow, PSNR smoothed, in spreads below its centre."""
    old = {
        "error": "motion", "patch": 32, "top_k": 8, "smooth_sigma": 7.0, "stride": 8, "psnr_center": 26.04,
        "psnr_scale": 0.31, "threshold": 1.87, "quantile": 0.99, "holdout_frames": 300,
        "holdout_videos": ["15", "16"],
    }  # fmt: skip
    cal = Calibration.from_dict(old)
    psnr = 26 + np.random.default_rng(0).normal(size=80)
    assert not cal.uses_flow and cal.version == 1
    assert np.allclose(cal.calibrated(psnr), (26.04 - smooth_curve(psnr, 7.0)) / 0.31)


def test_version_2_weights_keep_the_instantaneous_flow() -> None:
    """An ``ae.json`` from before sustained speeds loads with speeds counted frame by frame, as it was scored."""
    cal, _ = fitted()
    old = {k: v for k, v in cal.to_dict().items() if k not in ("sustain_seconds", "sustain_frames")}
    loaded = Calibration.from_dict({**old, "version": 2})
    assert (loaded.sustain_seconds, loaded.sustain_frames) == (0.0, 1)
    assert loaded.threshold == cal.threshold and loaded.speed_profile == cal.speed_profile


def test_hold_is_the_quantile_of_normal_frames_and_older_weights_have_none() -> None:
    """Events last above the score a share ``hold_quantile`` of normal frames stay below; an ``ae.json`` from
    before holds ends its events at the threshold, as it did."""
    cal, normal = fitted(0.99)
    scores = np.concatenate([cal.calibrated(f.psnr, speed_signal(f.speed_rows, cal.profile, 2)) for f in normal])
    assert cal.hold_quantile == SETTINGS.hold_quantile > 0
    assert cal.hold_score == pytest.approx(np.quantile(scores, cal.hold_quantile))
    assert cal.hold_score < cal.threshold
    quantiles = cal.evidence["frame_score_quantiles"]
    assert quantiles["0.5"] == pytest.approx(0.0, abs=1e-3)
    assert quantiles["0.95"] == pytest.approx(cal.hold_score, abs=1e-4)
    assert cal.event_hold(cal.threshold) == cal.hold_score
    # A threshold set by hand moves the hold with it: footage that needs one is not described by the calibration.
    assert cal.event_hold(cal.threshold + 10) == pytest.approx(cal.hold_score + 10)
    old = {k: v for k, v in cal.to_dict().items() if k not in ("hold_quantile", "hold_score")}
    assert Calibration.from_dict({**old, "version": 3}).event_hold(cal.threshold) == cal.threshold


def test_threshold_inside_the_bulk_is_the_empirical_quantile_of_window_maxima() -> None:
    cal, normal = fitted(0.5)
    maxima = np.concatenate(
        [window_maxima(cal.calibrated(f.psnr, speed_signal(f.speed_rows, cal.profile, 2))) for f in normal]
    )
    assert maxima.size == 13 + 10  # tiling windows of 200 and 150 frames (the last ends on the last frame)
    assert cal.threshold == pytest.approx(np.quantile(maxima, 0.5))
    assert cal.evidence["windows"] == 23 and cal.evidence["tail"] == {"model": "empirical"}


def test_far_tail_comes_from_an_exponential_fit_to_the_highest_windows() -> None:
    maxima = np.arange(100, dtype=np.float64)  # edge (80th percentile) 79.2; 20 above it, mean excess 10.3
    threshold, tail = tail_threshold(maxima, 0.99)
    assert tail["model"] == "exponential" and tail["tail_windows"] == 20
    assert threshold == pytest.approx(79.2 + 10.3 * np.log(0.2 / 0.01))


def test_threshold_keeps_its_promise_on_fresh_normal_footage() -> None:
    """Calibrated on 400 windows of Gaussian noise, a 1% threshold gates at most a few percent of 20000 new
    normal windows, and not far below 1% either (the exponential tail errs on the safe side)."""
    rng = np.random.default_rng(1)
    normal = [footage(f"v{i}", 30 + rng.normal(size=160)) for i in range(40)]
    settings = replace(SETTINGS, quantile=0.99, flow_weight=0.0)
    cal = calibrate(
        [NormalFootage(f.name, f.psnr, None) for f in normal], ErrorMeasure(), settings, FlowTiming(), "test"
    )
    fresh = window_maxima(cal.calibrated(30 + rng.normal(size=20000 * 16)))
    rate = float(np.mean(fresh > cal.threshold))
    assert 0.001 < rate < 0.02, rate
    assert cal.evidence["enough"] and cal.evidence["effective_windows"] > 300
    low, high = cal.evidence["threshold_interval_90"]
    assert low < cal.threshold < high


def test_correlated_windows_count_for_less() -> None:
    rng = np.random.default_rng(2)
    independent = [rng.normal(size=50) for _ in range(4)]
    assert effective_windows(independent) == pytest.approx(200, rel=0.25)
    drift = []
    for _ in range(4):  # AR(1) with rho 0.9: about 200 * 0.1 / 1.9 = 11 independent windows
        x = np.zeros(50)
        for i in range(1, 50):
            x[i] = 0.9 * x[i - 1] + rng.normal()
        drift.append(x)
    assert effective_windows(drift) < 40


def test_too_little_footage_is_refused_and_little_is_flagged() -> None:
    with pytest.raises(CallmError, match="too little normal footage to set a threshold"):
        calibrate([footage("short", np.full(40, 30.0))], ErrorMeasure(), SETTINGS, FlowTiming(), "test")
    cal, _ = fitted()
    assert cal.evidence["enough"] is False  # 23 windows: a threshold, but a provisional one


def test_constant_footage_has_a_floor_on_the_spread() -> None:
    flat = [footage(f"flat{i}", np.full(64, 25.0)) for i in range(3)]
    cal = calibrate(flat, ErrorMeasure("frame", 0), SETTINGS, FlowTiming(), "test")
    assert cal.psnr_scale == pytest.approx(1e-3)
    assert np.isfinite(cal.calibrated(np.array([20.0]), np.array([0.0]))).all()


def test_calibration_needs_normal_footage() -> None:
    with pytest.raises(CallmError, match="normal footage the model did not train on"):
        calibrate([], ErrorMeasure(), SETTINGS, FlowTiming(), "test")


def test_calibration_dict_round_trip_and_missing_fields() -> None:
    cal, _ = fitted()
    data = cal.to_dict()
    assert data["holdout_videos"] == ["a.avi", "b.avi"]
    assert Calibration.from_dict(json.loads(json.dumps(data))) == cal
    del data["threshold"]
    with pytest.raises(CallmError, match=r"lacks \['threshold'\]"):
        Calibration.from_dict(data)


def test_speed_profile_follows_perspective() -> None:
    """Near rows (bottom) move twice as fast as far ones: the profile grows down the frame, and dividing by it
    makes a walker read the same in every row."""
    rng = np.random.default_rng(4)
    rows = 10
    typical = np.linspace(1.0, 2.0, rows)
    tops = np.zeros((400, rows, TOP_PER_ROW), np.float32)
    for t in range(400):
        row = rng.integers(rows)  # one walker per frame, in a random row
        tops[t, row, 0] = typical[row] * (1 + 0.05 * rng.normal())
    profile = SpeedProfile.fit([tops.astype(np.float16)])
    assert np.allclose(np.asarray(profile.per_row) / profile.per_row[0], typical / typical[0], rtol=0.05)
    walkers = profile.normalise(tops)[:, :, 0].max(axis=1)
    assert walkers.std() / walkers.mean() < 0.1
    assert SpeedProfile.fit([np.zeros((50, rows, TOP_PER_ROW), np.float16)]).per_row == (1.0,) * rows


def test_speed_signal_takes_the_fastest_cells() -> None:
    tops = np.zeros((2, 3, TOP_PER_ROW), np.float16)
    tops[0, 1, :2] = [4.0, 2.0]
    tops[1, 2, :2] = [8.0, 4.0]
    profile = SpeedProfile((1.0, 1.0, 2.0))  # row 2 is twice as fast by perspective
    signal = speed_signal(tops, profile, 2)
    assert signal == pytest.approx(20 * np.log10(np.array([3.0, 3.0]) + SPEED_EPS))


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
