"""`callm instruct`: captions + anomaly knowledge -> instruction-tuning data in Video-LLaMA's layout.

CALLM adapts Video-LLaMA to a site with pseudo-instructions: normal windows are answered with their BLIP-2
caption, abnormal ones with what is abnormal there. Knowledge of what is abnormal comes from one of: frame
labels (``.m`` / ``.npy`` as in ``callm eval``), a phrase file (video, optional time range, phrase), stage-1
events of a trained autoencoder (VAD-LLaMA's time-stamped answers), or nothing at all for normal footage.

The output is a JSON list in the Video-LLaMA / VideoChat instruction layout, one item per caption window::

    {"video": "../clips/cam1.mp4", "window": [16, 32], "fps": 25.0, "abnormal": true, "box": [x0, y0, x1, y1],
     "QA": [{"q": "Is anything abnormal ...?", "a": "Yes. This is abnormal. Someone is riding a bike."}]}

``video`` is relative to the output file's folder; ``window`` is [first frame, end) with the end excluded;
``box`` (stage-1 events only) is the event's box, which fine-tuning focuses on as ``detect --explain`` does.
"""

from __future__ import annotations

import csv
import functools
import math
import os
import re
import string
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rich.progress import Progress

from callm.errors import CallmError
from callm.files import write_json_atomic
from callm.metrics import read_frame_labels
from callm.results import Detection, time_ranges_text, timed_answer
from callm.video import Video, natural_key

AnswerStyle = Literal["describe", "timed"]
ANSWER_STYLES: tuple[AnswerStyle, ...] = ("describe", "timed")
ANSWER_NAMES = ("normal", "abnormal", "timed_normal", "timed_abnormal")
ANSWER_FIELDS = frozenset({"caption", "what", "times"})
PHRASE_COLUMNS = ("video", "start_s", "end_s", "phrase")
WHOLE_VIDEO_END = sys.maxsize  # the end frame of a phrase row without times: past any video's last frame


# ---------------------------------------------------------------------------------------------------------------
# Templates and answer text


def answer_style(name: str) -> AnswerStyle:
    for style in ANSWER_STYLES:
        if name == style:
            return style
    raise CallmError(f"answers must be one of {', '.join(ANSWER_STYLES)}, got {name!r}")


# "normal" not preceded by "ab": a question about normality, whose "yes" would mean the opposite of the others'.
ASKS_IF_NORMAL = re.compile(r"(?<!ab)normal\b", re.IGNORECASE)


@dataclass(frozen=True)
class InstructTemplates:
    questions: tuple[str, ...]
    answers: Mapping[str, str]  # ANSWER_NAMES -> format string over ANSWER_FIELDS


def read_templates(path: str | Path | None = None) -> InstructTemplates:
    """The question and answer templates of a TOML file; ``None`` reads the shipped defaults."""
    source = resources.files("callm.vlm").joinpath("instruct_templates.toml") if path is None else Path(path)
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CallmError(f"{source}: templates file not found") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CallmError(f"{source}: not a valid TOML file ({exc})") from None
    questions, answers = data.get("questions"), data.get("answers")
    if not isinstance(questions, list) or not questions or not all(isinstance(q, str) and q for q in questions):
        raise CallmError(f"{source}: `questions` must be a list of one or more non-empty strings")
    for question in questions:
        if ASKS_IF_NORMAL.search(question):
            raise CallmError(
                f"{source}: the question {question!r} asks whether something is normal; every question must ask "
                "whether something is abnormal, so that yes always means an anomaly"
            )
    if not isinstance(answers, dict) or sorted(answers) != sorted(ANSWER_NAMES):
        raise CallmError(f"{source}: [answers] must hold exactly {', '.join(ANSWER_NAMES)}")
    for name, text in answers.items():
        if not isinstance(text, str):
            raise CallmError(f"{source}: answers.{name} must be a string")
        try:
            fields = {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}
        except ValueError as exc:
            raise CallmError(f"{source}: answers.{name} is not a valid template ({exc})") from None
        if not fields <= ANSWER_FIELDS:
            unknown = ", ".join(sorted(fields - ANSWER_FIELDS))
            raise CallmError(f"{source}: answers.{name} uses {unknown}; the fields are {{caption}} {{what}} {{times}}")
    return InstructTemplates(tuple(questions), answers)


