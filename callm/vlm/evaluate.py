"""`callm eval-vlm`: video-level accuracy of stage 2's yes/no answers on a labelled set (CALLM's Table II metric).

Each video is shown to the model whole (``frames`` sampled uniformly over it, as Video-LLaMA samples a video) with
one question; the first yes or no of the answer is its verdict, compared with the video's label; an answer with
neither is "unanswered", counted apart and never as right. Running it on
the zero-shot and on the fine-tuned config measures what fine-tuning bought.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import Progress

from callm.errors import CallmError
from callm.metrics import default_labels, read_frame_labels
from callm.video import DEFAULT_FOLDER_FPS, Video, testing_videos
from callm.vlm.explain import Explainer
from callm.vlm.frames import iter_clips, sample_indices

LABEL_WORDS = {"0": False, "normal": False, "1": True, "abnormal": True}
UNANSWERED = "unanswered"


@dataclass(frozen=True)
class LabelledVideo:
    path: Path
    abnormal: bool


def read_video_list(path: Path) -> list[LabelledVideo]:
    """Lines ``VIDEO LABEL`` (label 0 / 1 or normal / abnormal; ``#`` starts a comment); relative video paths are
    relative to the list's folder."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CallmError(f"{path}: cannot read the video list ({exc})") from None
    videos = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.rsplit(maxsplit=1)
        if len(parts) != 2 or parts[1].lower() not in LABEL_WORDS:
            raise CallmError(f"{path}: line {number}: expected 'VIDEO LABEL' with a label of 0, 1, normal or abnormal")
        video = Path(parts[0]).expanduser()
        videos.append(
            LabelledVideo(video if video.is_absolute() else path.parent / video, LABEL_WORDS[parts[1].lower()])
        )
    if not videos:
        raise CallmError(f"{path}: lists no videos")
    return videos


def labelled_dataset(root: Path, labels: Path | None, folder_fps: float) -> list[LabelledVideo]:
    """The test videos of a dataset root (as ``callm eval`` finds them); a video is abnormal if any frame is."""
    videos = testing_videos(root)
    lengths = [Video(v, folder_fps=folder_fps).info.num_frames for v in videos]
    frame_labels = read_frame_labels(labels or default_labels(root), lengths)
    return [LabelledVideo(v, bool(f.any())) for v, f in zip(videos, frame_labels, strict=True)]


def evaluate_vlm(
    explainer: Explainer,
    videos: Sequence[LabelledVideo],
    question: str | None = None,
    folder_fps: float = DEFAULT_FOLDER_FPS,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Ask about every video; accuracy overall and per class, and every answer."""
    rows = []
    task = progress.add_task("videos", total=len(videos)) if progress else None
    for labelled in videos:
        video = Video(labelled.path, folder_fps=folder_fps)
        indices = sample_indices(video.info.num_frames, explainer.config.frames)
        [(_, frames)] = list(iter_clips(video, [indices]))
        answer = explainer.explain_sampled(frames, [i / video.info.fps for i in indices], question=question)
        # An answer without yes or no answers nothing: it is neither right nor wrong, and is counted apart.
        verdict = answer.verdict if answer.explicit else UNANSWERED
        rows.append(
            {
                "video": str(labelled.path),
                "abnormal": labelled.abnormal,
                "verdict": verdict,
                "correct": None if verdict == UNANSWERED else (verdict == "anomaly") == labelled.abnormal,
                "answer": answer.text,
            }
        )
        if progress is not None and task is not None:
            progress.update(task, advance=1)

    def accuracy(subset: list[dict[str, Any]]) -> float | None:
        """Right answers among all the videos: an unanswered one counts against, as a wrong one does."""
        return sum(r["correct"] is True for r in subset) / len(subset) if subset else None

    def answered_accuracy(subset: list[dict[str, Any]]) -> float | None:
        answered = [r for r in subset if r["correct"] is not None]
        return sum(r["correct"] for r in answered) / len(answered) if answered else None

    abnormal = [r for r in rows if r["abnormal"]]
    normal = [r for r in rows if not r["abnormal"]]
    return {
        "accuracy": accuracy(rows),
        "videos": len(rows),
        "correct": sum(r["correct"] is True for r in rows),
        "unanswered": sum(r["correct"] is None for r in rows),
        "accuracy_of_answered": answered_accuracy(rows),
        "abnormal_videos": len(abnormal),
        "abnormal_accuracy": accuracy(abnormal),
        "normal_videos": len(normal),
        "normal_accuracy": accuracy(normal),
        "question": question or explainer.config.question,
        "video_llama": explainer.config.video_llama,
        "llm": explainer.config.llm,
        "per_video": rows,
    }
