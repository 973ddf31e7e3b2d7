"""Stage-1 benchmark on UCSD Ped2: accuracy, speed, training time and gate coverage of a weights folder.

    python bench/stage1.py [--weights weights/ped2] [--data ../shared/datasets/ped2] [--stride 8 --stride 1]

Prints, for each stride: frame AUC (per-video min-max, the standard protocol) and raw AUC, scoring
throughput in frames/s on the 240x360 test videos (decoding included), the share of abnormal test frames
that fall in gated windows and the share of normal 16-frame windows gated on the held-out Ped2 training
videos (not used for training). Also prints the training time stored with the weights.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from callm.ae.weights import load
from callm.cascade import DetectOptions, Stage1
from callm.device import parse_dtype, pick_device
from callm.evaluate import evaluate

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=REPO / "weights" / "ped2")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "ped2")
    parser.add_argument("--stride", type=int, action="append", help="repeatable; default 8")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device("auto")
    weights = load(args.weights, device)
    meta = json.loads((args.weights / "ae.json").read_text())
    labels = args.data / "UCSDped2.m"
    held_out = [args.data / "training" / "frames" / Path(v).name for v in weights.calibration["holdout_videos"]]
    print(f"weights {args.weights}: config {meta['config']}")
    training = meta["training"]
    print(
        f"training: {training['train_seconds']:.0f} s ({training['train_seconds'] / 60:.1f} min) for "
        f"{training['epochs']} epochs, {training['clips_seen']} clips, on {training['device']} "
        f"({torch.get_num_threads()} threads now)"
    )
    results = {}
    for stride in args.stride or [8]:
        stage1 = Stage1(weights, DetectOptions(stride=stride), device, parse_dtype(args.dtype))
        began = time.perf_counter()
        result = evaluate(args.data, labels, stage1)
        wall = time.perf_counter() - began
        gated = total = 0
        for video in held_out:
            detection = stage1.detect(video)
            gated += len(detection.gated_starts)
            total += len(detection.window_starts)
        results[stride] = {
            "frame_auc": result["frame_auc"],
            "frame_auc_raw": result["frame_auc_raw"],
            "frames_per_second": result["num_frames"] / wall,
            "anomalous_frames_in_gated_windows": result["anomalous_frames_in_gated_windows"],
            "normal_windows_gated_heldout": gated / total if total else float("nan"),
            "heldout_videos": [v.name for v in held_out],
        }
        r = results[stride]
        print(
            f"stride {stride:2d}: frame AUC {r['frame_auc']:.4f} (raw {r['frame_auc_raw']:.4f}) | "
            f"{r['frames_per_second']:.1f} frames/s on {result['num_frames']} frames of 240x360 | "
            f"abnormal test frames in gated windows {100 * r['anomalous_frames_in_gated_windows']:.1f}% | "
            f"normal windows gated on held-out training videos {', '.join(r['heldout_videos'])}: "
            f"{gated}/{total} = {100 * r['normal_windows_gated_heldout']:.1f}%",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({str(k): v for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
