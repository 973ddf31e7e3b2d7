"""VAD-LLaMA's VADor on UCSD Ped2 with stage-1 (`ae`) features: Table 3 and the attention normalisations.

    python bench/vador_ped2.py [--weights weights/ped2-vador/encoder] [--data ../shared/datasets/ped2] [--seeds 5]

Weakly supervised split (the common re-split of Ped2, whose training videos are all normal): part of the test
videos join the normal training videos with only a video-level label (abnormal; every Ped2 test video holds an
anomaly), the rest are held out with their frame labels. Two folds, so every test video is held out once:

    fold 1  train: training/01-12 (normal) + testing/01-06 (abnormal)  held out: testing/07-12 + training/13-16
    fold 2  train: training/01-12 (normal) + testing/07-12 (abnormal)  held out: testing/01-06 + training/13-16

The held-out normal training videos 13-16 make AUC_O (all held-out frames) differ from AUC_A (the frames of
held-out test videos only). Features: the stage-1 encoder's bottleneck, average- and max-pooled, per 16-frame
clip, extracted once into --cache. Each fold x seed trains the phase-1 baseline, then phase 2 from it for every
row; the numbers are means (and spreads) over folds and seeds, because 22 training videos make a single run
noisy. Optimiser: AdamW, weight decay 1e-3, batch 8, warm-up + cosine, as the paper, but lr 1e-4 instead of
1e-5: 22 videos give 3 steps per epoch, and at 1e-5 the predictor barely leaves its initial weights in 300
steps (at 1e-3 it fits the 22 videos and the extra phase-2 steps overfit them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from callm.console import make_progress
from callm.device import parse_dtype, pick_device
from callm.vador.ablation import BASELINE, AblationRow, ablation
from callm.vador.features import AEClipEncoder, FeatureIndex, extract_features
from callm.vador.labels import Labelled, frame_labels
from callm.vador.train import TrainSettings

REPO = Path(__file__).resolve().parent.parent
TRAIN_NORMAL = 12  # training/01-12 train; training/13-16 are held out as normal test videos
ATTENTIONS = ("dot", "l2", "softmax")


def features(weights: Path, data: Path, cache: Path | None, dtype: str) -> tuple[FeatureIndex, FeatureIndex]:
    device = pick_device("auto")
    encoder = AEClipEncoder.from_weights(weights, device, parse_dtype(dtype), "avgmax")
    cache = cache or Path(tempfile.gettempdir()) / "callm-vador-ped2" / encoder.weights_sha1[:12]
    with make_progress() as progress:
        return tuple(  # type: ignore[return-value]
            extract_features([data / part / "frames"], encoder, cache / part, progress=progress)[0]
            for part in ("training", "testing")
        )


def folds(training: FeatureIndex, testing: FeatureIndex, data: Path) -> list[tuple[list, list[int], Labelled]]:
    """(training features, weak labels, held-out videos with frame labels) of each fold."""
    test = frame_labels(data / "UCSDped2.m", testing.videos)
    normal_train = [v.load() for v in training.videos[:TRAIN_NORMAL]]
    normal_held = [(v, np.zeros(v.num_frames, np.uint8)) for v in training.videos[TRAIN_NORMAL:]]
    half = len(test) // 2
    found = []
    for abnormal, held in ((test[:half], test[half:]), (test[half:], test[:half])):
        features = normal_train + [video.load() for video, _ in abnormal]
        labels = [0] * len(normal_train) + [1] * len(abnormal)
        found.append((features, labels, held + normal_held))
    return found


def summary(rows: list[AblationRow], baseline: list[AblationRow]) -> str:
    """Mean ± sd of AUC_O and AUC_A, and the paired AUC_A gain over the baseline of the same fold and seed."""
    auc_o = np.array([r.auc_o for r in rows])
    auc_a = np.array([r.auc_a for r in rows], dtype=float)
    gain = auc_a - np.array([r.auc_a for r in baseline], dtype=float)
    return (
        f"{auc_o.mean():.4f} ± {auc_o.std():.4f}   {auc_a.mean():.4f} ± {auc_a.std():.4f}   "
        f"{gain.mean():+.4f} ({int((gain > 0).sum())}/{len(gain)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=REPO / "weights" / "ped2-vador" / "encoder")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "ped2")
    parser.add_argument("--cache", type=Path, help="features folder (default: a temp folder per weights)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=100, help="per phase")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--smoothness", type=float, default=0.0)
    parser.add_argument("--sparsity", type=float, default=0.0)
    parser.add_argument("--dtype", default="fp32", help="of the feature extraction")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the models are tiny)")
    parser.add_argument("--json", type=Path, help="also write every run's numbers here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    training, testing = features(args.weights, args.data, args.cache, args.dtype)
    print(f"features: {training.folder.parent} ({training.dim} per clip), {time.perf_counter() - began:.0f} s")
    settings = TrainSettings(
        epochs=args.epochs, lr=args.lr, smoothness=args.smoothness, sparsity=args.sparsity, batch_size=8
    )
    results: dict[str, list[AblationRow]] = {}
    with make_progress() as progress:
        task = progress.add_task("folds x seeds", total=2 * args.seeds)
        for features_, labels, held in folds(training, testing, args.data):
            for seed in range(args.seeds):
                seeded = dataclasses.replace(settings, seed=seed)
                for row in ablation(features_, labels, held, seeded, seeded, args.k, ATTENTIONS):
                    results.setdefault(row.label, []).append(row)
                progress.update(task, advance=1)
    print(f"\nUCSD Ped2, 2 folds x {args.seeds} seeds, K={args.k}, {args.epochs} epochs per phase, lr {args.lr}")
    print(f"{'row':<28}{'AUC_O (mean ± sd)':<22}{'AUC_A (mean ± sd)':<22}AUC_A - baseline (runs better)")
    for name, rows in results.items():
        print(f"{name:<28}{summary(rows, results[BASELINE])}")
    print(f"total {time.perf_counter() - began:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({k: [r.to_dict() for r in v] for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
