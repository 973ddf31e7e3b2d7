"""Candidate stage-1 signals on UCSD Ped2, under the held-out protocol: does one lift the AUC of footage its
settings were not chosen on?

    python bench/stage1_signals.py [--weights weights/ped2] [--data ../shared/datasets/ped2] [--json F]

The weights score every Ped2 frame once (detect's own pass, at their stride), keeping each frame's
autoencoder error per region and its optical-flow cells; each candidate score is then built from those, and
its knobs (the flow's share, the smoothing, a candidate's share and level) are chosen on test videos 01-06 and
reported on 07-12, then the other way round (bench/protocol.py). Candidates:

* ``baseline``: the weights' own mix of autoencoder and flow (what bench/stage1.py reports);
* ``flow sustained over K frames``: each cell's speed as far as it was kept up over the last K frames
  (motion.SustainedSpeed; K = 1 is the instantaneous flow), K chosen per half with the other knobs, and each K
  fixed (its other knobs chosen per half); the perspective profile and the flow's scale are refitted to the
  normal training videos at each K;
* ``flow per cell``: each flow cell standardised by its own mean and spread on the normal training videos,
  instead of one perspective divisor per cell row;
* ``autoencoder per region``: each region's error standardised by its own mean and spread on the normal
  training videos (the shipped model trained on them, so their errors are lower than a new video's);
* ``moving-object mass``: the flow cells faster than a multiple of normal footage's typical speed, joined into
  connected objects; a frame's value is its largest object's summed (profile-normalised) speed: something both
  bigger and faster than a walker, such as a cyclist on a bike at walking pace. Mixed into the baseline.

Every signal is standardised on the normal training videos by its median and the distance to its 99th
percentile, so a signal that is flat on most normal frames (no fast object at all) still gets a finite scale.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from protocol import ground_truth, held_out, knob_grid, knobs, ped2_arguments

from callm.ae.calibrate import Calibration, smooth_curve
from callm.ae.motion import SPEED_EPS, SpeedProfile, SustainedSpeed, cell_side, row_tops, speed_signal
from callm.ae.weights import load
from callm.cascade import DetectOptions, Stage1
from callm.console import make_progress
from callm.device import fastest_dtype, pick_device
from callm.metrics import read_frame_labels
from callm.video import Video, find_videos, testing_videos

SHARES = (0.0, 0.15, 0.3, 0.5)  # of a candidate mixed into the baseline
MASS_LEVELS = (1.0, 1.15, 1.3, 1.45)  # multiples of the typical normal speed a cell must exceed
SUSTAINS = (1, 3, 5, 8, 12)  # frames (Ped2: 10 fps)


@dataclass
class Captured:
    """One video's frames as the weights see them: the two signals detect mixes, and what they are made of."""

    psnr: np.ndarray  # (n,)
    speed: np.ndarray  # (n,) the flow signal
    errors: np.ndarray  # (n, ry, rx) log mean squared error of each region (the regions frame_mse ranks)
    cells: np.ndarray  # (n, cy, cx) mean flow speed per cell, instantaneous


