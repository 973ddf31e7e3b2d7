"""The gate's false alarms on normal footage that neither the model nor its calibration saw.

    python bench/false_alarms.py [--data ../shared/datasets/ped2] [--work ../bench-work/false-alarms] [--json F]
                                 [--calibrate WEIGHTS]

Leave-videos-out over the 16 normal Ped2 training videos, 4 folds of 4: ``callm train-ae`` with its defaults
(cross-fitted calibration included) on the other 12 videos, then ``callm detect`` with its defaults on the 4
held out. Counts the 16-frame windows gated for stage 2 and the frames above the threshold. Trained folds are
kept in ``--work`` and reused, so a killed run continues where it stopped.

With ``--calibrate WEIGHTS`` nothing is trained: each fold is ``callm calibrate`` of those weights on the other 12
videos (the README's way onto a new camera without training), then ``callm detect`` on the 4 held out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from callm.ae.calibrate import ScoringSettings
from callm.ae.recalibrate import recalibrate, scoring_of
from callm.ae.train import TrainSettings, train_ae
from callm.ae.weights import load, save
from callm.cascade import DetectOptions, Stage1
from callm.console import make_progress
from callm.device import parse_dtype, pick_device
from callm.video import Video, find_videos

REPO = Path(__file__).resolve().parent.parent
FOLDS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "ped2")
    parser.add_argument("--work", type=Path, default=REPO.parent / "bench-work" / "false-alarms")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--calibrate", type=Path, help="calibrate these weights per fold instead of training")
    args = parser.parse_args()
    device = pick_device("auto")
    dtype = parse_dtype(args.dtype, device)
    videos = find_videos([args.data / "training" / "frames"])
    base = load(args.calibrate, device) if args.calibrate else None
    per_fold = len(videos) // FOLDS
    folds = []
    for k in range(FOLDS):
        held = videos[k * per_fold : (k + 1) * per_fold]
        train = [v for v in videos if v not in held]
        out = args.work / f"fold-{k + 1}"
        began = time.perf_counter()
        if not (out / "ae.json").is_file():
            with make_progress() as progress:
                if base is not None:
                    footage = [Video(v) for v in train]
                    save(recalibrate(base, footage, scoring_of(base), device, dtype, progress), out)
                else:
                    train_ae(train, out, 128, (16, 32, 64, 64), TrainSettings(), ScoringSettings(), device, dtype,
                             10.0, resume=(out / "checkpoint").is_dir(), progress=progress)  # fmt: skip
        trained_seconds = time.perf_counter() - began
        weights = load(out, device)
        stage1 = Stage1(weights, DetectOptions(), device, dtype)
        gated = windows = above = frames = 0
        events: dict[str, list[list[int]]] = {}
        for video in held:
            detection = stage1.detect(video)
            gated += len(detection.gated_starts)
            windows += len(detection.window_starts)
            above += int((detection.scores > detection.threshold).sum())
            frames += detection.num_frames
            if detection.events:
                events[video.name] = [[e.start_frame, e.end_frame] for e in detection.events]
        fold = {
            "held_out": [v.name for v in held],
            "events": events,
            "windows_gated": gated,
            "windows": windows,
            "frames_above_threshold": above,
            "frames": frames,
            "threshold": stage1.threshold,
            "evidence": weights.calibration["evidence"],
            "calibrated_from": str(args.calibrate) if args.calibrate else None,
            "train_wall_seconds": None if args.calibrate else weights.training["wall_seconds"],
            "this_run_seconds": round(trained_seconds, 1),
        }
        folds.append(fold)
        print(
            f"fold {k + 1}: held out training videos {', '.join(fold['held_out'])}: {gated}/{windows} windows gated, "
            f"{above}/{frames} frames above the threshold {stage1.threshold:.2f} "
            + ("(calibrated" if args.calibrate else f"(train-ae took {weights.training['wall_seconds'] / 60:.1f} min")
            + f"; this run {trained_seconds / 60:.1f} min)"
            + "".join(f"; {name}: events at frames {spans}" for name, spans in events.items()),
            flush=True,
        )
    total = {
        key: sum(f[key] for f in folds) for key in ("windows_gated", "windows", "frames_above_threshold", "frames")
    }
    print(
        f"all folds: {total['windows_gated']}/{total['windows']} = "
        f"{100 * total['windows_gated'] / total['windows']:.1f}% of unseen normal windows gated (goal <= 5%); "
        f"{total['frames_above_threshold']}/{total['frames']} = "
        f"{100 * total['frames_above_threshold'] / total['frames']:.1f}% of frames above the threshold; "
        f"dtype {str(dtype).removeprefix('torch.')}, {torch.get_num_threads()} threads"
    )
    if args.json:
        args.json.write_text(json.dumps({"folds": folds, "total": total}, indent=2))


if __name__ == "__main__":
    main()
