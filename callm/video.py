"""Video input for every stage: open a file or a frame folder, stream grey frames, cut 16-frame windows.

Nothing here holds a whole video: frames are decoded one at a time and windows are cut from a
bounded deque, so a one-hour video scores in the memory of a few windows.
"""

from __future__ import annotations

import math
import os
import queue
import re
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from callm.errors import CallmError

# FFmpeg logs its own complaints about a damaged file to stderr; callm reports them as one line instead.
# Read when OpenCV first opens a video; set OPENCV_FFMPEG_LOGLEVEL yourself to see them.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

FRAME_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm", ".flv", ".ts", ".mts", ".3gp"}
)
ASSUMED_FPS = 25.0  # for a video file whose container carries no usable frame rate
DEFAULT_FOLDER_FPS = 10.0  # UCSD Ped1/Ped2 were recorded at about 10 frames per second
WINDOW = 16  # frames per clip, as in the CALLM paper

# Containers often round their frame count; a decoder that stops this far short of it hit a broken file.
_TRUNCATION_TOLERANCE = 0.02


def natural_key(text: str) -> list[int | str]:
    """Sort key that puts ``frame2`` before ``frame10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def is_frame_folder(path: Path) -> bool:
    return path.is_dir() and any(p.is_file() and p.suffix.lower() in FRAME_EXTENSIONS for p in path.iterdir())


def frame_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_EXTENSIONS]
    return sorted(files, key=lambda p: natural_key(p.name))


def convert_frame(frame: np.ndarray, size: tuple[int, int] | None = None, rgb: bool = False) -> np.ndarray:
    """A decoded BGR (or grey) frame as stage 1 or a viewer takes it: grey, or RGB with ``rgb``, resized to
    ``size`` = (height, width). Files and live streams go through this one function, so they score alike."""
    if frame.ndim == 2:
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB) if rgb else frame
    else:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB if rgb else cv2.COLOR_BGR2GRAY)
    if size is None or frame.shape[:2] == size:
        return frame
    return cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    fps: float
    num_frames: int  # from the container header for files (may be approximate), exact for frame folders
    width: int
    height: int
    is_frame_folder: bool
    # Where fps came from: "container", "folder" (a frame folder: the --fps given), or "assumed" (a container
    # without a usable rate: ASSUMED_FPS, which makes every time in the results a guess).
    fps_source: str = "container"


def check_fps(fps: float) -> float:
    if not (isinstance(fps, int | float) and math.isfinite(fps) and fps > 0):
        raise CallmError(f"--fps must be a positive number of frames per second, got {fps}")
    return fps


class Video:
    """A video file or a folder of frames, opened and checked, that streams grey frames on demand."""

    def __init__(self, path: str | Path, folder_fps: float = DEFAULT_FOLDER_FPS) -> None:
        check_fps(folder_fps)
        self.path = Path(path)
        if not self.path.exists():
            raise CallmError(f"{self.path}: no such file or directory")
        if self.path.is_dir():
            self._files = frame_files(self.path)
            if not self._files:
                raise CallmError(
                    f"{self.path}: no frames here ({', '.join(sorted(FRAME_EXTENSIONS))}); "
                    "pass a video file or a folder of frames"
                )
            first = self._read_image(self._files[0])
            self.info = VideoInfo(
                self.path, folder_fps, len(self._files), first.shape[1], first.shape[0], True, fps_source="folder"
            )
        else:
            self._files = []
            self.info = self._probe_file()

    def _probe_file(self) -> VideoInfo:
        cap = cv2.VideoCapture(str(self.path))
        try:
            if not cap.isOpened():
                raise CallmError(f"{self.path}: not a readable video (FFmpeg could not open it)")
            ok, frame = cap.read()
            if not ok or frame is None:
                raise CallmError(f"{self.path}: the video has no decodable frames")
            fps = cap.get(cv2.CAP_PROP_FPS)
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        finally:
            cap.release()
        source = "container"
        if not np.isfinite(fps) or fps <= 0 or fps > 1000:
            fps, source = ASSUMED_FPS, "assumed"  # some containers carry no rate; 25 is the commonest camera rate
        return VideoInfo(self.path, float(fps), max(count, 0), frame.shape[1], frame.shape[0], False, source)

    def _read_image(self, file: Path, colour: bool = False) -> np.ndarray:
        image = cv2.imread(str(file), cv2.IMREAD_COLOR if colour else cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise CallmError(f"{file}: not a readable image")
        return image

    def frames(self, size: tuple[int, int] | None = None, rgb: bool = False) -> Iterator[np.ndarray]:
        """Yield uint8 frames, grey (H, W) or with ``rgb`` (H, W, 3), resized to ``size`` = (height, width)."""

        if self.info.is_frame_folder:
            first = (self.info.height, self.info.width)
            for file in self._files:
                image = self._read_image(file, rgb)
                if image.shape[:2] != first:
                    raise CallmError(
                        f"{file}: {image.shape[1]}x{image.shape[0]} pixels, but the folder's first frame is "
                        f"{first[1]}x{first[0]}; a frame folder holds one video, all its frames one size"
                    )
                yield convert_frame(image, size, rgb)
            return
        cap = cv2.VideoCapture(str(self.path))
        decoded = 0
        try:
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                decoded += 1
                yield convert_frame(frame, size, rgb)
        finally:
            cap.release()
        expected = self.info.num_frames
        if expected and decoded < expected * (1 - _TRUNCATION_TOLERANCE) - 1:
            raise CallmError(f"{self.path}: truncated or damaged video: decoded {decoded} of {expected} frames")

    def read_frames(self, indices: Iterable[int], rgb: bool = True) -> dict[int, np.ndarray]:
        """The frames at ``indices`` at their own size, in one pass that stops after the last one wanted."""
        wanted = set(indices)
        found: dict[int, np.ndarray] = {}
        if not wanted:
            return found
        last = max(wanted)
        for index, frame in enumerate(self.frames(rgb=rgb)):
            if index in wanted:
                found[index] = frame
            if index == last:
                break
        return found


@dataclass(frozen=True)
class Window:
    start: int  # index of the window's first frame in the video
    frames: np.ndarray  # (length, H, W) uint8


def iter_windows(
    frames: Iterable[np.ndarray], step: int, length: int = WINDOW, source: str = "video"
) -> Iterator[Window]:
    """Cut windows of ``length`` frames every ``step`` frames; the final window always ends on the last frame.

    A window comes out as soon as its last frame arrives (a live stream waits for no more), and when the stream
    ends, one more ending on its last frame if the last window did not. Memory is one window. A stream shorter
    than ``length`` is an error: no window can be scored.
    """
    if step < 1:
        raise ValueError("step must be >= 1")
    buffer: deque[np.ndarray] = deque(maxlen=length)
    count = 0
    next_start = 0
    for frame in frames:
        buffer.append(frame)
        count += 1
        if count - length == next_start:
            yield Window(next_start, np.stack(buffer))
            next_start += step
    if count < length:
        raise CallmError(f"{source}: has {count} frames; at least {length} are needed for one window")
    if next_start - step != count - length:
        yield Window(count - length, np.stack(buffer))


def window_starts(num_frames: int) -> list[int]:
    """The tiling of a video into 16-frame windows: every 16 frames, the last one ending on the last frame."""
    if num_frames < WINDOW:
        return []
    starts = list(range(0, num_frames - WINDOW + 1, WINDOW))
    if starts[-1] != num_frames - WINDOW:
        starts.append(num_frames - WINDOW)
    return starts


def batched_windows(windows: Iterable[Window], size: int) -> Iterator[list[Window]]:
    """Consecutive lists of ``size`` windows (the last may be shorter): one model batch each."""
    batch: list[Window] = []
    for window in windows:
        batch.append(window)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


T = TypeVar("T")


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()


def prefetch(items: Iterable[T], depth: int) -> Iterator[T]:
    """``items``, produced on a background thread up to ``depth`` ahead.

    Decoding and optical flow run in OpenCV, which releases the GIL, so they overlap the model's forward
    passes on the caller's thread. The producer's errors are raised here; stopping early stops it.
    """
    slots: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, which raises it in its own thread
            put(_Failed(exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="callm-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()


def find_videos(paths: Sequence[str | Path]) -> list[Path]:
    """Expand user paths into videos: files as given (whatever their name, so a broken one is reported rather
    than skipped), frame folders, and both found under folders, recursively."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise CallmError(f"{path}: no such file or directory")
        if path.is_file():
            found.append(path)
            continue
        before = len(found)
        for folder in sorted([path, *(p for p in path.rglob("*") if p.is_dir())], key=lambda p: natural_key(str(p))):
            entries = list(folder.iterdir())
            if any(e.is_file() and e.suffix.lower() in FRAME_EXTENSIONS for e in entries):
                found.append(folder)
            found.extend(
                sorted(
                    (e for e in entries if e.is_file() and e.suffix.lower() in VIDEO_EXTENSIONS),
                    key=lambda p: natural_key(p.name),
                )
            )
        if len(found) == before:
            raise CallmError(f"{path}: no videos or frame folders found under this folder")
    return list(dict.fromkeys(found))  # a video reached twice (a path given twice, or nested) counts once


