"""The run folder's ``report.html``: one page, viewed with the run folder beside it (no network needed).

A row per video: its anomaly-score curve over time (threshold line, events shaded) as inline SVG; for each
event, its clip (``clips/``, played in place, tracked boxes drawn) with the peak frame, its boxes and its main
track's path as the still, its times, peak score and the stage-2 verdict and explanation when present; and the
VADor's events and answer after ``--explainer ltc``. Stills are inlined; clips are linked files, too large to
inline. Rows sort by peak score (a few lines of inline JavaScript); failed files are listed with their errors."""

from __future__ import annotations

import base64
import html
import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np

from callm.errors import CallmError
from callm.files import write_text_atomic
from callm.scan import SUMMARY, RunFolder

REPORT = "report.html"
CURVE_WIDTH, CURVE_HEIGHT = 480, 110
CURVE_COLOUR = "#1f5fd6"
MAX_THUMBS = 8  # per video, the highest-peaked events
THUMB_SHOWN = 200  # px wide on the page

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; margin: 0 0 4px; }
.totals { color: #555; margin-bottom: 16px; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 8px; vertical-align: top; text-align: left; }
th.sortable { cursor: pointer; text-decoration: underline dotted; }
.curve { background: #fafafa; border: 1px solid #eee; }
.events { display: flex; flex-wrap: wrap; gap: 8px; }
figure.event { margin: 0; width: 200px; font-size: 12px; }
figure.event img, figure.event video { width: 200px; display: block; border: 1px solid #ccc; }
.verdict-normal { color: #777; }
.verdict-anomaly { color: #b00020; font-weight: 600; }
.path { font-family: ui-monospace, monospace; font-size: 12px; word-break: break-all; }
.failed td { color: #b00020; }
"""

SORT_SCRIPT = """
document.querySelectorAll("th.sortable").forEach(function (th) {
  th.addEventListener("click", function () {
    var body = document.querySelector("#videos tbody");
    var rows = Array.from(body.querySelectorAll("tr"));
    var down = th.dataset.order !== "desc";
    rows.sort(function (a, b) { return (Number(b.dataset.peak) - Number(a.dataset.peak)) * (down ? 1 : -1); });
    rows.forEach(function (row) { body.appendChild(row); });
    th.dataset.order = down ? "desc" : "asc";
  });
});
"""


def _clock(seconds: float) -> str:
    minutes, secs = divmod(float(seconds), 60)
    return f"{int(minutes)}:{secs:04.1f}"


def curve_svg(scores: list[float], threshold: float, events: list[dict[str, Any]], hold: float | None = None) -> str:
    """The score curve as an SVG: at most one point per pixel column (the column's maximum, so no peak is lost).
    ``hold``, when below the threshold, is drawn dotted: the level an event lasts above once it is found."""
    values = np.asarray(scores, dtype=np.float64)
    n = len(values)
    if n == 0:
        return ""
    columns = min(n, CURVE_WIDTH)
    edges = np.linspace(0, n, columns + 1).astype(int)
    peaks = np.array([values[a : max(b, a + 1)].max() for a, b in itertools.pairwise(edges)])
    if hold is not None and hold >= threshold:
        hold = None
    low = min(0.0, float(values.min()), 0.0 if hold is None else hold)
    high = max(float(values.max()), threshold) * 1.1 - low * 0.1 or 1.0

    def y(value: float) -> float:
        return CURVE_HEIGHT - 4 - (value - low) / (high - low) * (CURVE_HEIGHT - 8)

    def x(frame: float) -> float:
        return frame / n * CURVE_WIDTH

    shaded = "".join(
        f'<rect class="event-span" x="{x(e["start_frame"]):.1f}" y="0" '
        f'width="{max(1.0, x(e["end_frame"] + 1) - x(e["start_frame"])):.1f}" height="{CURVE_HEIGHT}" '
        f'fill="#ff9800" fill-opacity="0.3"/>'
        for e in events
    )
    points = " ".join(f"{(i + 0.5) * CURVE_WIDTH / columns:.1f},{y(v):.1f}" for i, v in enumerate(peaks))
    hold_line = (
        ""
        if hold is None
        else f'<line class="hold" x1="0" x2="{CURVE_WIDTH}" y1="{y(hold):.1f}" y2="{y(hold):.1f}" '
        f'stroke="#888" stroke-width="1" stroke-dasharray="1,3"/>'
    )
    return (
        f'<svg class="curve" width="{CURVE_WIDTH}" height="{CURVE_HEIGHT}" viewBox="0 0 {CURVE_WIDTH} {CURVE_HEIGHT}" '
        f'xmlns="http://www.w3.org/2000/svg">{shaded}'
        f'<line class="threshold" x1="0" x2="{CURVE_WIDTH}" y1="{y(threshold):.1f}" y2="{y(threshold):.1f}" '
        f'stroke="#444" stroke-width="1" stroke-dasharray="5,4"/>{hold_line}'
        f'<polyline class="score" points="{points}" fill="none" stroke="{CURVE_COLOUR}" stroke-width="2"/></svg>'
    )


def _thumbnail(run_dir: Path, relative: str) -> str:
    path = run_dir / relative
    if not path.is_file():
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _event_figure(
    run_dir: Path, event: dict[str, Any], thumb: str | None, clip: str | None, when: str | None = None
) -> str:
    """An event as a figure: its clip (or still), ``when`` it was (default: its times in the video), its peak
    score and any stage-2 verdict."""
    verdict = event.get("verdict")
    when = when or f"{_clock(event['start_s'])}-{_clock(event['end_s'])}"
    lines = [f"{when} &middot; peak {event['peak_score']:.2f}"]
    if verdict is not None:
        text = html.escape(event.get("explanation") or "")
        lines.append(f'<span class="verdict-{verdict}">{verdict}</span> {text}')
    image = _thumbnail(run_dir, thumb) if thumb else ""
    if clip and (run_dir / clip).is_file():  # the clip plays in place; the thumbnail shows until it does
        shown = (
            f'<video class="clip" src="{html.escape(clip)}" poster="{image}" controls muted loop preload="none" '
            f'width="{THUMB_SHOWN}"></video>'
        )
    else:
        shown = f'<img class="thumb" src="{image}" alt="peak frame {event["peak_frame"]}">' if image else ""
    return f'<figure class="event">{shown}<figcaption>{"<br>".join(lines)}</figcaption></figure>'


def _video_row(run_dir: Path, record: dict[str, Any], data: dict[str, Any]) -> str:
    events = data["events"]
    thumbs, clips = data.get("thumbnails", []), data.get("clips", [])
    ranked = sorted(range(len(events)), key=lambda i: -events[i]["peak_score"])[:MAX_THUMBS]
    figures = "".join(
        _event_figure(run_dir, events[i], thumbs[i] if i < len(thumbs) else None, clips[i] if i < len(clips) else None)
        for i in sorted(ranked)
    )
    more = f"<p>{len(events) - len(ranked)} more event(s) in the JSON</p>" if len(events) > len(ranked) else ""
    ltc = data.get("ltc")
    if ltc is not None:  # detect --explainer ltc: the VADor's own events and answer
        spans = ", ".join(f"{_clock(e['start_s'])}-{_clock(e['end_s'])}" for e in ltc["events"]) or "none"
        more += (
            f'<p class="ltc">VADor events: {spans}. {html.escape(ltc["answer"])} '
            f"<small>({html.escape(ltc['answer_source'])})</small></p>"
        )
    return (
        f'<tr class="video" data-peak="{record["peak_score"]}">'
        f'<td class="path">{html.escape(record["path"])}<br>'
        f"{_clock(record['duration_s'])} at {record['fps']:g} fps"
        + (" (assumed: the file carries no frame rate)" if data.get("fps_source") == "assumed" else "")
        + "</td>"
        f"<td>{record['events']}</td><td>{record['peak_score']:.2f}</td>"
        f"<td>{curve_svg(data['scores'], data['threshold'], events, data.get('settings', {}).get('event_hold'))}</td>"
        f'<td><div class="events">{figures}</div>{more}</td></tr>'
    )


def _page(title: str, body: str) -> str:
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{STYLE}</style></head>
<body>
<h1>{title}</h1>
{body}
</body></html>
"""


def build_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` from the run folder's JSON files and thumbnails; returns its path."""
    if not (run_dir / SUMMARY).is_file():
        raise CallmError(f"{run_dir}: not a scan folder (no {SUMMARY}); run callm detect FOLDER --out {run_dir}")
    folder = RunFolder(run_dir)
    records = list(folder.records.values())
    results = {r["key"]: folder.result(r) for r in records if r["status"] == "ok"}
    lost = "its result file is missing or damaged; rerun the scan to score it again"
    failed = [r for r in records if r["status"] == "error"]
    failed += [{**r, "error": f"{r['path']}: {lost}"} for r in records if r["key"] in results and not results[r["key"]]]
    ok = sorted((r for r in records if results.get(r["key"])), key=lambda r: -r["peak_score"])
    rows = "".join(_video_row(run_dir, r, results[r["key"]]) for r in ok)
    failures = "".join(
        f'<tr class="failed"><td class="path">{html.escape(r["path"])}</td>'
        f"<td>{html.escape(r['error'] or '')}</td></tr>"
        for r in failed
    )
    failed_section = (
        f'<h2>Failed files ({len(failed)})</h2><table id="failed"><thead><tr><th>file</th><th>error</th></tr></thead>'
        f"<tbody>{failures}</tbody></table>"
        if failed
        else ""
    )
    page = _page(
        "callm scan report",
        f"""<div class="totals">{len(records)} videos, {len(failed)} failed, {sum(r["events"] > 0 for r in ok)} with
events, {sum(r["events"] for r in ok)} events in all. Score curves: blue = anomaly score, dashed grey = threshold,
dotted grey = the level an event lasts above once the threshold found it, orange = events.</div>
<table id="videos"><thead><tr><th>video</th><th>events</th><th class="sortable" data-order="desc">peak score</th>
<th>score over time</th><th>events (clips; the still: peak frame and track)</th></tr></thead>
<tbody>{rows}</tbody></table>
{failed_section}
<script>{SORT_SCRIPT}</script>""",
    )
    out = run_dir / REPORT
    write_text_atomic(out, page)
    return out


def _wall(seconds: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else "?"


def timeline_svg(events: list[dict[str, Any]], gaps: list[dict[str, Any]], first: float, last: float) -> str:
    """A camera's watch as a line in wall time: events as orange bars, outages (gaps) as grey ones."""
    span = max(last - first, 1e-6)

    def x(t: float) -> float:
        return (min(max(t, first), last) - first) / span * CURVE_WIDTH

    def bar(start: float, end: float, colour: str, css: str) -> str:
        return (
            f'<rect class="{css}" x="{x(start):.1f}" y="6" width="{max(2.0, x(end) - x(start)):.1f}" height="22" '
            f'fill="{colour}"/>'
        )

    bars = "".join(bar(g["started_at"], g["ended_at"] or last, "#bbb", "gap") for g in gaps)
    bars += "".join(bar(e["started_at"], e.get("closed_at") or last, "#ff9800", "event-span") for e in events)
    return (
        f'<svg class="curve" width="{CURVE_WIDTH}" height="34" xmlns="http://www.w3.org/2000/svg">'
        f'<line x1="0" x2="{CURVE_WIDTH}" y1="17" y2="17" stroke="#444"/>{bars}</svg>'
        f'<div class="totals">{_wall(first)} to {_wall(last)}</div>'
    )


def build_watch_report(folder: Path) -> Path:
    """Write ``folder/report.html`` for a ``callm watch`` folder: per camera, its timeline (events, outages) and
    each event's clip, times, peak score and any stage-2 verdict."""
    from callm.live.store import EventStore

    with EventStore(folder, readonly=True) as store:
        cameras = store.cameras()
        events = {c: store.events(c) for c in cameras}
        gaps = {c: store.gaps(c) for c in cameras}
        stats = store.latest_stats()
    rows = []
    for camera in cameras:
        times = [t for e in events[camera] for t in (e.get("started_at"), e.get("closed_at")) if t]
        times += [t for g in gaps[camera] for t in (g["started_at"], g["ended_at"]) if t]
        if camera in stats:
            times.append(stats[camera]["time"])
        first, last = (min(times), max(times)) if times else (0.0, 1.0)
        figures = "".join(
            _event_figure(
                folder, e, e.get("thumbnail"), e.get("clip"),
                f"{_wall(e.get('started_at'))} ({e['end_s'] - e['start_s']:.1f} s, {e['state']})",
            )
            for e in sorted(events[camera], key=lambda e: e.get("started_at") or 0)
        )  # fmt: skip
        health = stats.get(camera, {})
        rows.append(
            f'<tr class="camera"><td class="path">{html.escape(camera)}<br>{html.escape(health.get("status", ""))} '
            f"{html.escape(health.get('detail') or '')}</td><td>{len(events[camera])}</td>"
            f"<td>{timeline_svg(events[camera], gaps[camera], first, last)}</td>"
            f'<td><div class="events">{figures}</div></td></tr>'
        )
    page = _page(
        "callm watch report",
        f"""<div class="totals">{len(cameras)} camera(s), {sum(len(e) for e in events.values())} events. Timelines:
orange = events, grey = the camera was not watched (stream lost).</div>
<table id="cameras"><thead><tr><th>camera</th><th>events</th><th>timeline</th><th>events (clips)</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>""",
    )
    out = folder / REPORT
    write_text_atomic(out, page)
    return out
