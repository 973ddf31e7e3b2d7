"""Weak labels (list files, Normal folders) and frame labels (UCF-Crime's temporal annotation, UCSD)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from callm.errors import CallmError
from callm.vador.features import VideoFeatures
from callm.vador.labels import frame_labels, is_normal_path, read_temporal_annotation, read_video_list, weak_labels


def entry(video: str, num_frames: int = 64) -> VideoFeatures:
    clips = [(s, s + 16) for s in range(0, num_frames - 15, 16)]
    return VideoFeatures(Path(video).name, video, 30.0, num_frames, clips, Path("/features"))


UCF = [
    entry("/data/UCF/Abuse/Abuse001_x264.mp4"),
    entry("/data/UCF/Arson/Arson011_x264.mp4", 200),
    entry("/data/UCF/Training_Normal_Videos_Anomaly/Normal_Videos001_x264.mp4"),
    entry("/data/UCF/Testing_Normal_Videos_Anomaly/Normal_Videos_003_x264.mp4"),
]


def test_normal_folder_convention() -> None:
    assert is_normal_path("/x/Training_Normal_Videos_Anomaly/a.mp4")
    assert is_normal_path("/x/Normal/a.mp4") and is_normal_path("/x/y/Normal_Videos001_x264.mp4")
    assert not is_normal_path("/x/Abnormal/a.mp4") and not is_normal_path("/x/Abuse/Abuse001_x264.mp4")


def test_anomaly_train_list_labels_by_folder(tmp_path: Path) -> None:
    listing = tmp_path / "Anomaly_Train.txt"
    listing.write_text(
        "Abuse/Abuse001_x264.mp4\nTraining_Normal_Videos_Anomaly/Normal_Videos001_x264.mp4\nBurglary/Burglary005_x264.mp4\n"
    )
    found = weak_labels(UCF, listing)
    assert [v.name for v in found.videos] == ["Abuse001_x264.mp4", "Normal_Videos001_x264.mp4"]
    assert found.labels == [1, 0] and found.unmatched == 1  # Burglary005 has no features


def test_list_labels_win_and_frame_folders_match_video_names(tmp_path: Path) -> None:
    videos = [entry("/ped2/training/frames/01"), entry("/ped2/testing/frames/01"), entry("/ped2/testing/frames/02")]
    listing = tmp_path / "split.txt"
    listing.write_text("# the weakly supervised split\ntraining/frames/01 0\ntesting/frames/01.avi abnormal\n\n")
    found = weak_labels(videos, listing)
    assert [v.video for v in found.videos] == ["/ped2/training/frames/01", "/ped2/testing/frames/01"]
    assert found.labels == [0, 1]


def test_a_list_entry_naming_two_videos_is_refused(tmp_path: Path) -> None:
    videos = [entry("/ped2/training/frames/01"), entry("/ped2/testing/frames/01")]
    listing = tmp_path / "split.txt"
    listing.write_text("01 1\ntraining/frames/01 0\n")
    with pytest.raises(CallmError, match=r"split.txt:1: 01 matches 2 videos"):
        weak_labels(videos, listing)


def test_bad_list_lines_and_one_kind_only_are_refused(tmp_path: Path) -> None:
    listing = tmp_path / "bad.txt"
    listing.write_text("a.mp4 maybe\n")
    with pytest.raises(CallmError, match=r"bad.txt:1: expected"):
        read_video_list(listing)
    with pytest.raises(CallmError, match="all 2 training videos are abnormal"):
        weak_labels(UCF[:2], None)


def test_folder_names_label_every_video_without_a_list() -> None:
    found = weak_labels(UCF, None)
    assert found.labels == [1, 1, 0, 0]


def test_temporal_annotation(tmp_path: Path) -> None:
    annotation = tmp_path / "Temporal_Anomaly_Annotation.txt"
    annotation.write_text(
        "Arson011_x264.mp4  Arson  150  160  180  210\n"
        "Abuse001_x264.mp4  Abuse  10  20  -1  -1\n"
        "Normal_Videos_003_x264.mp4  Normal  -1  -1  -1  -1\n"
    )
    assert read_temporal_annotation(annotation)["arson011_x264"] == [(150, 160), (180, 210)]
    labelled = dict((v.name, labels) for v, labels in frame_labels(annotation, UCF))
    assert set(labelled) == {"Arson011_x264.mp4", "Abuse001_x264.mp4", "Normal_Videos_003_x264.mp4"}
    arson = labelled["Arson011_x264.mp4"]
    assert np.flatnonzero(arson).tolist() == [*range(149, 160), *range(179, 200)]  # 1-based, cut at the end
    assert np.flatnonzero(labelled["Abuse001_x264.mp4"]).tolist() == list(range(9, 20))
    assert not labelled["Normal_Videos_003_x264.mp4"].any()


def test_temporal_annotation_refuses_bad_lines_and_ranges(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("Arson011_x264.mp4 Arson 150\n")
    with pytest.raises(CallmError, match=r"bad.txt:1: expected"):
        frame_labels(bad, UCF)
    outside = tmp_path / "outside.txt"
    outside.write_text("Abuse001_x264.mp4 Abuse 100 120 -1 -1\n")
    with pytest.raises(CallmError, match=r"marks frames 100\.\.120 but has 64 frames"):
        frame_labels(outside, UCF)


def test_ucsd_labels_cover_the_videos_in_order(tmp_path: Path) -> None:
    gt = tmp_path / "gt.m"
    gt.write_text("TestVideoFile{end+1}.gt_frame = [3:5];\nTestVideoFile{end+1}.gt_frame = [];\n")
    videos = [entry("/t/01", 32), entry("/t/02", 48)]
    labelled = frame_labels(gt, videos)
    assert np.flatnonzero(labelled[0][1]).tolist() == [2, 3, 4] and not labelled[1][1].any()
