"""Labels in the layouts anomaly benchmarks ship: weak (one per video) for training, per frame for evaluation.

Weak labels come from a list file or from folder names:

* a list file has one video per line, a path relative to the dataset (UCF-Crime's ``Anomaly_Train.txt``:
  ``Abuse/Abuse001_x264.mp4``, ``Training_Normal_Videos_Anomaly/Normal_Videos001_x264.mp4``), optionally followed
  by a label (``0``/``normal`` or ``1``/``abnormal``); ``#`` starts a comment. A line matches the video whose
  path ends with the same components (the file suffix ignored, so frame folders match video names). Only listed
  videos are used.
* without a label, UCF-Crime's convention decides: a video is normal when a component of its path is named
  ``Normal``, starts with ``Normal_`` or holds ``_Normal_`` (``Training_Normal_Videos_Anomaly``,
  ``Normal_Videos001_x264``); every other video is abnormal.

Frame labels for evaluation: UCSD ``.m`` and ``.npy`` (see ``callm.metrics.read_frame_labels``), or UCF-Crime's
``Temporal_Anomaly_Annotation.txt`` (``Arson011_x264.mp4  Arson  150  420  680  1267``: up to two anomalous
frame ranges, 1-based and inclusive as in the benchmark's MATLAB evaluation, ``-1 -1`` for none).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from callm.errors import CallmError
from callm.metrics import read_frame_labels
from callm.vador.features import VideoFeatures

Labelled = list[tuple[VideoFeatures, np.ndarray]]  # test videos with their 0/1 frame labels
NORMAL_PART = re.compile(r"(^|_)normal(_|$)", re.IGNORECASE)
LABEL_WORDS = {"0": 0, "normal": 0, "1": 1, "abnormal": 1, "anomaly": 1}


def is_normal_path(path: str | Path) -> bool:
    return any(NORMAL_PART.search(part) for part in Path(path).parts)


def _components(path: str | Path) -> tuple[str, ...]:
    """Path components with the file suffix dropped from the last, lower-cased for matching."""
    parts = [p for p in Path(path).parts if p not in ("/", ".")]
    if parts:
        parts[-1] = parts[-1].rsplit(".", 1)[0] if "." in parts[-1] else parts[-1]
    return tuple(p.lower() for p in parts)


@dataclass(frozen=True)
class ListEntry:
    path: str
    label: int | None  # None: decided by the Normal-folder convention
    line: int


def read_video_list(path: str | Path) -> list[ListEntry]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise CallmError(f"{path}: list file not found") from None
    except IsADirectoryError:
        raise CallmError(f"{path}: a folder; pass a list file (one video per line)") from None
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) > 2 or (len(fields) == 2 and fields[1].lower() not in LABEL_WORDS):
            raise CallmError(f"{path}:{number}: expected 'VIDEO [0|1|normal|abnormal]', got {raw.strip()!r}")
        label = LABEL_WORDS[fields[1].lower()] if len(fields) == 2 else None
        entries.append(ListEntry(fields[0], label, number))
    if not entries:
        raise CallmError(f"{path}: no videos listed")
    return entries


def match_list(
    entries: Sequence[ListEntry], videos: Sequence[VideoFeatures], source: Path
) -> list[VideoFeatures | None]:
    """The video each entry names (by trailing path components), None where none has features; refuses an
    entry that names two."""
    components = [(_components(v.video), v) for v in videos]
    matched: list[VideoFeatures | None] = []
    for entry in entries:
        wanted = _components(entry.path)
        hits = [v for parts, v in components if parts[-len(wanted) :] == wanted]
        if len(hits) > 1:
            raise CallmError(
                f"{source}:{entry.line}: {entry.path} matches {len(hits)} videos ({hits[0].video}, "
                f"{hits[1].video}); give more of its path"
            )
        matched.append(hits[0] if hits else None)
    return matched


@dataclass(frozen=True)
class WeakLabels:
    videos: list[VideoFeatures]
    labels: list[int]  # 1 = the video contains an anomaly
    unmatched: int  # list entries with no features


def weak_labels(videos: Sequence[VideoFeatures], list_path: Path | None) -> WeakLabels:
    """Training videos and their labels: those a list file names, or all videos by their folder names."""
    if list_path is None:
        chosen, labels, unmatched = list(videos), [0 if is_normal_path(v.video) else 1 for v in videos], 0
    else:
        entries = read_video_list(list_path)
        found = [(e, v) for e, v in zip(entries, match_list(entries, videos, list_path), strict=True) if v]
        chosen = [v for _, v in found]
        labels = [e.label if e.label is not None else int(not is_normal_path(e.path)) for e, _ in found]
        unmatched = len(entries) - len(chosen)
        if not chosen:
            raise CallmError(f"{list_path}: none of its {len(entries)} videos has features here")
    if len({v.video for v in chosen}) != len(chosen):
        raise CallmError(f"{list_path}: a video is listed twice")
    if len(set(labels)) < 2:
        kind = "abnormal" if labels[0] else "normal"
        hint = "" if list_path else " (no --labels given, so only folders named Normal mark normal videos)"
        raise CallmError(f"all {len(chosen)} training videos are {kind}: MIL needs both kinds{hint}")
    return WeakLabels(chosen, labels, unmatched)


def read_temporal_annotation(path: Path) -> dict[str, list[tuple[int, int]]]:
    """UCF-Crime's ``Temporal_Anomaly_Annotation.txt``: video name (no suffix) -> 1-based inclusive ranges."""
    annotation: dict[str, list[tuple[int, int]]] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        fields = raw.split()
        if not fields:
            continue
        try:
            bounds = [int(v) for v in fields[2:]]
        except ValueError:
            bounds = []
        if len(fields) < 4 or not bounds or len(bounds) % 2:
            raise CallmError(f"{path}:{number}: expected 'VIDEO CLASS START END [START END]', got {raw.strip()!r}")
        ranges = [(lo, hi) for lo, hi in zip(bounds[::2], bounds[1::2], strict=True) if lo >= 0 and hi >= 0]
        annotation[_components(fields[0])[-1]] = ranges
    if not annotation:
        raise CallmError(f"{path}: no annotation lines")
    return annotation


def frame_labels(path: Path, videos: Sequence[VideoFeatures]) -> Labelled:
    """Test videos with their 0/1 frame labels.

    ``.m`` / ``.npy`` label all ``videos`` in order; a UCF-Crime annotation (any other file, usually ``.txt``)
    labels the videos it names, matched by file name. An annotated range running past a video's end (UCF-Crime
    has a few) is cut at the last frame.
    """
    if not path.is_file():
        raise CallmError(f"{path}: labels file not found")
    if path.suffix.lower() in (".m", ".npy"):
        per_video = read_frame_labels(path, [v.num_frames for v in videos])
        return list(zip(videos, per_video, strict=True))
    annotation = read_temporal_annotation(path)
    labelled: Labelled = []
    for video in videos:
        ranges = annotation.get(_components(video.video)[-1])
        if ranges is None:
            continue
        labels = np.zeros(video.num_frames, dtype=np.uint8)
        for lo, hi in ranges:
            if lo < 1 or lo > hi or lo > video.num_frames:
                raise CallmError(f"{path}: {video.name} marks frames {lo}..{hi} but has {video.num_frames} frames")
            labels[lo - 1 : hi] = 1
        labelled.append((video, labels))
    if not labelled:
        raise CallmError(f"{path}: names none of the {len(videos)} videos with features")
    return labelled
