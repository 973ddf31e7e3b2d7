"""The plain results every stage hands on, and their JSON: events, a video's detection, stage 2's and the VADor's
findings, and the time-stamped answer text. A leaf: it imports no stage, and every stage may import it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from callm.errors import CallmError
from callm.files import read_json
from callm.metrics import minmax
from callm.video import window_starts

# VAD-LLaMA's time-stamped answers (the same texts `callm instruct` ships as its timed answers).
TIMED_ABNORMAL = "Yes, there are anomalies {times}."
TIMED_NORMAL = "No, there are no anomalies."


@dataclass(frozen=True)
class Event:
    start_frame: int
    end_frame: int  # inclusive
    start_s: float
    end_s: float  # end of the last frame, so a one-frame event lasts 1 / fps
    peak_frame: int
    peak_score: float
    box: list[int]  # [x0, y0, x1, y1] in original-frame pixels: the worst region at the peak frame
    # The event's regions frame by frame, linked over time: each track a list of [frame, x0, y0, x1, y1, score]
    # (the track that matters most first); ``track`` is all their entries in frame order.
    tracks: list[list[list[float]]] = field(default_factory=list)

    @property
    def track(self) -> list[list[float]]:
        return sorted((entry for t in self.tracks for entry in t), key=lambda e: (e[0], -e[5]))

    def box_at(self, frame: int) -> list[int]:
        """Where to look at ``frame``: the main track's box at the nearest frame it has (the peak box without
        tracks), so frames just outside the event look where it began or ended."""
        if not self.tracks:
            return list(self.box)
        nearest = min(self.tracks[0], key=lambda entry: (abs(entry[0] - frame), -entry[5]))
        return [int(v) for v in nearest[1:5]]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "track": self.track}


def _event(data: dict[str, Any]) -> Event:
    """An Event from its JSON; files written before tracks existed have none."""
    return Event(**{f.name: data[f.name] for f in fields(Event) if f.name in data})


@dataclass(frozen=True)
class Explanation:
    """Stage 2's answer about one event."""

    verdict: str  # "anomaly" or "normal"
    text: str
    explicit: bool  # False when the answer held no yes/no and the verdict fell back to "anomaly"
    window_starts: list[int]  # the gated windows the model was shown
    frames: list[int]  # the frames sampled from them

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "explanation": self.text,
            "verdict_explicit": self.explicit,
            "vlm_windows": self.window_starts,
            "vlm_frames": self.frames,
        }


@dataclass(frozen=True)
class LTCResult:
    """What the VADor (+ Long-Term Context) found in a video: clip scores, its own events and its answer."""

    clips: list[tuple[int, int]]  # [start, end) frames of each clip
    clip_scores: list[float]  # abnormal probability per clip
    events: list[Event]
    answer: str  # VAD-LLaMA's time-stamped answer
    answer_source: str  # "template", or "llm" when a phase-3 adaptor wrote it
    threshold: float  # the clip score above which a clip is abnormal

    def to_dict(self) -> dict[str, Any]:
        return {
            "clips": [list(c) for c in self.clips],
            "clip_scores": [round(float(s), 4) for s in self.clip_scores],
            "threshold": round(self.threshold, 4),
            "events": [{**e.to_dict(), "found_by": "ltc"} for e in self.events],
            "answer": self.answer,
            "answer_source": self.answer_source,
        }


