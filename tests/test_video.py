"""Video input: files and frame folders, natural order, discovery, and 16-frame windows cut from a stream."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest
from synthetic import make_frames, write_frame_folder, write_video

from callm.errors import CallmError
from callm.video import WINDOW, Video, find_videos, iter_windows, natural_key, prefetch


def numbered_frames(n: int) -> list[np.ndarray]:
    """Frames whose every pixel is their own index, so a window's content says where it came from."""
    return [np.full((4, 6), i, dtype=np.uint8) for i in range(n)]


def expected_starts(n: int, step: int) -> list[int]:
    starts = list(range(0, n - WINDOW + 1, step))
    return starts if starts[-1] == n - WINDOW else [*starts, n - WINDOW]


# --- windows -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", [1, 3, 8, 16])
@pytest.mark.parametrize("n", [16, 17, 40, 48])
def test_iter_windows_starts_and_content(n: int, step: int) -> None:
    windows = list(iter_windows(numbered_frames(n), step=step))
    assert [w.start for w in windows] == expected_starts(n, step)
    for w in windows:
        assert w.frames.shape == (WINDOW, 4, 6)
        assert w.frames[:, 0, 0].tolist() == list(range(w.start, w.start + WINDOW))
    assert windows[-1].start + WINDOW == n  # the last one ends on the last frame


def test_iter_windows_known_tilings() -> None:
    assert [w.start for w in iter_windows(numbered_frames(50), step=16)] == [0, 16, 32, 34]
    assert [w.start for w in iter_windows(numbered_frames(20), step=8)] == [0, 4]
    assert [w.start for w in iter_windows(numbered_frames(16), step=5)] == [0]


def test_iter_windows_too_short_names_the_minimum() -> None:
    with pytest.raises(CallmError, match=r"has 15 frames; at least 16 are needed") as info:
        list(iter_windows(numbered_frames(15), step=1, source="clip.avi"))
    assert str(info.value).startswith("clip.avi:")
    with pytest.raises(CallmError, match="has 0 frames"):
        list(iter_windows([], step=1))


def test_iter_windows_rejects_bad_step() -> None:
    with pytest.raises(ValueError, match="step"):
        list(iter_windows(numbered_frames(20), step=0))


@pytest.mark.parametrize("step", [1, 8])
def test_iter_windows_streams_lazily(step: int) -> None:
    """Memory is windows, not the video: an endless stream yields each window as soon as its last frame is in
    (what a live camera's latency rests on)."""
    pulled = 0

    def endless():
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield np.full((2, 2), i % 256, dtype=np.uint8)

    windows = iter_windows(endless(), step=step)
    assert pulled == 0  # a generator: nothing is read before the first window is asked for
    first = next(windows)
    assert first.start == 0 and pulled == WINDOW
    third = next(itertools.islice(windows, 1, None))
    assert third.start == 2 * step and pulled == WINDOW + 2 * step


# --- frame folders, discovery --------------------------------------------------------------------------------


def test_natural_key_orders_numbers_by_value() -> None:
    names = ["frame10.png", "frame2.png", "Frame1.png", "frame100.png", "frame20.png"]
    assert sorted(names, key=natural_key) == ["Frame1.png", "frame2.png", "frame10.png", "frame20.png", "frame100.png"]


def test_frame_folder_streams_in_natural_order(tmp_path: Path) -> None:
    frames = np.stack([np.full((8, 10), 10 * i, dtype=np.uint8) for i in range(12)])
    folder = write_frame_folder(tmp_path / "clip", frames)  # 0.png ... 11.png: 2.png must come before 10.png
    (folder / "notes.txt").write_text("not a frame")
    video = Video(folder, folder_fps=7.5)
    assert video.info.is_frame_folder
    assert video.info.num_frames == 12
    assert (video.info.width, video.info.height) == (10, 8)
    assert video.info.fps == 7.5
    assert [int(f[0, 0]) for f in video.frames()] == [10 * i for i in range(12)]