@functools.cache
def shipped_templates() -> InstructTemplates:
    return read_templates()


def as_sentence(text: str) -> str:
    """ "a man walks on the sidewalk" -> "A man walks on the sidewalk." (BLIP-2 captions are lower case)."""
    text = " ".join(text.split())
    if not text:
        return ""
    return text[0].upper() + text[1:] + ("" if text[-1] in ".!?" else ".")


# ---------------------------------------------------------------------------------------------------------------
# Anomaly knowledge: abnormal spans per video, in frames


@dataclass(frozen=True)
class Span:
    """Abnormal frames [start, end) of one video (end excluded), with what is known about them."""

    start: int
    end: int
    phrase: str | None = None
    box: list[int] | None = None


@dataclass(frozen=True)
class CaptionVideo:
    """A video as the captions file knows it: its name there and its frame rate."""

    name: str
    fps: float


def label_spans(videos: Sequence[CaptionVideo], labels_path: Path) -> dict[str, list[Span]]:
    """Runs of abnormal frames from a UCSD ``.m`` or ``.npy`` labels file, for the captioned videos in natural
    order of their names (the order ``callm eval`` pairs videos with labels)."""
    ordered = sorted(videos, key=lambda v: natural_key(Path(v.name).name))
    lengths = [Video(v.name, folder_fps=v.fps).info.num_frames for v in ordered]
    spans = {}
    for video, labels in zip(ordered, read_frame_labels(labels_path, lengths), strict=True):
        padded = np.concatenate([[0], labels.astype(np.int8), [0]])
        edges = np.flatnonzero(np.diff(padded))  # starts of runs of 1s, then their ends, alternating
        spans[video.name] = [Span(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]
    return spans


def _match_video(name: str, videos: Sequence[CaptionVideo], source: Path, line: int) -> CaptionVideo:
    """The captioned video a phrase file names: by its path as captioned, its file name, or its name's stem."""
    for key in (lambda v: v.name, lambda v: Path(v.name).name, lambda v: Path(v.name).stem):
        found = [v for v in videos if key(v) == name]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise CallmError(f"{source}: line {line}: {name!r} matches several captioned videos; give its path")
    raise CallmError(f"{source}: line {line}: no captioned video is called {name!r}")


def _seconds(value: str, source: Path, line: int) -> float | None:
    if not value.strip():
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise CallmError(f"{source}: line {line}: {value!r} is not a time in seconds") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise CallmError(f"{source}: line {line}: {value!r} is not a time in seconds")
    return seconds


def phrase_spans(videos: Sequence[CaptionVideo], phrases_path: Path) -> dict[str, list[Span]]:
    """Abnormal spans from a CSV file with the header ``video,start_s,end_s,phrase``.

    One row per abnormal video (times left empty: the whole video) or time range, each with the phrase that
    says what is abnormal, e.g. ``Test004,,,A cart drives on the walkway.``; videos without a row are normal.
    """
    try:
        with open(phrases_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = tuple(reader.fieldnames or ())
    except FileNotFoundError:
        raise CallmError(f"{phrases_path}: phrase file not found") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CallmError(f"{phrases_path}: not a readable CSV file ({exc})") from None
    if header != PHRASE_COLUMNS:
        raise CallmError(f"{phrases_path}: the first line must be the header {','.join(PHRASE_COLUMNS)}")
    spans: dict[str, list[Span]] = {}
    for line, row in enumerate(rows, start=2):
        if None in row.values() or not (row["video"] or "").strip() or not (row["phrase"] or "").strip():
            raise CallmError(f"{phrases_path}: line {line}: needs a video, optional start_s and end_s, and a phrase")
        video = _match_video(row["video"].strip(), videos, phrases_path, line)
        start_s, end_s = _seconds(row["start_s"], phrases_path, line), _seconds(row["end_s"], phrases_path, line)
        start = 0 if start_s is None else math.floor(start_s * video.fps)
        end = WHOLE_VIDEO_END if end_s is None else math.ceil(end_s * video.fps)
        if end <= start:
            raise CallmError(f"{phrases_path}: line {line}: end_s must come after start_s")
        spans.setdefault(video.name, []).append(Span(start, end, as_sentence(row["phrase"])))
    return spans


def stage1_spans(
    videos: Sequence[CaptionVideo], detect: Callable[[str], Detection], progress: Progress | None = None
) -> dict[str, list[Span]]:
    """Stage 1's events in each captioned video (``detect``: stage 1's detect), with their boxes."""
    spans = {}
    task = progress.add_task("stage 1", total=len(videos)) if progress else None
    for video in videos:
        detection = detect(video.name)
        spans[video.name] = [Span(e.start_frame, e.end_frame + 1, box=e.box) for e in detection.events]
        if progress is not None and task is not None:
            progress.update(task, advance=1)
    return spans


# ---------------------------------------------------------------------------------------------------------------
# Items


@dataclass(frozen=True)
class InstructSummary:
    videos: int
    windows: int
    normal: int
    abnormal: int
    dropped: int  # normal windows left out by the balance

    @property
    def written(self) -> int:
        return self.normal + self.abnormal


def caption_videos_of(captions: Sequence[Mapping[str, Any]]) -> list[CaptionVideo]:
    """The distinct videos of a captions file, in order of appearance."""
    seen: dict[str, CaptionVideo] = {}
    for record in captions:
        seen.setdefault(record["video"], CaptionVideo(record["video"], float(record["fps"])))
    return list(seen.values())


def window_answer(
    record: Mapping[str, Any], spans: Sequence[Span], style: AnswerStyle, templates: InstructTemplates
) -> tuple[str, list[Span]]:
    """The answer for one caption window, and the abnormal spans it overlaps."""
    start, end = record["window"]
    fps = float(record["fps"])
    hits = [s for s in spans if s.start < end and s.end > start]
    ranges = [(max(s.start, start) / fps, min(s.end, end) / fps) for s in hits]
    if style == "timed":
        return timed_answer(ranges, templates.answers["timed_abnormal"], templates.answers["timed_normal"]), hits
    caption = as_sentence(record["caption"])
    phrases = list(dict.fromkeys(s.phrase for s in hits if s.phrase))
    what = " ".join(phrases) if phrases else caption
    template = templates.answers["abnormal" if hits else "normal"]
    return template.format(caption=caption, what=what, times=time_ranges_text(ranges)), hits


def build_instructions(
    captions: Sequence[Mapping[str, Any]],
    spans: Mapping[str, Sequence[Span]],
    out: Path,
    style: AnswerStyle,
    templates: InstructTemplates,
    normal_per_abnormal: float | None = None,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], InstructSummary]:
    """One instruction item per caption window; with ``normal_per_abnormal``, normal items are randomly left
    out (seeded) until there are at most that many per abnormal one."""
    answered = [(r, *window_answer(r, spans.get(r["video"], ()), style, templates)) for r in captions]
    normal_ids = [i for i, (_, _, hits) in enumerate(answered) if not hits]
    abnormal = len(answered) - len(normal_ids)
    dropped: set[int] = set()
    if normal_per_abnormal is not None:
        if abnormal == 0:
            raise CallmError("--balance needs abnormal windows, and no captioned window is abnormal")
        surplus = max(0, len(normal_ids) - round(normal_per_abnormal * abnormal))
        dropped = set(np.random.default_rng(seed).choice(normal_ids, size=surplus, replace=False).tolist())
    home = out.parent.resolve()
    items = []
    for record, answer, hits in (a for i, a in enumerate(answered) if i not in dropped):
        item: dict[str, Any] = {
            "video": os.path.relpath(Path(record["video"]).resolve(), home),
            "window": list(record["window"]),
            "fps": record["fps"],
            "abnormal": bool(hits),
        }
        boxes = [s.box for s in hits if s.box is not None]
        if boxes:
            item["box"] = boxes[0]
        # The phrasings take turns over the written items.
        item["QA"] = [{"q": templates.questions[len(items) % len(templates.questions)], "a": answer}]
        items.append(item)
    summary = InstructSummary(
        videos=len({record["video"] for record in captions}),
        windows=len(answered),
        normal=len(normal_ids) - len(dropped),
        abnormal=abnormal,
        dropped=len(dropped),
    )
    return items, summary


def write_instructions(path: Path, items: Sequence[Mapping[str, Any]]) -> None:
    if not items:
        raise CallmError(f"{path}: nothing to write: the captions file holds no windows")
    write_json_atomic(path, list(items))
