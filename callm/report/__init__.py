"""Results as rich tables for the terminal and JSON files on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from callm.files import write_json_atomic
from callm.results import Detection, Event
from callm.scan import ScanSummary


def _clock(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}:{minutes:02d}:{secs:05.2f}" if hours else f"{minutes}:{secs:05.2f}"


def events_table(detection: Detection) -> Table:
    """The events shown as anomalies: stage 1's, minus those stage 2 judged normal, and the LTC path's."""
    explained = detection.explanations is not None
    table = Table(title=f"Anomalies in {Path(detection.video).name}")
    columns = ["#", "time", "frames", "peak score", "where (peak box; main track from -> to)"]
    columns += ["found by"] if detection.ltc is not None else []
    columns += ["explanation"] if explained else []
    for name in columns:
        table.add_column(name, justify="right" if name in ("#", "peak score") else "left")
    rows = []
    for index, event in enumerate(detection.events):
        explanation = detection.explanations[index] if detection.explanations is not None else None
        if explanation is not None and explanation.verdict == "normal":
            continue
        rows.append((event, "stage 1", explanation.text or "(no text)" if explanation else None))
    if detection.ltc is not None:
        rows += [(event, "LTC", None) for event in detection.ltc.events]
    for number, (event, found_by, text) in enumerate(sorted(rows, key=lambda r: r[0].start_frame), start=1):
        row = [
            str(number),
            f"{_clock(event.start_s)} - {_clock(event.end_s)}",
            f"{event.start_frame}-{event.end_frame}",
            f"{event.peak_score:.2f}",
            where(event),
        ]
        row += [found_by] if detection.ltc is not None else []
        row += [text or ""] if explained else []
        table.add_row(*row)
    return table


def where(event: Event) -> str:
    """The peak box, and where the main track went: its first and last box centres."""
    if not event.tracks:
        return str(event.box)
    main = event.tracks[0]
    (x0, y0), (x1, y1) = (((e[1] + e[3]) // 2, (e[2] + e[4]) // 2) for e in (main[0], main[-1]))
    others = f"; {len(event.tracks) - 1} more object(s)" if len(event.tracks) > 1 else ""
    return f"{event.box}; ({x0:.0f}, {y0:.0f}) -> ({x1:.0f}, {y1:.0f}) over {len(main)} frames{others}"


def detection_summary(detection: Detection) -> str:
    duration = detection.num_frames / detection.fps
    return (
        f"{Path(detection.video).name}: {len(detection.events)} event(s) in {detection.num_frames} frames "
        f"({_clock(duration)} at {detection.fps:g} fps); peak score {detection.scores.max():.2f} "
        f"(threshold {detection.threshold:.2f}{_hold_note(detection)}); {len(detection.gated_starts)} of "
        f"{len(detection.window_starts)} windows gated for stage 2; "
        f"{detection.num_frames / detection.seconds:.1f} frames/s" + _stage2_summary(detection) + _fps_note(detection)
    )


def _hold_note(detection: Detection) -> str:
    """How events last beyond the frames above the threshold: the hold, and following their objects."""
    hold = detection.settings.get("event_hold")
    ways = [] if hold is None or hold >= detection.threshold else [f"above {hold:.2f}"]
    if detection.settings.get("follow_objects"):
        ways.append("while their object is in view")
    return f"; events last {' and '.join(ways)}" if ways else ""


def _fps_note(detection: Detection) -> str:
    if detection.fps_source != "assumed":
        return ""
    return f"; the video carries no frame rate: {detection.fps:g} fps assumed, so every time is a guess"


def _stage2_summary(detection: Detection) -> str:
    ltc = "" if detection.ltc is None else f"; LTC path ({detection.ltc.answer_source}): {detection.ltc.answer}"
    if detection.explanations is None:
        return ltc
    cleared = sum(e.verdict == "normal" for e in detection.explanations)
    return f"; stage 2: {detection.vlm_calls} call(s), {cleared} event(s) judged normal and not shown" + ltc


def eval_table(result: dict[str, Any]) -> Table:
    table = Table(title="Stage-1 evaluation")
    table.add_column("video")
    table.add_column("frames", justify="right")
    table.add_column("abnormal", justify="right")
    table.add_column("AUC", justify="right")
    table.add_column("events", justify="right")
    for name, row in result["per_video"].items():
        auc = "-" if row["auc"] is None else f"{row['auc']:.4f}"
        table.add_row(name, str(row["frames"]), str(row["abnormal_frames"]), auc, str(row["events"]))
    table.add_section()
    table.add_row(
        "all (per-video min-max)",
        str(result["num_frames"]),
        str(result["abnormal_frames"]),
        f"{result['frame_auc']:.4f}",
        "",
    )
    table.add_row("all (raw, calibrated)", "", "", f"{result['frame_auc_raw']:.4f}", "")
    return table


def scan_table(summary: ScanSummary) -> Table:
    table = Table(title="Scan")
    for name in ("videos", "scanned now", "already done", "failed", "with events", "events", "time"):
        table.add_column(name, justify="right")
    table.add_row(
        str(summary.videos),
        str(summary.scanned),
        str(summary.skipped),
        str(summary.failed),
        str(summary.with_events),
        str(summary.total_events),
        _clock(summary.seconds),
    )
    return table


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    write_json_atomic(path, data)


def localisation_line(measures: dict[str, Any]) -> str:
    """The pixel-level measures of ``callm eval --masks`` in one line."""

    def share(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    iou, ratio = measures["mean_iou_flagged_abnormal"], measures["median_area_ratio_flagged_abnormal"]
    return (
        f"localisation: {share(measures['detected_at_threshold'])} of abnormal frames detected at the threshold "
        f"(flagged and >= 40% of the mask covered; {share(measures['flagged_abnormal_at_threshold'])} flagged), "
        f"pixel-level AUC {measures['pixel_auc']:.4f}, mean IoU {'-' if iou is None else f'{iou:.3f}'}, "
        f"median region area {'-' if ratio is None else f'{ratio:.2f}'}x the anomaly, normal frames flagged "
        f"{share(measures['false_positive_rate_at_threshold'])}"
    )


def cameras_table(rows: list[dict[str, Any]]) -> Table:
    """The live state of a watch's cameras: status, frame rate, lag behind live, skipped frames, events."""
    table = Table(title="callm watch")
    for column in ("camera", "status", "fps", "lag", "frames", "skipped", "events", "open event", "detail"):
        table.add_column(column, justify="right" if column in ("fps", "lag", "frames", "skipped", "events") else "left")
    for row in rows:
        table.add_row(
            row["camera"], row["status"], f"{row['fps']:.1f}", f"{row['lag_s']:.2f} s", str(row["frames"]),
            str(row["skipped"]), str(row["events"]), row["open"], row["detail"],
        )  # fmt: skip
    return table
