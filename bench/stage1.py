"""Stage 1 on UCSD Ped2: accuracy under a select-on-one-half, report-on-the-other protocol, gate coverage, speed.

    python bench/stage1.py [--weights weights/ped2] [--data ../shared/datasets/ped2] [--stride 8 --stride 1]
                           [--dtype fp32 --dtype bf16] [--json F]

Ped2 has no validation split, so the scoring knobs that are not learned from normal footage (the share of the
optical-flow signal in the score, and the temporal smoothing) are chosen on test videos 01-06 and reported on
07-12, then the other way round. Printed per stride:

* held out: each half's AUC at the setting the other half chose, their mean, and the 12 videos pooled with each
  half scored at the other half's choice (every number there comes from a setting chosen without its video);
* defaults: the AUC of the weights' own settings, which the developers chose while looking at both halves:
  not a held-out number;
* the gate: the share of abnormal test frames inside the windows gated at the automatic threshold (calibrated
  on normal training footage only), and the share of normal test frames gated, at the weights' event hold;
* the event hold held out: the share of normal frames an event's score must stay above to last, chosen on each
  half by (abnormal minus normal frames inside events) and reported on the other;
* following objects held out: whether events follow the object that set them off (``DetectOptions.follow_objects``),
  chosen on each half by the same criterion as the hold and reported on the other;
* frames/s of the whole detect pass (decoding, optical flow, model, events) for each ``--dtype``, and which
  one ``--dtype auto`` picks on this machine.

AUC is frame-level ROC AUC against ``UCSDped2.m``: per-video min-max normalised scores pooled (the benchmark
convention), and the calibrated scores pooled as they are ("raw", what a deployment thresholds).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from protocol import HALVES, ground_truth, held_out, knob_grid, knobs, ped2_arguments, pooled_auc

from callm.ae.calibrate import Calibration
from callm.ae.events import gated_windows
from callm.ae.online import StreamEvents, replayed_events
from callm.ae.weights import load
from callm.cascade import DetectOptions, Stage1
from callm.device import fastest_dtype, parse_dtype, pick_device
from callm.evaluate import gate_coverage
from callm.localisation import event_flags
from callm.metrics import read_frame_labels
from callm.results import Detection
from callm.video import testing_videos


def scores_of(calibration: Calibration, detections: list[Detection]) -> list[np.ndarray]:
    return [calibration.calibrated(d.psnr, d.speed) for d in detections]


def aucs(
    calibration: Calibration, detections: list[Detection], labels: list[np.ndarray], videos
) -> tuple[float, float]:
    """(min-max AUC, raw AUC) of ``videos`` (indices) scored with ``calibration``."""
    return pooled_auc(scores_of(calibration, detections), labels, videos)


def held_out_knobs(calibration: Calibration, detections: list[Detection], labels: list[np.ndarray]) -> dict:
    """Choose (flow weight, sigma) on each half by its min-max AUC; score the other half with that choice."""
    return held_out(knob_grid(calibration), lambda c: scores_of(c, detections), labels, knobs)


def events_inside(
    detections: list[Detection], labels: list[np.ndarray], videos, hold: float | None, follow: bool
) -> dict:
    """The share of ``videos``' abnormal and normal frames inside events, and inside gated windows, with events
    found at ``hold`` and following their objects or not (through ``StreamEvents``, as ``callm detect`` does)."""
    options = DetectOptions()
    found = []
    for i in videos:
        d = detections[i]
        finder = StreamEvents(d.threshold, d.fps, *options.event_frames(d.fps), d.num_frames + 1, hold, follow)
        events = replayed_events(finder, d.scores, np.zeros((d.num_frames, 4), int), d.regions)
        found.append(replace(d, events=events, gated_starts=gated_windows(events, d.num_frames)))
    truth = [labels[i] for i in videos]
    t, e = np.concatenate(truth).astype(bool), np.concatenate([event_flags(f) for f in found])
    gate = gate_coverage(found, truth)
    return {
        "abnormal_in_events": float(e[t].mean()), "normal_in_events": float(e[~t].mean()),
        "abnormal_in_gated": gate.anomalous_in_gated, "normal_in_gated": gate.normal_in_gated,
        "abnormal_frames": int(t.sum()),
    }  # fmt: skip


def held_out_events(detections: list[Detection], labels: list[np.ndarray], choices: dict[str, tuple]) -> dict:
    """Choose among ``choices`` (name -> (hold, follow)) on each half by the share of abnormal frames inside events
    minus the share of normal ones; report events and the gate on the other half."""
    folds = {}
    for chose_on, reported_on in (("01-06", "07-12"), ("07-12", "01-06")):
        found = {name: events_inside(detections, labels, HALVES[chose_on], *c) for name, c in choices.items()}
        score = {n: v["abnormal_in_events"] - v["normal_in_events"] for n, v in found.items()}
        best = max(choices, key=score.__getitem__)
        folds[f"chosen on {chose_on}, reported on {reported_on}"] = {
            "choice": best,
            "criterion_on_choosing_half": score,
            **events_inside(detections, labels, HALVES[reported_on], *choices[best]),
        }  # fmt: skip
    pooled = sum(f["abnormal_in_gated"] * f["abnormal_frames"] for f in folds.values()) / sum(
        f["abnormal_frames"] for f in folds.values()
    )
    return {"folds": folds, "abnormal_in_gated_pooled": pooled}


def held_out_hold(calibration: Calibration, detections: list[Detection], labels: list[np.ndarray]) -> dict:
    """The event hold (a quantile of normal frames' scores, 0 = none), objects not followed, chosen per half."""
    levels = {"0": None, **calibration.evidence["frame_score_quantiles"]}
    choices = {q: (levels[q], False) for q in levels if float(q) == 0 or float(q) >= 0.8}
    result = held_out_events(detections, labels, choices)
    return {**result, "no_hold_all_12": events_inside(detections, labels, range(12), None, False)}


def held_out_follow(calibration: Calibration, detections: list[Detection], labels: list[np.ndarray]) -> dict:
    """Following events' objects or not, at the weights' event hold, chosen per half."""
    hold = calibration.event_hold(calibration.threshold)
    result = held_out_events(detections, labels, {"off": (hold, False), "on": (hold, True)})
    return {**result, "off_all_12": events_inside(detections, labels, range(12), hold, False)}


def main() -> None:
    parser = ped2_arguments(__doc__)
    parser.add_argument("--stride", type=int, action="append", help="repeatable; default: the weights' own")
    parser.add_argument("--dtype", action="append", help="repeatable; default: fp32 and bf16")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device("auto")
    weights = load(args.weights, device)
    calibration = Calibration.from_dict(weights.calibration)
    videos = testing_videos(args.data)
    dtypes = args.dtype or ["fp32", "bf16"]
    training = weights.training
    print(f"weights {args.weights}: config {weights.config.to_dict()}")
    if "wall_seconds" in training:
        print(
            f"train-ae: {training['wall_seconds'] / 60:.1f} min in all ({training['steps']} steps final, "
            f"{training['fold_steps']} for the cross-fitting folds) on {training['device']} {training['dtype']}"
        )
    auto = str(fastest_dtype(device)).removeprefix("torch.")
    print(f"--dtype auto picks {auto} here; {torch.get_num_threads()} threads")
    results: dict = {"weights": str(args.weights), "training": training, "strides": {}}
    for stride in args.stride or [calibration.stride]:
        speed: dict[str, float] = {}
        detections: list[Detection] = []
        for name in dtypes:
            stage1 = Stage1(weights, DetectOptions(stride=stride), device, parse_dtype(name, device))
            stage1.detect(videos[0])  # warm-up: oneDNN picks its kernels on the first batch
            began = time.perf_counter()
            found = [stage1.detect(v) for v in videos]
            speed[name] = sum(d.num_frames for d in found) / (time.perf_counter() - began)
            detections = detections or found
        labels = read_frame_labels(ground_truth(args.data), [d.num_frames for d in detections])
        everything = range(12)
        defaults = {
            half: dict(zip(("frame_auc", "frame_auc_raw"), aucs(calibration, detections, labels, idx), strict=True))
            for half, idx in {**HALVES, "all 12": everything}.items()
        }
        # What each signal gives alone, at the default smoothing (all 12 videos: a description, not a selection).
        alone = {
            name: aucs(replace(calibration, flow_weight=w), detections, labels, everything)[0]
            for name, w in (("autoencoder", 0.0), ("flow", 1.0))
        }
        coverage = gate_coverage(detections, labels)
        per_video = {
            Path(d.video).stem: gate_coverage([d], [truth]).anomalous_in_gated
            for d, truth in zip(detections, labels, strict=True)
            if truth.any()
        }
        protocol = held_out_knobs(calibration, detections, labels)
        hold = held_out_hold(calibration, detections, labels)
        follow = held_out_follow(calibration, detections, labels)
        results["strides"][stride] = {
            "held_out": protocol,
            "defaults": defaults,
            "default_settings": {"flow_weight": calibration.flow_weight, "smooth_sigma": calibration.smooth_sigma},
            "abnormal_frames_in_gated_windows": coverage.anomalous_in_gated,
            "normal_frames_in_gated_windows": coverage.normal_in_gated,
            "abnormal_frames_in_gated_windows_per_video": per_video,
            "event_hold_quantile": calibration.hold_quantile,
            "event_hold_held_out": hold,
            "follow_objects_held_out": follow,
            "frames_per_second": speed,
            "signals_alone_all_12": alone,
            "threshold": calibration.threshold,
        }
        print(f"\nstride {stride}:")
        for name, fold in protocol["folds"].items():
            print(
                f"  held out, {name}: AUC {fold['frame_auc']:.4f} (raw {fold['frame_auc_raw']:.4f}) at flow weight "
                f"{fold['flow_weight']}, sigma {fold['smooth_sigma']}"
            )
        print(
            f"  held out, mean of the two folds: AUC {protocol['mean_of_folds']:.4f} "
            f"(raw {protocol['mean_of_folds_raw']:.4f}); all 12 pooled, each half at the other's choice: "
            f"{protocol['all_12_each_half_at_the_other_halfs_choice']:.4f}"
        )
        print(
            "  defaults (flow weight {flow_weight}, sigma {smooth_sigma}; chosen looking at both halves): ".format(
                **results["strides"][stride]["default_settings"]
            )
            + "; ".join(f"{h} {v['frame_auc']:.4f} (raw {v['frame_auc_raw']:.4f})" for h, v in defaults.items())
        )
        print("  each signal alone, all 12: " + ", ".join(f"{k} {v:.4f}" for k, v in alone.items()))
        print(
            f"  gate at the automatic threshold {calibration.threshold:.2f}: "
            f"{100 * coverage.anomalous_in_gated:.1f}% of abnormal test frames in gated windows (goal >= 95%), "
            f"{100 * coverage.normal_in_gated:.1f}% of normal test frames gated (event hold: "
            f"{calibration.hold_quantile} of normal frames, chosen on 01-06; events follow their objects)"
        )
        print("  abnormal frames gated, per video: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in per_video.items()))
        for title, held in (("event hold (objects not followed)", hold), ("following objects", follow)):
            for name, fold in held["folds"].items():
                print(
                    f"  {title} held out, {name}: {fold['choice']}: abnormal frames in gated windows "
                    f"{100 * fold['abnormal_in_gated']:.1f}%, normal {100 * fold['normal_in_gated']:.1f}%; in events "
                    f"{100 * fold['abnormal_in_events']:.1f}% / {100 * fold['normal_in_events']:.1f}% "
                    "(choosing half, abnormal minus normal in events: "
                    + ", ".join(f"{k} {v:+.3f}" for k, v in fold["criterion_on_choosing_half"].items())
                    + ")"
                )
        none = hold["no_hold_all_12"]
        print(
            f"  event hold held out, both halves pooled: {100 * hold['abnormal_in_gated_pooled']:.1f}% of abnormal "
            f"frames in gated windows; without a hold (all 12): {100 * none['abnormal_in_gated']:.1f}% "
            f"(normal {100 * none['normal_in_gated']:.1f}%)"
        )
        off = follow["off_all_12"]
        print(
            f"  following objects held out, both halves pooled: {100 * follow['abnormal_in_gated_pooled']:.1f}% of "
            f"abnormal frames in gated windows; not following (all 12): {100 * off['abnormal_in_gated']:.1f}% "
            f"(normal {100 * off['normal_in_gated']:.1f}%)"
        )
        height, width = detections[0].frame_size
        frames = sum(d.num_frames for d in detections)
        shown = ", ".join(f"{n} {v:.1f} frames/s" for n, v in speed.items())
        print(f"  speed: {shown} ({height}x{width}, {frames} frames)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
