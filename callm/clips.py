"""What people look at: each event as a short mp4 with its tracked boxes drawn, and a thumbnail of its peak.

A clip runs from ``CLIP_PAD_S`` before the event to ``CLIP_PAD_S`` after it, so the viewer sees what led up to it
and how it ended; an event longer than ``MAX_CLIP_S`` is cut to that length around its peak. Every track has its
colour (the main one red); the time of each frame is written in a corner; frames inside the event carry a red
border, the padding none. All of a video's clips and thumbnails come from one decoding pass.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from callm.results import Detection, Event
from callm.video import Mp4Writer, Video

CLIP_PAD_S = 1.5
MAX_CLIP_S = 60.0
THUMB_WIDTH = 320
TRACK_RGB = ((255, 0, 0), (255, 165, 0), (0, 190, 255), (190, 60, 255))  # the main track first


def clip_span(event: Event, fps: float, num_frames: int, pad_s: float = CLIP_PAD_S) -> range:
    """The frames of an event's clip: the event padded by ``pad_s`` each side, at most ``MAX_CLIP_S`` long."""
    pad = round(pad_s * fps)
    first, end = max(0, event.start_frame - pad), min(num_frames, event.end_frame + 1 + pad)
    longest = max(1, round(MAX_CLIP_S * fps))
    if end - first > longest:
        first = min(max(first, event.peak_frame - longest // 2), end - longest)
        end = first + longest
    return range(first, end)


def boxes_at(event: Event) -> dict[int, list[tuple[int, Sequence[float]]]]:
    """Frame -> (track number, [x0, y0, x1, y1]) of every track entry; an event without tracks has its peak box."""
    found: dict[int, list[tuple[int, Sequence[float]]]] = {}
    if not event.tracks:
        return {event.peak_frame: [(0, event.box)]}
    for number, track in enumerate(event.tracks):
        for entry in track:
            found.setdefault(int(entry[0]), []).append((number, entry[1:5]))
    return found


def _thickness(frame: np.ndarray) -> int:
    return max(1, round(min(frame.shape[:2]) / 150))


def draw_boxes(frame: np.ndarray, boxes: Sequence[tuple[int, Sequence[float]]], scale: float = 1.0) -> np.ndarray:
    """An RGB frame with each (track number, box) drawn in its track's colour (a copy); ``scale``: the frame's
    size over the size the boxes were measured at."""
    drawn = np.ascontiguousarray(frame.copy())
    for number, box in boxes:
        x0, y0, x1, y1 = (round(v * scale) for v in box)
        cv2.rectangle(drawn, (x0, y0), (x1, y1), TRACK_RGB[number % len(TRACK_RGB)], _thickness(frame) + 1)
    return drawn


def annotate(frame: np.ndarray, boxes: Sequence[tuple[int, Sequence[float]]], text: str, in_event: bool) -> np.ndarray:
    """A clip's frame: the boxes drawn, ``text`` (its time) in a corner, and a red border while the event lasts."""
    drawn = draw_boxes(frame, boxes)
    scale = max(0.35, min(drawn.shape[:2]) / 600)
    origin = (4, 4 + round(22 * scale))
    cv2.putText(drawn, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(drawn, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    if in_event:
        edge = _thickness(drawn) + 1
        cv2.rectangle(drawn, (0, 0), (drawn.shape[1] - 1, drawn.shape[0] - 1), TRACK_RGB[0], edge)
    return drawn


def clock(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes)}:{secs:05.2f}"


def write_event_clips(detection: Detection, paths: Sequence[Path], pad_s: float = CLIP_PAD_S) -> list[bytes]:
    """Write event k's clip to ``paths[k]`` (complete files, written as the video is decoded once); returns each
    event's thumbnail, made in the same pass (a clip always holds its event's peak)."""
    if len(paths) != len(detection.events):
        raise ValueError(f"{len(paths)} paths for {len(detection.events)} events")
    spans = [clip_span(e, detection.fps, detection.num_frames, pad_s) for e in detection.events]
    if not spans:
        return []
    thumbs = [b""] * len(spans)
    boxes = [boxes_at(e) for e in detection.events]
    writers: dict[int, Mp4Writer] = {}
    last = max(s.stop for s in spans) - 1
    try:
        for index, frame in enumerate(Video(detection.video, folder_fps=detection.fps).frames(rgb=True)):
            for k, span in enumerate(spans):
                if index not in span:
                    continue
                if k not in writers:
                    writers[k] = Mp4Writer(paths[k], detection.fps)
                event = detection.events[k]
                if index == event.peak_frame:
                    thumbs[k] = thumbnail(frame, event)
                in_event = event.start_frame <= index <= event.end_frame
                text = f"{clock(index / detection.fps)}  event {k + 1}"
                writers[k].write(annotate(frame, boxes[k].get(index, []), text, in_event))
                if index == span.stop - 1:
                    writers.pop(k).close()
            if index >= last:
                break
    finally:
        for writer in writers.values():
            writer.close()
    return thumbs


def event_clips(detection: Detection, pad_s: float = CLIP_PAD_S) -> tuple[list[bytes], list[bytes]]:
    """Each event's clip as mp4 bytes and its thumbnail as JPEG bytes, from one pass over the video (for a scan
    worker, which only computes and sends results back)."""
    with tempfile.TemporaryDirectory(prefix="callm-clips-") as folder:
        paths = [Path(folder) / f"{k}.mp4" for k in range(len(detection.events))]
        thumbs = write_event_clips(detection, paths, pad_s)
        return [p.read_bytes() if p.is_file() else b"" for p in paths], thumbs


def thumbnail(frame: np.ndarray, event: Event) -> bytes:
    """JPEG of an event's peak frame (RGB) with its boxes there and the path of its main track (the centres of
    its boxes over the event)."""
    # Drawn after resizing (small frames are enlarged), so the lines stay sharp.
    scale = THUMB_WIDTH / frame.shape[1]
    resized = cv2.resize(
        frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    )
    image = draw_boxes(resized, boxes_at(event).get(event.peak_frame, [(0, event.box)]), scale)
    if event.tracks:
        path = [[(e[1] + e[3]) / 2 * scale, (e[2] + e[4]) / 2 * scale] for e in event.tracks[0]]
        cv2.polylines(image, [np.array(path, np.int32)], False, TRACK_RGB[0], _thickness(image), cv2.LINE_AA)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return encoded.tobytes() if ok else b""