def testing_videos(root: Path) -> list[Path]:
    """Test videos of a dataset root: ``testing/frames/<video>/`` (the community layout) or the root's own."""
    for candidate in (root / "testing" / "frames", root / "testing", root):
        if candidate.is_dir():
            videos = [p for p in find_videos([candidate]) if p != candidate]
            if videos:
                return sorted(videos, key=lambda p: natural_key(p.name))
    raise CallmError(f"{root}: no test videos (expected testing/frames/<video>/ frame folders)")


class Mp4Writer:
    """RGB uint8 frames into an H.264 mp4 that browsers play: yuv420p, index at the front (``faststart``).

    Sizes must be even for yuv420p: an odd last row or column is repeated. Use as a context manager; the file is
    complete when it closes.
    """

    def __init__(self, path: str | Path, fps: float) -> None:
        import av  # only writing clips needs PyAV

        self._av = av
        self.container = av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"})
        self.fps = Fraction(check_fps(fps)).limit_denominator(1001)
        self.stream: Any = None
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        if self.stream is None:
            self.stream = self.container.add_stream("libx264", rate=self.fps)
            self.stream.width, self.stream.height = w + w % 2, h + h % 2
            self.stream.pix_fmt = "yuv420p"
            self.stream.options = {"preset": "veryfast", "crf": "23"}
        if (w % 2, h % 2) != (0, 0):
            frame = cv2.copyMakeBorder(frame, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)
        if frame.shape[:2] != (self.stream.height, self.stream.width):
            raise ValueError(f"frame {w}x{h} in a clip of {self.stream.width}x{self.stream.height}")
        packets = self.stream.encode(self._av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24"))
        self.container.mux(packets)
        self.frames += 1

    def close(self) -> None:
        if self.stream is not None:
            self.container.mux(self.stream.encode())  # flush the encoder's delayed frames
        self.container.close()

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
