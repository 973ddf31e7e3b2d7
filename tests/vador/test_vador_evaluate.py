"""AUC_O / AUC_A, clip scores spread over frames, events and the time-stamped answer."""

from __future__ import annotations

import numpy as np
import pytest

from callm.errors import CallmError
from callm.vador.evaluate import auc_overall_and_abnormal
from callm.vador.online import clip_events, frame_scores, template_answer

CLIPS = [(0, 16), (16, 32), (24, 40)]  # the last clip ends on the last frame and overlaps the one before


def test_auc_over_all_videos_and_over_abnormal_ones() -> None:
    labels = [np.array([0, 0, 1, 1]), np.array([0, 0])]
    scores = [np.array([0.1, 0.2, 0.8, 0.9]), np.array([0.85, 0.3])]
    result = auc_overall_and_abnormal(labels, scores)
    # 0.8 beats 3 of the 4 normal frames (not 0.85), 0.9 beats all 4: 7 of 8 pairs.
    assert result["auc_o"] == pytest.approx(7 / 8)
    assert result["auc_a"] == pytest.approx(1.0)  # the normal video's false alarm does not count


def test_auc_needs_both_kinds_and_auc_a_needs_normal_frames_in_abnormal_videos() -> None:
    with pytest.raises(CallmError, match="all one kind"):
        auc_overall_and_abnormal([np.zeros(3)], [np.arange(3.0)])
    result = auc_overall_and_abnormal([np.ones(2), np.zeros(2)], [np.ones(2), np.zeros(2)])
    assert result["auc_o"] == 1.0 and result["auc_a"] is None


def test_each_frame_takes_the_first_clip_that_holds_it() -> None:
    scores = frame_scores(np.array([0.1, 0.5, 0.9]), CLIPS, 40)
    assert scores[:16].tolist() == [0.1] * 16
    assert scores[16:32].tolist() == [0.5] * 16
    assert scores[32:].tolist() == [0.9] * 8


def test_events_and_answer() -> None:
    events = clip_events(np.array([0.1, 0.9, 0.2]), CLIPS, 40, fps=10.0, frame_size=(48, 64), threshold=0.5)
    assert [(e.start_frame, e.end_frame) for e in events] == [(16, 31)]
    assert events[0].box == [0, 0, 64, 48]
    assert template_answer(events) == "Yes, there are anomalies from 1.6s to 3.2s."
    two = clip_events(np.array([0.7, 0.1, 0.6]), CLIPS, 40, fps=8.0, frame_size=(48, 64), threshold=0.5)
    assert template_answer(two) == "Yes, there are anomalies from 0s to 2s and from 4s to 5s."
    assert template_answer([]) == "No, there are no anomalies."
