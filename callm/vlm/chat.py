"""A conversation with the stage-2 model about one video, grounded in stage 1's events (``callm chat``).

```python
from callm.cascade import DetectOptions, Stage1Recipe
from callm.vlm.chat import Chat
from callm.vlm.explain import Explainer

detection = Stage1Recipe("weights/ped2", DetectOptions(), "auto", "bf16").build().detect("clip.mp4")
chat = Chat(Explainer.from_config("vlm.toml"), detection)  # asks about event 1 (or the whole video if none)
chat.ask("What is unusual here?", on_text=print)
chat.select_range(12.5, 20.0)
chat.ask("And what happens next?")
chat.save("chat.json")
```

**Where the video tokens go.** Video-LLaMA's demo sends one ``<Video><ImageHere></Video>`` message, in the first
user turn, and every later question as plain text. callm keeps that layout and extends it to a user who moves
between clips (``/event``, ``/video``, ``/at``): the turn that first asks about a clip opens with that clip's video
message ("The video contains 8 frames sampled at ... seconds."), and only the clip asked about now keeps its video
tokens. Earlier clips' messages stay in the history as text, their placeholder replaced by a note that the clip is
no longer shown, so earlier answers still say what they were about. Why not keep every clip's tokens: Video-LLaMA
was fine-tuned on conversations with exactly one video, and several clips of one scene in a prompt, with nothing
tying tokens to questions, are inputs it has never seen; one clip per prompt also keeps the single placeholder
``VideoLLM.embed_prompt`` splices.

**Context overflow.** As in Video-LLaMA's demo, the prompt must leave room for ``max_new_tokens`` within the
LLM's context. The demo cuts the embedded prompt from the front (losing BOS, the system text, maybe the video);
callm leaves out whole turns, oldest first, and the current clip's video message moves to the oldest kept turn
that asks about it, so the current question's video tokens are never dropped. The history itself keeps every
turn (``/save`` writes them all).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from callm.errors import CallmError
from callm.files import read_json, write_json_atomic
from callm.results import Detection
from callm.video import Video
from callm.vlm.explain import Explainer
from callm.vlm.frames import call_frames, sample_indices, stage2_calls, window_indices
from callm.vlm.prompt import PLACEHOLDER, video_message

EARLIER_CLIP = "an earlier clip, no longer shown"
# "12.5-20s", "12.5 s - 20 s", "3-4"
TIME_RANGE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*s?\s*-\s*(\d+(?:\.\d*)?)\s*s?\s*")


@dataclass(frozen=True)
class View:
    """What the model is shown for a question: frames of the video, their times, and the region to focus on."""

    label: str  # what the user picked: "event 2", "whole video", "12.5-20 s"
    frames: tuple[int, ...]
    timestamps: tuple[float, ...]  # seconds, one per frame
    # Stage 1's [x0, y0, x1, y1] at each frame (an event's track), else None for whole frames.
    boxes: tuple[tuple[int, ...], ...] | None = None

    def describe(self) -> str:
        times = f"{self.timestamps[0]:.1f}-{self.timestamps[-1]:.1f} s"
        if self.boxes is None:
            return f"{self.label}: {len(self.frames)} frames sampled at {times}"
        return f"{self.label}: {len(self.frames)} frames sampled at {times}, each focused on its box in the track"

    def to_dict(self) -> dict[str, Any]:
        boxes = None if self.boxes is None else [list(b) for b in self.boxes]
        return {"label": self.label, "frames": list(self.frames), "timestamps": list(self.timestamps), "boxes": boxes}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> View:
        frames = tuple(data["frames"])
        # Transcripts written before tracks hold one "box" for every frame.
        boxes = data["boxes"] if "boxes" in data else None if data.get("box") is None else [data["box"]] * len(frames)
        return cls(data["label"], frames, tuple(data["timestamps"]), None if boxes is None else _tuples(boxes))


def _tuples(boxes: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(v) for v in box) for box in boxes)


@dataclass(frozen=True)
class Turn:
    """One question and its answer, with what the model was shown and sent."""

    question: str
    answer: str
    view: View
    prompt: str  # the text sent, with <ImageHere> where the view's video tokens went
    turns_left_out: int = 0  # how many of the oldest turns the prompt left out to fit the LLM's context

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "answer": self.answer,
            "view": self.view.to_dict(),
            "prompt": self.prompt,
            "turns_left_out": self.turns_left_out,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Turn:
        return cls(
            data["question"], data["answer"], View.from_dict(data["view"]), data["prompt"], data["turns_left_out"]
        )


class Chat:
    """Questions about one video, each answered with the conversation so far in the model's own template.

    ``max_length`` (default: the LLM's context length) bounds prompt, video tokens and answer together.
    ``history``: turns to continue from, e.g. ``read_turns`` of a saved transcript.
    """

    def __init__(
        self,
        explainer: Explainer,
        detection: Detection,
        history: Sequence[Turn] = (),
        max_length: int | None = None,
    ) -> None:
        self.explainer = explainer
        self.detection = detection
        self.history = list(history)
        self.max_length = max_length or explainer.model.context_length
        self._encoded: tuple[View, torch.Tensor] | None = None  # the current view's video tokens, made once
        self.view = self.select_event(1) if detection.events else self.select_video()

    def select_event(self, number: int) -> View:
        """Ask about event ``number`` (1-based, as tables list them): the frames ``detect --explain`` shows."""
        events = self.detection.events
        if not events:
            raise CallmError("this video has no events: ask about the whole video (/video) or a time range (/at A-B)")
        if not 1 <= number <= len(events):
            raise CallmError(f"no event {number}: the events are numbered 1 to {len(events)} (/events lists them)")
        # The event's gated windows, sampled as Stage2.explain samples them, so follow-ups see the same frames.
        _, starts = stage2_calls(self.detection, "event")[number - 1]
        frames = call_frames(starts, self.explainer.config.frames)
        event = events[number - 1]
        return self._select(f"event {number}", frames, [event.box_at(i) for i in frames])

    def select_video(self) -> View:
        """Ask about the whole video, sampled uniformly as Video-LLaMA samples a video."""
        return self._select("whole video", sample_indices(self.detection.num_frames, self.explainer.config.frames))

    def select_range(self, start_s: float, end_s: float) -> View:
        """Ask about the frames from ``start_s`` up to ``end_s`` seconds (cut at the video's end)."""
        fps, num_frames = self.detection.fps, self.detection.num_frames
        duration = num_frames / fps
        if end_s <= start_s:
            raise CallmError(f"the range {start_s:g}-{end_s:g} s ends before it starts")
        if start_s >= duration:
            raise CallmError(f"the range starts at {start_s:g} s, but the video lasts {duration:g} s")
        # Frame i shows the time i / fps; the tolerance keeps 12.5 s at 10 fps on frame 125.
        first, end = (min(math.ceil(t * fps - 1e-6), num_frames) for t in (start_s, end_s))
        if end <= first:
            raise CallmError(f"no frame starts within {start_s:g}-{end_s:g} s (one every {1 / fps:g} s)")
        label = f"{start_s:g}-{min(end_s, duration):g} s"
        return self._select(label, window_indices(first, end, self.explainer.config.frames))

    def _select(self, label: str, frames: Sequence[int], boxes: Sequence[Sequence[int]] | None = None) -> View:
        timestamps = tuple(i / self.detection.fps for i in frames)
        self.view = View(label, tuple(frames), timestamps, None if boxes is None else _tuples(boxes))
        return self.view

    def reset(self) -> None:
        """Forget the conversation; the view stays."""
        self.history.clear()

    @torch.no_grad()
    def ask(self, question: str, on_text: Callable[[str], None] | None = None) -> Turn:
        """Answer ``question`` about the current view; ``on_text`` receives the answer as it is generated."""
        question = question.strip()
        if not question:
            raise CallmError("ask a question")
        video_tokens = self._video_tokens()
        prompt, inputs_embeds, left_out = self._fit(question, video_tokens)
        answer = self.explainer.model.reply(inputs_embeds, self.explainer.generation, on_text)
        turn = Turn(question, answer, self.view, prompt, left_out)
        self.history.append(turn)
        return turn

    def _video_tokens(self) -> torch.Tensor:
        if self._encoded is None or self._encoded[0] != self.view:
            wanted = self.view.frames
            found = Video(self.detection.video, folder_fps=self.detection.fps).read_frames(wanted)
            if len(found) < len(set(wanted)):
                raise CallmError(
                    f"{self.detection.video}: ends before frame {max(wanted)}, which {self.view.label} needs"
                )
            pixels = self.explainer.pixels(np.stack([found[i] for i in wanted]), self.view.boxes)
            self._encoded = (self.view, self.explainer.model.encode_video(pixels))
        return self._encoded[1]

    def _fit(self, question: str, video_tokens: torch.Tensor) -> tuple[str, torch.Tensor, int]:
        """The prompt with as many of the latest turns as fit, its embeddings, and how many turns it left out."""
        room = self.max_length - self.explainer.generation.max_new_tokens
        for left_out in range(len(self.history) + 1):
            prompt = self._prompt(self.history[left_out:], question)
            inputs_embeds = self.explainer.model.embed_prompt(prompt, video_tokens)
            if inputs_embeds.shape[1] <= room:
                return prompt, inputs_embeds, left_out
        raise CallmError(
            f"the question and its clip take {inputs_embeds.shape[1]} tokens, but only {room} of the "
            f"{self.max_length} the model attends to are left beside the answer: ask a shorter question"
        )

    def _prompt(self, turns: Sequence[Turn], question: str) -> str:
        """The text sent for ``question`` about the current view after ``turns``, in the model's template."""
        views = [turn.view for turn in turns] + [self.view]
        current_from = len(views) - 1  # the first of the turns about the current view, up to this question
        while current_from > 0 and views[current_from - 1] == self.view:
            current_from -= 1
        messages = []
        for index, (view, text) in enumerate(zip(views, [t.question for t in turns] + [question], strict=True)):
            if index > 0 and views[index - 1] == view:
                messages.append(text)
            else:
                content = PLACEHOLDER if index == current_from else EARLIER_CLIP
                messages.append(video_message(view.timestamps, text, content))
        replies = [turn.answer for turn in turns]
        template, system = self.explainer.model.template, self.explainer.config.system_text
        return template.conversation(list(zip(messages[:-1], replies, strict=True)), messages[-1], system)

    def transcript(self) -> dict[str, Any]:
        """The conversation as JSON data: the video, its events, and every turn; ``read_turns`` reads it back."""
        return {
            "video": self.detection.video,
            "fps": self.detection.fps,
            "template": self.explainer.model.template.name,
            "max_length": self.max_length,
            "events": [event.to_dict() for event in self.detection.events],
            "turns": [turn.to_dict() for turn in self.history],
        }

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.transcript())


def read_turns(path: str | Path) -> list[Turn]:
    """The turns of a transcript ``Chat.save`` wrote, to continue the conversation."""
    path = Path(path)
    data = read_json(path)
    try:
        return [Turn.from_dict(turn) for turn in data["turns"]]
    except (KeyError, TypeError):
        raise CallmError(f"{path}: not a callm chat transcript (written by /save)") from None


def parse_range(text: str) -> tuple[float, float]:
    """``"12.5-20s"`` -> (12.5, 20.0): a time range in seconds, as ``/at`` takes it."""
    match = TIME_RANGE.fullmatch(text)
    if match is None:
        raise CallmError(f"not a time range: {text!r}; give seconds as A-B, e.g. /at 12.5-20s")
    return float(match[1]), float(match[2])
