"""Event clips: `detect --clips` writes each event as an H.264 mp4 with its tracked boxes drawn."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from helpers import INTRUDER
from typer.testing import CliRunner

from callm.cli import app
from callm.clips import CLIP_PAD_S, MAX_CLIP_S, clip_span, draw_boxes
from callm.results import Event
from callm.video import Mp4Writer


def decode(path: Path) -> tuple[str, list[np.ndarray]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.codec_context.name, [f.to_ndarray(format="rgb24") for f in container.decode(stream)]


def event(start: int, end: int, peak: int) -> Event:
    return Event(
        start_frame=start, end_frame=end, start_s=start / 10, end_s=(end + 1) / 10,
        peak_frame=peak, peak_score=1.0, box=[0, 0, 4, 4],
    )  # fmt: skip


def test_detect_clips_writes_each_event_with_its_padding_and_red_boxes_on_the_intruder(
    runner: CliRunner, weights_dir: Path, clip_dir: Path, tmp_path: Path
) -> None:
    out, folder = tmp_path / "d.json", tmp_path / "clips"
    video = clip_dir / "intruder.avi"
    args = ["detect", str(video), "-w", str(weights_dir), "--json", str(out), "--clips", str(folder)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["events"], "the intruder raised no event"
    files = [Path(p) for p in data["clips"]]
    assert [p.name for p in files] == [f"intruder-event{k + 1}.mp4" for k in range(len(data["events"]))]
    assert sorted(folder.iterdir()) == sorted(files)  # nothing half-written left beside them
    first = data["events"][0]
    codec, frames = decode(files[0])
    assert codec == "h264"
    pad = round(CLIP_PAD_S * data["fps"])
    span = range(max(0, first["start_frame"] - pad), min(data["num_frames"], first["end_frame"] + 1 + pad))
    assert len(frames) == len(span)
    assert frames[0].shape[:2] == (48, 64)
    # On a frame with a track entry the main track's box is drawn in red where the track says.
    entry = next(e for e in first["tracks"][0] if INTRUDER[0] <= e[0] < INTRUDER[1])
    frame = frames[entry[0] - span.start].astype(int)
    x0, y0, y1 = (int(entry[k]) for k in (1, 2, 4))
    edge = frame[max(y0, 1) : y1, x0]  # the box's left side (off the event's border)
    red = (edge[:, 0] > 150) & (edge[:, 1] < 100) & (edge[:, 2] < 100)
    assert red.mean() > 0.5, edge


def test_clip_span_pads_each_side_and_stops_at_the_video_ends() -> None:
    assert clip_span(event(20, 30, 25), fps=10, num_frames=100) == range(5, 46)
    assert clip_span(event(2, 30, 25), fps=10, num_frames=35) == range(0, 35)


def test_a_long_event_is_cut_to_the_longest_clip_around_its_peak() -> None:
    fps, longest = 10, round(MAX_CLIP_S * 10)
    span = clip_span(event(0, 5000, 3000), fps=fps, num_frames=6000)
    assert len(span) == longest and 3000 - longest // 2 == span.start
    near_end = clip_span(event(0, 5999, 5990), fps=fps, num_frames=6000)
    assert len(near_end) == longest and near_end.stop == 6000


def test_mp4_writer_pads_odd_sizes_and_refuses_a_frame_of_another_size(tmp_path: Path) -> None:
    path = tmp_path / "odd.mp4"
    rng = np.random.default_rng(0)
    with Mp4Writer(path, fps=12.5) as writer:
        for _ in range(5):
            writer.write(rng.integers(0, 255, (33, 47, 3), dtype=np.uint8))
        with pytest.raises(ValueError, match="frame"):
            writer.write(np.zeros((40, 40, 3), np.uint8))
    codec, frames = decode(path)
    assert codec == "h264" and len(frames) == 5 and frames[0].shape == (34, 48, 3)
    with av.open(str(path)) as container:
        assert float(container.streams.video[0].average_rate) == pytest.approx(12.5)


def test_draw_boxes_gives_each_track_its_colour_and_scales_the_box() -> None:
    frame = np.zeros((40, 40, 3), np.uint8)
    drawn = draw_boxes(frame, [(0, [2, 2, 10, 10]), (1, [10, 10, 18, 18])], scale=2.0)
    assert frame.max() == 0  # a copy
    assert tuple(drawn[10, 4]) == (255, 0, 0) and tuple(drawn[28, 20]) == (255, 165, 0)
