"""The selection protocol the Ped2 benches share: choose a setting on one half of the test videos, report it on
the other half, both ways round.

Ped2 has no validation split. A setting chosen on videos 01-06 and reported on 07-12 (and the other way round)
says what a user would see on footage their settings were not chosen on; only those two numbers, their mean and
the 12 videos pooled with each half at the other half's choice are held out.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import numpy as np

from callm.ae.calibrate import Calibration
from callm.metrics import default_labels, minmax, roc_auc

REPO = Path(__file__).resolve().parent.parent
HALVES = {"01-06": range(6), "07-12": range(6, 12)}
# The scoring knobs not learned from normal footage: the flow's share in the mix and the temporal smoothing.
FLOW_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
SIGMAS = (0.0, 1.0, 2.0, 4.0, 7.0)
Setting = TypeVar("Setting")


def ped2_arguments(doc: str) -> argparse.ArgumentParser:
    """A bench's parser with the options every Ped2 bench takes: ``--weights``, ``--data``, ``--json``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=REPO / "weights" / "ped2")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "ped2")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    return parser


def ground_truth(data: Path) -> Path:
    """The frame labels of a dataset root: Ped2's ``UCSDped2.m``, or the one labels file another root holds (the
    re-framed Ped2 of ``bench/reframe.py`` writes ``reframed.m``)."""
    ped2 = data / "UCSDped2.m"
    return ped2 if ped2.is_file() else default_labels(data)


def knob_grid(calibration: Calibration) -> list[Calibration]:
    """``calibration`` at every (flow weight, sigma); weights without flow vary only the smoothing."""
    if not calibration.uses_flow:
        return [replace(calibration, smooth_sigma=s) for s in SIGMAS]
    return [replace(calibration, flow_weight=w, smooth_sigma=s) for w, s in itertools.product(FLOW_WEIGHTS, SIGMAS)]


def knobs(calibration: Calibration) -> dict:
    return {"flow_weight": calibration.flow_weight, "smooth_sigma": calibration.smooth_sigma}


def pooled_auc(
    scores: Sequence[np.ndarray], labels: Sequence[np.ndarray], videos: Sequence[int]
) -> tuple[float, float]:
    """(min-max AUC, raw AUC) of ``videos`` (indices): per-video min-max normalised scores pooled (the benchmark
    convention), and the scores pooled as they are (what a deployment thresholds)."""
    truth = np.concatenate([labels[i] for i in videos])
    return (
        roc_auc(truth, np.concatenate([minmax(scores[i]) for i in videos])),
        roc_auc(truth, np.concatenate([scores[i] for i in videos])),
    )


def held_out(
    grid: Sequence[Setting],
    scores_of: Callable[[Setting], Sequence[np.ndarray]],
    labels: Sequence[np.ndarray],
    describe: Callable[[Setting], dict],
) -> dict:
    """Choose a setting of ``grid`` on each half by its min-max AUC; report it on the other half.

    ``scores_of(setting)`` gives the 12 test videos' per-frame scores; ``describe(setting)`` what the JSON says
    was chosen.
    """
    scored = [(setting, scores_of(setting)) for setting in grid]
    result: dict = {"folds": {}}
    pooled_scores, pooled_truth = [], []
    for chose_on, reported_on in (("01-06", "07-12"), ("07-12", "01-06")):
        best, scores = max(scored, key=lambda item: pooled_auc(item[1], labels, HALVES[chose_on])[0])
        auc, raw = pooled_auc(scores, labels, HALVES[reported_on])
        result["folds"][f"chosen on {chose_on}, reported on {reported_on}"] = {
            **describe(best), "frame_auc": auc, "frame_auc_raw": raw,
        }  # fmt: skip
        for i in HALVES[reported_on]:
            pooled_scores.append(minmax(scores[i]))
            pooled_truth.append(labels[i])
    folds = list(result["folds"].values())
    result["mean_of_folds"] = float(np.mean([f["frame_auc"] for f in folds]))
    result["mean_of_folds_raw"] = float(np.mean([f["frame_auc_raw"] for f in folds]))
    result["all_12_each_half_at_the_other_halfs_choice"] = roc_auc(
        np.concatenate(pooled_truth), np.concatenate(pooled_scores)
    )
    return result
