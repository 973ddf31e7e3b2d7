"""Frame-level ROC AUC and the ground-truth label formats."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from callm.errors import CallmError
from callm.metrics import minmax, read_frame_labels, roc_auc


def pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUC by definition: the chance a random abnormal frame outscores a random normal one, ties half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_roc_auc_hand_cases() -> None:
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(labels, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert roc_auc(labels, np.full(4, 0.3)) == 0.5
    # abnormal {0.5, 0.9} vs normal {0.1, 0.5}: three wins and one tie of four pairs
    assert roc_auc(np.array([0, 1, 0, 1]), np.array([0.1, 0.5, 0.5, 0.9])) == pytest.approx(0.875)
    assert roc_auc(np.array([1, 0, 0]), np.array([0.5, 0.7, 0.1])) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_pairwise_definition(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 120))
    labels = (rng.random(n) < 0.3).astype(int)
    labels[:2] = [0, 1]
    scores = rng.integers(0, 12, n) + labels * rng.random(n)  # many ties among integers
    assert roc_auc(labels, scores) == pytest.approx(pairwise_auc(labels, scores), abs=1e-12)


def test_roc_auc_needs_both_classes_and_equal_lengths() -> None:
    with pytest.raises(ValueError, match="both"):
        roc_auc(np.zeros(5), np.arange(5.0))
    with pytest.raises(ValueError, match="3 labels but 4 scores"):
        roc_auc(np.array([0, 1, 0]), np.arange(4.0))


def test_minmax_per_video() -> None:
    assert minmax(np.array([2.0, 4.0, 3.0])).tolist() == [0.0, 1.0, 0.5]
    assert minmax(np.full(3, 9.0)).tolist() == [0.0, 0.0, 0.0]


UCSD_M = """\
TestVideoFile = {};
TestVideoFile{end+1}.gt_frame = [3:5];
% a comment line without labels
TestVideoFile{end+1}.gt_frame = [5:10, 20:25];
TestVideoFile{end+1}.gt_frame = [1:2,8];
"""


def test_read_ucsd_m_ranges_are_one_based_and_inclusive(tmp_path: Path) -> None:
    path = tmp_path / "UCSDped2.m"
    path.write_text(UCSD_M)
    first, second, third = read_frame_labels(path, [8, 30, 8])
    assert first.tolist() == [0, 0, 1, 1, 1, 0, 0, 0]
    assert np.flatnonzero(second).tolist() == [*range(4, 10), *range(19, 25)]
    assert third.tolist() == [1, 1, 0, 0, 0, 0, 0, 1]


@pytest.mark.parametrize(
    ("lengths", "message"),
    [([8, 30], "ground truth for 3 videos but 2 test videos"), ([4, 30, 8], "video 1 marks frames 3:5 but has 4")],
)
def test_read_ucsd_m_refuses_labels_that_do_not_fit(tmp_path: Path, lengths: list[int], message: str) -> None:
    path = tmp_path / "gt.m"
    path.write_text(UCSD_M)
    with pytest.raises(CallmError, match=message):
        read_frame_labels(path, lengths)


def test_read_m_without_ground_truth(tmp_path: Path) -> None:
    path = tmp_path / "other.m"
    path.write_text("x = 1;\n")
    with pytest.raises(CallmError, match="not a UCSD ground-truth"):
        read_frame_labels(path, [10])


def test_read_npy_splits_by_video_length(tmp_path: Path) -> None:
    path = tmp_path / "labels.npy"
    np.save(path, np.array([0, 1, 1, 0, 0, 0, 2, 0, 1]))
    a, b = read_frame_labels(path, [4, 5])
    assert a.tolist() == [0, 1, 1, 0]
    assert b.tolist() == [0, 0, 1, 0, 1]  # any positive value is abnormal
    assert a.dtype == np.uint8


def test_read_npy_refuses_a_length_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "labels.npy"
    np.save(path, np.zeros(9))
    with pytest.raises(CallmError, match="9 labels but the 2 test videos have 10 frames"):
        read_frame_labels(path, [4, 6])


def test_read_labels_bad_files(tmp_path: Path) -> None:
    with pytest.raises(CallmError, match="labels file not found"):
        read_frame_labels(tmp_path / "missing.npy", [3])
    garbage = tmp_path / "labels.npy"
    garbage.write_bytes(b"not numpy at all")
    with pytest.raises(CallmError, match=r"not a readable \.npy"):
        read_frame_labels(garbage, [3])
    other = tmp_path / "labels.csv"
    other.write_text("0,1,0\n")
    with pytest.raises(CallmError, match="unknown labels format"):
        read_frame_labels(other, [3])