def test_frame_folder_default_fps_and_resize(tmp_path: Path) -> None:
    folder = write_frame_folder(tmp_path / "clip", make_frames(20))
    video = Video(folder)
    assert video.info.fps == 10.0  # UCSD rate for frame folders
    frames = list(video.frames(size=(32, 16)))
    assert len(frames) == 20
    assert all(f.shape == (32, 16) and f.dtype == np.uint8 for f in frames)


def test_find_videos_recurses_in_natural_order(tmp_path: Path) -> None:
    frames = make_frames(16)
    (tmp_path / "b").mkdir()
    write_video(tmp_path / "b" / "cam10.avi", frames)
    write_video(tmp_path / "b" / "cam2.avi", frames)
    (tmp_path / "a" / "deep").mkdir(parents=True)
    write_video(tmp_path / "a" / "deep" / "x.mp4", frames)
    write_frame_folder(tmp_path / "a" / "frames", frames[:3])
    (tmp_path / "a" / "readme.txt").write_text("ignored")
    (tmp_path / "empty").mkdir()
    lone = write_video(tmp_path / "lone.avi", frames)

    found = find_videos([tmp_path / "a", tmp_path / "b", lone])
    assert found == [
        tmp_path / "a" / "deep" / "x.mp4",
        tmp_path / "a" / "frames",
        tmp_path / "b" / "cam2.avi",
        tmp_path / "b" / "cam10.avi",
        lone,
    ]


def test_find_videos_errors(tmp_path: Path) -> None:
    with pytest.raises(CallmError, match="no such file or directory"):
        find_videos([tmp_path / "missing"])
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("x")
    with pytest.raises(CallmError, match="no videos or frame folders"):
        find_videos([tmp_path / "empty"])


# --- video files ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".avi", ".mp4"])
def test_video_file_fps_and_frames(tmp_path: Path, suffix: str) -> None:
    frames = make_frames(48)
    path = write_video(tmp_path / f"clip{suffix}", frames, fps=12.5)
    video = Video(path, folder_fps=99.0)  # the container's rate wins over the frame-folder option
    assert not video.info.is_frame_folder
    assert video.info.fps == pytest.approx(12.5)
    assert video.info.num_frames == 48
    assert (video.info.height, video.info.width) == (48, 64)
    decoded = list(video.frames())
    assert len(decoded) == 48
    assert decoded[0].shape == (48, 64) and decoded[0].ndim == 2
    # Lossy codecs, but the decoded frames are the ones written, in order.
    errors = [np.abs(d.astype(int) - f.astype(int)).mean() for d, f in zip(decoded, frames, strict=True)]
    assert max(errors) < 8
    assert np.abs(decoded[0].astype(int) - frames[20].astype(int)).mean() > max(errors)
    assert all(f.shape == (32, 32) for f in video.frames(size=(32, 32)))


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(CallmError, match="no such file or directory"):
        Video(tmp_path / "nope.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CallmError, match="no frames here"):
        Video(tmp_path / "empty")


def test_text_file_named_mp4(tmp_path: Path) -> None:
    path = tmp_path / "fake.mp4"
    path.write_text("this is not a video\n")
    with pytest.raises(CallmError, match="not a readable video"):
        Video(path)


@pytest.mark.parametrize("suffix", [".avi", ".mp4"])
def test_video_with_no_frames(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"empty{suffix}"
    codec = "mp4v" if suffix == ".mp4" else "MJPG"
    cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), 10.0, (64, 48)).release()
    assert path.is_file()
    with pytest.raises(CallmError, match=r"not a readable video|no decodable frames"):
        Video(path)


def test_truncated_avi_is_reported_when_streamed(tmp_path: Path) -> None:
    """A cut MJPG .avi still opens and decodes its first part; the shortfall against its header is an error."""
    full = write_video(tmp_path / "full.avi", make_frames(48))
    cut = tmp_path / "cut.avi"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    video = Video(cut)  # opens: the header survives
    assert video.info.num_frames == 48
    with pytest.raises(CallmError, match=r"truncated or damaged video: decoded \d+ of 48 frames"):
        list(video.frames())