def capture(stage1: Stage1, path: Path) -> Captured:
    """Score ``path`` as detect does, keeping each scored frame's region errors and flow cells.

    The scorer's region hook sees every scored frame's error map and cells; it returns the frame's capture
    number as its one region, so the scores' regions say which capture each output frame took (frames before
    the first scored one and after the last take the nearest, as their scores do).
    """
    patch = stage1.calibration.patch
    errors: list[np.ndarray] = []
    cells: list[np.ndarray] = []

    def keep(error: torch.Tensor, flow_cells: np.ndarray | None, frame_size: tuple[int, int]) -> np.ndarray:
        pooled = F.avg_pool2d(error[None, None].float(), patch, max(1, patch // 2))[0, 0]
        errors.append(torch.log(pooled + 1e-6).numpy().astype(np.float32))
        assert flow_cells is not None  # the flow runs whenever a region hook is set
        cells.append(flow_cells.astype(np.float32))
        return np.array([[0, 0, 0, 0, len(errors) - 1]], np.float32)

    stage1.scorer.regions = keep
    scores = stage1.scorer.score(Video(path))
    taken = [int(scores.regions[i][0, 4]) for i in range(len(scores.psnr))]
    assert scores.speed is not None
    return Captured(scores.psnr, scores.speed, np.stack(errors)[taken], np.stack(cells)[taken])


def sustained_tops(cells: np.ndarray, frames: int, step: int, cell: int) -> np.ndarray:
    """Row tops (n, rows, k) of a video's cells sustained over ``frames`` frames."""
    sustained = SustainedSpeed(frames, step, cell)
    return np.stack([row_tops(sustained(c)) for c in cells])


def standardiser(normal: list[np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """(x - median) / spread on normal frames, the spread read off the 99th percentile (1 sigma if Gaussian)."""
    values = np.concatenate(normal)
    center = float(np.median(values))
    spread = max((float(np.quantile(values, 0.99)) - center) / 2.326, 1e-3)
    return lambda x: (np.asarray(x, dtype=np.float64) - center) / spread


def top_mean(grid: np.ndarray, k: int) -> np.ndarray:
    """Mean of each frame's ``k`` largest values of a (n, ...) array."""
    flat = grid.reshape(len(grid), -1)
    return -np.sort(-flat, axis=1)[:, : min(k, flat.shape[1])].mean(axis=1)


def per_location(normal: list[np.ndarray], k: int) -> Callable[[np.ndarray], np.ndarray]:
    """A frame signal from (n, h, w) grids: each location standardised by its mean and spread on normal frames,
    then the mean of the frame's ``k`` worst locations."""
    stacked = np.concatenate(normal)
    mean, spread = stacked.mean(axis=0), stacked.std(axis=0) + 1e-3
    return lambda grid: top_mean((grid - mean) / spread, k)


def object_mass(cells: np.ndarray, profile: np.ndarray, level: float) -> np.ndarray:
    """Per frame: log of the largest connected object's summed speed among cells faster than ``level``.

    Speeds are divided by the perspective profile (per cell row), so a near walker and a far one count alike.
    """
    out = np.empty(len(cells))
    for i, frame in enumerate(cells):
        speed = frame / profile[: len(frame), None]
        count, labels = cv2.connectedComponents((speed > level).astype(np.uint8), connectivity=8)
        sums = np.bincount(labels.ravel(), weights=speed.ravel(), minlength=count)[1:]
        out[i] = np.log((sums.max() if count > 1 else 0.0) + SPEED_EPS)
    return out


def typical_speed(normal_cells: list[np.ndarray], profile: np.ndarray) -> float:
    """Median profile-normalised speed of each cell row's fastest cell, over rows where something moves."""
    fastest = np.concatenate([c.max(axis=2) for c in normal_cells]) / profile[None, : normal_cells[0].shape[1]]
    moving = fastest > 0.25 * np.quantile(fastest, 0.99)
    return float(np.median(fastest[moving]))


def main() -> None:
    parser = ped2_arguments(__doc__)
    args = parser.parse_args()
    device = pick_device("auto")
    weights = load(args.weights, device)
    stage1 = Stage1(weights, DetectOptions(), device, fastest_dtype(device))
    calibration = stage1.calibration
    if not calibration.uses_flow:
        raise SystemExit("these weights score no optical flow; the candidates here build on it")
    tests = testing_videos(args.data)
    normals = find_videos([args.data / "training" / "frames"])
    with make_progress() as progress:
        task = progress.add_task("scoring Ped2", total=len(tests) + len(normals))
        captured = {}
        for path in [*tests, *normals]:
            captured[path] = capture(stage1, path)
            progress.advance(task)
    test = [captured[p] for p in tests]
    normal = [captured[p] for p in normals]
    labels = read_frame_labels(ground_truth(args.data), [len(c.psnr) for c in test])

    # Each candidate: a grid of settings and the 12 test videos' scores at a setting.
    base_grid = knob_grid(calibration)
    flow_z = [(c.speed - calibration.speed_center) / calibration.speed_scale for c in test]
    ae_z = [(calibration.psnr_center - c.psnr) / calibration.psnr_scale for c in test]

    def mixed(ae: list[np.ndarray], flow: list[np.ndarray], setting: Calibration) -> list[np.ndarray]:
        w = setting.flow_weight
        return [smooth_curve((1 - w) * a + w * f, setting.smooth_sigma) for a, f in zip(ae, flow, strict=True)]

    side = cell_side(weights.config.height)
    sustained_z: dict[int, list[np.ndarray]] = {}
    for frames in SUSTAINS:
        tops = {p: sustained_tops(c.cells, frames, calibration.motion_step, side) for p, c in captured.items()}
        profile_k = SpeedProfile.fit([tops[p] for p in normals])
        signal = {p: speed_signal(t, profile_k, calibration.speed_top_k) for p, t in tops.items()}
        std = standardiser([signal[p] for p in normals])
        sustained_z[frames] = [std(signal[p]) for p in tests]
    sustain_grid = list(itertools.product(base_grid, SUSTAINS))

    normal_log = [np.log(c.cells + SPEED_EPS) for c in normal]
    flow_cells = per_location(normal_log, calibration.speed_top_k)
    flow_std = standardiser([flow_cells(g) for g in normal_log])
    flow_cell_z = [flow_std(flow_cells(np.log(c.cells + SPEED_EPS))) for c in test]
    ae_regions = per_location([c.errors for c in normal], calibration.top_k)
    ae_std = standardiser([ae_regions(c.errors) for c in normal])
    ae_region_z = [ae_std(ae_regions(c.errors)) for c in test]

    profile = np.asarray(calibration.speed_profile)
    typical = typical_speed([c.cells for c in normal], profile)
    mass_z = {}
    for level in MASS_LEVELS:
        std = standardiser([object_mass(c.cells, profile, level * typical) for c in normal])
        mass_z[level] = [std(object_mass(c.cells, profile, level * typical)) for c in test]
    mass_grid = list(itertools.product(base_grid, SHARES, MASS_LEVELS))

    def with_mass(setting: tuple[Calibration, float, float]) -> list[np.ndarray]:
        base, share, level = setting
        w = base.flow_weight
        return [
            smooth_curve((1 - share) * ((1 - w) * a + w * f) + share * m, base.smooth_sigma)
            for a, f, m in zip(ae_z, flow_z, mass_z[level], strict=True)
        ]

    candidates = {
        "baseline": held_out(base_grid, lambda s: mixed(ae_z, flow_z, s), labels, knobs),
        "flow sustained over K frames": held_out(
            sustain_grid,
            lambda s: mixed(ae_z, sustained_z[s[1]], s[0]),
            labels,
            lambda s: {**knobs(s[0]), "sustain_frames": s[1]},
        ),
        **{
            f"flow sustained over {frames} frames (fixed)": held_out(
                base_grid, lambda s, frames=frames: mixed(ae_z, sustained_z[frames], s), labels, knobs
            )
            for frames in SUSTAINS
        },
        "flow per cell": held_out(base_grid, lambda s: mixed(ae_z, flow_cell_z, s), labels, knobs),
        "autoencoder per region": held_out(base_grid, lambda s: mixed(ae_region_z, flow_z, s), labels, knobs),
        "moving-object mass": held_out(
            mass_grid,
            with_mass,
            labels,
            lambda s: {**knobs(s[0]), "mass_share": s[1], "mass_level": s[2]},
        ),
    }
    print(f"weights {args.weights}; typical normal speed {typical:.3f} px/frame at model size")
    for name, result in candidates.items():
        folds = "; ".join(
            f"{fold}: {v['frame_auc']:.4f} (raw {v['frame_auc_raw']:.4f}) at "
            + ", ".join(f"{k} {v[k]}" for k in v if not k.startswith("frame_auc"))
            for fold, v in result["folds"].items()
        )
        print(
            f"{name}: held-out mean {result['mean_of_folds']:.4f} (raw {result['mean_of_folds_raw']:.4f}), "
            f"all 12 at the other half's choice {result['all_12_each_half_at_the_other_halfs_choice']:.4f}\n  {folds}"
        )
    if args.json:
        args.json.write_text(json.dumps({"weights": str(args.weights), "candidates": candidates}, indent=2))


if __name__ == "__main__":
    main()
