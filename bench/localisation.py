"""Where stage 1 puts the anomaly on UCSD Ped2, against the pixel masks: the pixel-level criterion, AUC and IoU.

    python bench/localisation.py [--weights weights/ped2] [--data ../shared/datasets/ped2] [--hold Q] [--no-follow]
                                 [--json F]

For each pair of a small grid of the two region knobs the weights store in their calibration (``region_share``:
how far toward a frame's worst cell its regions reach; ``region_tighten``: how far each region's box shrinks to
its pixels of highest error), scores the 12 test videos and measures, with ``callm.localisation``: the share of
abnormal frames detected at the automatic threshold (flagged, i.e. inside an event, and at least 40% of the mask
covered by the frame's regions), the pixel-level AUC, the mean IoU of the flagged abnormal frames' regions with
the mask's blob boxes, and the median region area over the anomaly's. The pair is chosen on test videos 01-06
(by mean IoU) and reported on 07-12, and the other way round; the weights' defaults were chosen on 01-06, so
their 07-12 numbers are held out. Also prints frames/s of the detect pass with regions and tracks.

Events last while the score stays above the weights' event hold, which was chosen on 01-06 too (bench/stage1.py);
``--hold Q`` runs at another quantile of the calibration's normal frames, e.g. the one bench/stage1.py chooses on
07-12, so that the 01-06 row is held out for the hold as well. Events follow their objects unless ``--no-follow``
(bench/stage1.py lets each half choose that too: 01-06 chooses off, so the 07-12 row is held out for it with
``--no-follow``).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

import torch
from protocol import ped2_arguments

from callm.ae.calibrate import Calibration
from callm.ae.weights import load
from callm.cascade import DetectOptions, Stage1
from callm.device import pick_device
from callm.localisation import localisation
from callm.video import testing_videos

GRID = [(share, tighten) for share in (0.8, 0.85, 0.9) for tighten in (0.0, 0.1, 0.2, 0.3)]
HALVES = {"01-06": range(6), "07-12": range(6, 12), "all 12": range(12)}
SHOWN = ("detected_at_threshold", "pixel_auc", "mean_iou_flagged_abnormal", "median_area_ratio_flagged_abnormal")


def main() -> None:
    parser = ped2_arguments(__doc__)
    parser.add_argument("--hold", help="event hold: a quantile in the calibration's frame_score_quantiles")
    parser.add_argument("--no-follow", action="store_true", help="events do not follow their objects")
    args = parser.parse_args()
    device = pick_device("auto")
    weights = load(args.weights, device)
    if args.hold is not None:
        levels = weights.calibration["evidence"]["frame_score_quantiles"]
        if args.hold not in levels:
            parser.error(f"--hold must be one of {', '.join(levels)}")
        hold = {"hold_quantile": float(args.hold), "hold_score": levels[args.hold]}
        weights = replace(weights, calibration={**weights.calibration, **hold})
    options = DetectOptions(follow_objects=not args.no_follow)
    print(
        f"event hold: {weights.calibration.get('hold_quantile', 0)} of normal frames; events follow their objects: "
        f"{options.follow_objects}"
    )
    shipped = Calibration.from_dict(weights.calibration)
    default = (shipped.region_share, shipped.region_tighten)
    videos = testing_videos(args.data)
    masks = [args.data / "testing" / "masks" / v.stem for v in videos]  # 01/ for 01/ or 01.mp4
    results: dict = {}
    for share, tighten in sorted({*GRID, default}):
        calibration = {**weights.calibration, "region_share": share, "region_tighten": tighten}
        stage1 = Stage1(replace(weights, calibration=calibration), options, device, torch.float32)
        began = time.perf_counter()
        detections = [stage1.detect(v) for v in videos]
        speed = sum(d.num_frames for d in detections) / (time.perf_counter() - began)
        found = {h: localisation([detections[i] for i in idx], [masks[i] for i in idx]) for h, idx in HALVES.items()}
        results[share, tighten] = {**found, "frames_per_second_fp32": speed}
        shown = ", ".join(f"{half}: " + " / ".join(f"{found[half][k]:.3f}" for k in SHOWN) for half in HALVES)
        print(f"share {share}, tighten {tighten}: {shown}  ({speed:.1f} frames/s)", flush=True)
    print(f"(columns: {' / '.join(SHOWN)})")
    for chose_on, reported_on in (("01-06", "07-12"), ("07-12", "01-06")):
        best = max(results, key=lambda k: results[k][chose_on]["mean_iou_flagged_abnormal"] or 0.0)
        measures = results[best][reported_on]
        print(
            f"held out: share, tighten {best} chosen on {chose_on}, on {reported_on}: "
            + ", ".join(f"{k} {measures[k]:.3f}" for k in SHOWN)
        )
    print(f"defaults {default} (chosen on 01-06): " + ", ".join(
        f"{half} " + "/".join(f"{results[default][half][k]:.3f}" for k in SHOWN) for half in HALVES))  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({f"share {k[0]}, tighten {k[1]}": v for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