def test_truncated_mp4_does_not_open(tmp_path: Path) -> None:
    full = write_video(tmp_path / "full.mp4", make_frames(48))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])  # mp4v keeps its index at the end
    with pytest.raises(CallmError, match="not a readable video"):
        Video(cut)


def test_unreadable_frame_in_folder(tmp_path: Path) -> None:
    folder = write_frame_folder(tmp_path / "clip", make_frames(3))
    (folder / "1.png").write_bytes(b"garbage")
    video = Video(folder)  # the first frame is fine
    with pytest.raises(CallmError, match=r"1\.png: not a readable image"):
        list(video.frames())


def test_scoring_a_long_video_holds_a_few_windows_of_frames_not_the_video(weights_dir: Path, tmp_path: Path) -> None:
    # Decoded 240x320 frames are 77 kB, resized to the tiny model's 32x32 1 kB: a video held in memory, at either
    # size, would grow the peak by at least 1 kB per extra frame. Per-frame results take a few hundred bytes.
    import tracemalloc

    from callm.cascade import DetectOptions, Stage1Recipe

    stage1 = Stage1Recipe(str(weights_dir), DetectOptions(), "cpu", "fp32").build()
    peaks = {}
    for n in (120, 600):
        path = write_video(tmp_path / f"long{n}.avi", make_frames(n, size=(240, 320), seed=n))
        tracemalloc.start()
        detection = stage1.detect(path)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert detection.num_frames == n
    assert (peaks[600] - peaks[120]) / 480 < 600, peaks


# --- prefetch: decoding and flow on their own thread --------------------------------------------------------


def test_prefetch_keeps_order_and_runs_ahead_on_another_thread() -> None:
    import threading

    producers: set[str] = set()

    def numbers():
        for i in range(50):
            producers.add(threading.current_thread().name)
            yield i

    assert list(prefetch(numbers(), depth=4)) == list(range(50))
    assert producers == {"callm-prefetch"}


def test_prefetch_raises_the_producers_error_here() -> None:
    def failing():
        yield 1
        raise CallmError("frame 2 is damaged")

    stream = prefetch(failing(), depth=2)
    assert next(stream) == 1
    with pytest.raises(CallmError, match="frame 2 is damaged"):
        next(stream)


def test_prefetch_stopped_early_stops_and_closes_the_producer() -> None:
    import threading

    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    stream = prefetch(endless(), depth=3)
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()  # the consumer stops: the producer must not run on, nor keep its source open
    assert closed.wait(2.0)
    assert not any(t.name == "callm-prefetch" for t in threading.enumerate())


def test_a_video_without_a_frame_rate_says_its_rate_is_assumed(
    runner, weights_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from callm.cli import app

    path = write_video(tmp_path / "norate.avi", make_frames(40))
    assert Video(path).info.fps_source == "container" and Video(path).info.fps == 10.0
    real = cv2.VideoCapture

    class NoRate:
        """OpenCV's capture of a container that carries no frame rate."""

        def __init__(self, *args):
            self.capture = real(*args)

        def get(self, prop):
            return 0.0 if prop == cv2.CAP_PROP_FPS else self.capture.get(prop)

        def __getattr__(self, name):
            return getattr(self.capture, name)

    monkeypatch.setattr("callm.video.cv2.VideoCapture", NoRate)
    assert (Video(path).info.fps, Video(path).info.fps_source) == (25.0, "assumed")
    out = tmp_path / "d.json"
    result = runner.invoke(app, ["detect", str(path), "-w", str(weights_dir), "--json", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "no frame rate: 25 fps assumed" in " ".join(result.stdout.split())
    data = json.loads(out.read_text())
    assert data["fps"] == 25.0 and data["fps_source"] == "assumed"
    folder = write_frame_folder(tmp_path / "frames", make_frames(20))
    assert (Video(folder, folder_fps=7).info.fps, Video(folder).info.fps_source) == (7, "folder")