@dataclass
class Detection:
    """Everything stage 1 found in one video; ``to_dict`` is the documented JSON layout."""

    video: str
    fps: float
    num_frames: int
    frame_size: tuple[int, int]  # (height, width) of the original frames
    threshold: float
    psnr: np.ndarray  # per frame, before smoothing: the autoencoder's signal
    scores: np.ndarray  # calibrated, higher = more abnormal; the threshold applies to these
    events: list[Event]
    window_starts: list[int]
    gated_starts: list[int]
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    explanations: list[Explanation] | None = None  # one per event once stage 2 ran, None without it
    vlm_calls: int = 0
    ltc: LTCResult | None = None  # the VAD-LLaMA path's own finding, with --explainer ltc
    speed: np.ndarray | None = None  # per frame, dB: the optical-flow signal, when the weights use it
    fps_source: str = "container"  # see VideoInfo.fps_source; "assumed" means every time is a guess
    # Each frame's regions, (k, 5) [x0, y0, x1, y1, score]; kept in memory for evaluation, not written to the JSON
    # (the events' tracks hold them where it matters).
    regions: Sequence[np.ndarray] | None = None

    @property
    def scores_minmax(self) -> np.ndarray:
        """Per-video min-max normalised score, the benchmark protocol (needs the whole video)."""
        return minmax(self.scores)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Detection:
        """The Detection a ``to_dict`` (a ``detect --json`` file) was written from; KeyError etc. if it is not one."""
        num_frames = int(data["num_frames"])
        explanations = None
        if "vlm_calls" in data:  # stage 2 ran: every event carries its verdict
            explanations = [
                Explanation(e["verdict"], e["explanation"], e["verdict_explicit"], e["vlm_windows"], e["vlm_frames"])
                for e in data["events"]
            ]
        return cls(
            video=data["video"],
            fps=float(data["fps"]),
            num_frames=num_frames,
            frame_size=(int(data["frame_size"][0]), int(data["frame_size"][1])),
            threshold=float(data["threshold"]),
            psnr=np.asarray(data["psnr"], dtype=np.float64),
            speed=np.asarray(data["speed"], dtype=np.float64) if "speed" in data else None,
            fps_source=data.get("fps_source", "container"),
            scores=np.asarray(data["scores"], dtype=np.float64),
            events=[_event(event) for event in data["events"]],
            window_starts=window_starts(num_frames),
            gated_starts=[int(s) for s in data["gated_window_starts"]],
            seconds=float(data["seconds"]),
            settings=data.get("settings", {}),
            explanations=explanations,
            vlm_calls=int(data.get("vlm_calls", 0)),
        )

    def to_dict(self) -> dict[str, Any]:
        events = [e.to_dict() for e in self.events]
        if self.explanations is not None:
            for event, explanation in zip(events, self.explanations, strict=True):
                event.update(explanation.to_dict())
        for event in events:
            event["found_by"] = "stage1"
        result = {
            "video": self.video,
            "fps": self.fps,
            "fps_source": self.fps_source,
            "num_frames": self.num_frames,
            "frame_size": list(self.frame_size),
            "threshold": self.threshold,
            "scores": [round(float(s), 4) for s in self.scores],
            "scores_minmax": [round(float(s), 4) for s in self.scores_minmax],
            "psnr": [round(float(p), 3) for p in self.psnr],
            **({"speed": [round(float(v), 3) for v in self.speed]} if self.speed is not None else {}),
            "events": events,
            "windows_total": len(self.window_starts),
            "windows_gated": len(self.gated_starts),
            "gated_window_starts": self.gated_starts,
            "seconds": round(self.seconds, 3),
            "settings": self.settings,
        }
        if self.explanations is not None:
            result["vlm_calls"] = self.vlm_calls
        if self.ltc is not None:
            result["ltc"] = self.ltc.to_dict()
        return result


def read_detection(path: str | Path) -> Detection:
    """A ``callm detect --json`` file (or a scan's per-video JSON) back as a Detection."""
    try:
        return Detection.from_dict(read_json(path))
    except (KeyError, TypeError, ValueError, IndexError):
        raise CallmError(f"{path}: not a callm detect JSON file (written by callm detect --json)") from None


def format_seconds(seconds: float) -> str:
    """1.5 -> "1.5s", 2.0 -> "2s": tenths of a second, as VAD-LLaMA's answers give them."""
    return f"{round(seconds, 1):g}s"


def time_ranges_text(ranges: Sequence[tuple[float, float]]) -> str:
    """ "from 1.5s to 2s and from 3s to 3.5s": ranges in seconds, sorted and merged where they touch."""
    merged: list[list[float]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return " and ".join(f"from {format_seconds(start)} to {format_seconds(end)}" for start, end in merged)


def timed_answer(
    ranges: Sequence[tuple[float, float]], abnormal: str = TIMED_ABNORMAL, normal: str = TIMED_NORMAL
) -> str:
    """VAD-LLaMA's answer for a clip: "Yes, there are anomalies from 1.5s to 2s." or "No, there are no anomalies."

    ``ranges``: the abnormal (start, end) times in seconds, empty for a normal clip. ``abnormal`` and ``normal``
    are the answer templates (``callm instruct``'s, whose fields are ``{times}``, ``{caption}`` and ``{what}``).
    """
    if not ranges:
        return normal.format(caption="", what="", times="")
    return abnormal.format(caption="", what="", times=time_ranges_text(ranges))
