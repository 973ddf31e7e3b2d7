"""Ped2 as another camera would film it: zoomed in, tilted, mirrored, another exposure, sensor noise, H.264.

    python bench/reframe.py [--data ../shared/datasets/ped2] [--out ../bench-work/reframed] [--every N | --upsample N]

The project has no second camera. This writes Ped2 again as a different installation would record the same
walkway: a 170x230 part of the view, tilted 5 degrees and mirrored, at 480x640 (people 2.8x as large in pixels,
moving 2.8x as many pixels a frame), with another gamma and contrast, per-frame sensor noise, and H.264 mp4 files
instead of JPEG frames. Nothing in callm was chosen on it, so ``callm train-ae`` with its defaults, then the
Ped2 benches pointed at it, say whether stage 1 depends on Ped2's framing, scale, exposure or codec:

    callm train-ae ../bench-work/reframed/training/frames --out ../bench-work/reframed/weights
    python bench/stage1.py --weights ../bench-work/reframed/weights --data ../bench-work/reframed
    python bench/localisation.py --weights ../bench-work/reframed/weights --data ../bench-work/reframed
    python bench/false_alarms.py --data ../bench-work/reframed --work ../bench-work/reframed/false-alarms

``--every 2`` keeps every second frame, a 5 frames/s camera (many recorders store that rate), written to
``--out`` (pass another one, say ``../bench-work/reframed-5fps``). ``--upsample 3`` writes three frames for each
tenth of a second, a 30 frames/s camera: the two between each pair of Ped2 frames are made by optical-flow
interpolation (each pixel moved a third and two thirds of its way, from both frames, blended). Motion between
them is then linear and has interpolation's ghosts at occlusions; a real 30 frames/s camera has neither, so this
checks callm's frame-rate dependence, not a real fast camera. Their labels and masks are the nearer Ped2 frame's.

It is the same people and the same anomalies as Ped2, so it cannot say whether callm carries over to another
scene; only a real second camera can. Frame labels come from Ped2's pixel masks, warped the same way: a frame
is abnormal when any anomalous pixel is still in view (``reframed.m``, UCSD's format); the masks are written too.
Videos already written are kept, so a killed run continues.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from protocol import REPO

from callm.ae.motion import flow_estimator
from callm.console import make_progress
from callm.files import atomic_path
from callm.video import Mp4Writer, Video, find_videos, testing_videos

SIZE = (480, 640)  # output (height, width)
CROP_CENTRE = (200.0, 140.0)  # (x, y) in Ped2's 360x240 frame
CROP_WIDTH = 230.0  # source pixels across the output's width
TILT_DEGREES = 5.0
GAMMA, CONTRAST, BRIGHTNESS, NOISE = 0.8, 0.85, 20.0, 2.0
PED2_FPS = 10.0


def camera_matrix() -> np.ndarray:
    """The affine map from a Ped2 frame to the re-framed one: tilt and zoom about the crop's centre, mirrored."""
    height, width = SIZE
    matrix = cv2.getRotationMatrix2D(CROP_CENTRE, TILT_DEGREES, width / CROP_WIDTH)
    matrix[:, 2] += np.array([width / 2, height / 2]) - np.array(CROP_CENTRE)
    mirror = np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    return (mirror @ np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]


def reframe(frame: np.ndarray, matrix: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = SIZE
    warped = cv2.warpAffine(frame, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    exposed = 255.0 * (warped / 255.0) ** GAMMA * CONTRAST + BRIGHTNESS + rng.normal(0.0, NOISE, warped.shape)
    grey = np.clip(exposed, 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def between(first: np.ndarray, second: np.ndarray, parts: int) -> Iterator[np.ndarray]:
    """The ``parts - 1`` grey frames between two, at times 1/parts, 2/parts, ...: each pixel fetched from both
    frames along the optical flow (assumed constant over the interval), the two blended by nearness in time."""
    estimator = flow_estimator()
    forward = estimator.calc(first, second, None)  # where each pixel of ``first`` goes in ``second``
    backward = estimator.calc(second, first, None)
    height, width = first.shape
    grid = np.dstack(np.meshgrid(np.arange(width), np.arange(height))).astype(np.float32)
    for k in range(1, parts):
        t = k / parts
        from_first = cv2.remap(first, grid + t * backward, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        from_second = cv2.remap(
            second, grid + (1 - t) * forward, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        yield np.clip((1 - t) * from_first.astype(np.float32) + t * from_second, 0, 255).astype(np.uint8)


def source_frames(source: Path, every: int, upsample: int) -> Iterator[np.ndarray]:
    """The grey frames of ``source`` at the new rate: every ``every``-th, or ``upsample`` per source frame."""
    frames = itertools.islice(Video(source).frames(), 0, None, every)
    previous = None
    for frame in frames:
        if previous is not None and upsample > 1:
            yield from between(previous, frame, upsample)
        yield frame
        previous = frame


def source_index(frame: int, every: int, upsample: int) -> int:
    """The Ped2 frame nearest in time to frame ``frame`` at the new rate."""
    return frame * every if upsample == 1 else round(frame / upsample)


def write_video(source: Path, target: Path, matrix: np.ndarray, every: int, upsample: int, seed: int) -> None:
    """``source`` at the new rate, re-framed, into the mp4 ``target`` (written whole, then moved)."""
    rng = np.random.default_rng(seed)
    with atomic_path(target) as partial, Mp4Writer(partial, PED2_FPS * upsample / every) as writer:
        for frame in source_frames(source, every, upsample):
            writer.write(reframe(frame, matrix, rng))


def write_masks(source: Path, target: Path, matrix: np.ndarray, every: int, upsample: int) -> list[bool]:
    """Ped2's pixel masks at the new rate (the nearest Ped2 frame's), warped into the new view and numbered from
    000 again; per frame, whether any anomalous pixel is still in view."""
    height, width = SIZE
    target.mkdir(parents=True, exist_ok=True)
    masks = sorted(source.glob("*.png"))
    frames = (len(masks) - 1) // every + 1 if upsample == 1 else (len(masks) - 1) * upsample + 1
    in_view = []
    for index in range(frames):
        mask_file = masks[source_index(index, every, upsample)]
        mask = cv2.imread(str(mask_file), cv2.IMREAD_GRAYSCALE)
        warped = cv2.warpAffine(mask, matrix, (width, height), flags=cv2.INTER_NEAREST, borderValue=0)
        cv2.imwrite(str(target / f"{index:03d}.png"), warped)
        in_view.append(bool(warped.any()))
    return in_view


def ucsd_ranges(flags: list[bool]) -> str:
    """``[a:b, c:d]``, 1-based inclusive, as UCSD's ``gt_frame`` lines write them."""
    padded = np.concatenate([[0], np.asarray(flags, dtype=np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return ", ".join(f"{a + 1}:{b}" for a, b in zip(edges[::2], edges[1::2], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "ped2")
    parser.add_argument("--out", type=Path, default=REPO.parent / "bench-work" / "reframed")
    parser.add_argument("--every", type=int, default=1, help="keep every N-th frame (2: a 5 frames/s camera)")
    parser.add_argument("--upsample", type=int, default=1, help="N frames per Ped2 frame (3: a 30 frames/s camera)")
    args = parser.parse_args()
    if args.every < 1 or args.upsample < 1:
        parser.error("--every and --upsample must be 1 or more")
    if args.every > 1 and args.upsample > 1:
        parser.error("--every and --upsample cannot be combined")
    matrix = camera_matrix()
    training = find_videos([args.data / "training" / "frames"])
    testing = testing_videos(args.data)
    lines = []
    with make_progress() as progress:
        task = progress.add_task("re-framing Ped2", total=len(training) + len(testing))
        for index, source in enumerate([*training, *testing]):
            split = "training" if index < len(training) else "testing"
            target = args.out / split / "frames" / f"{source.name}.mp4"
            if not target.is_file():
                write_video(source, target, matrix, args.every, args.upsample, seed=index)
            if split == "testing":
                flags = write_masks(args.data / "testing" / "masks" / source.name, args.out / "testing" / "masks" /
                                    source.name, matrix, args.every, args.upsample)  # fmt: skip
                lines.append(f"TestVideoFile{{end+1}}.gt_frame = [{ucsd_ranges(flags)}];")
            progress.update(task, advance=1)
    (args.out / "reframed.m").write_text("TestVideoFile = {};\n" + "\n".join(lines) + "\n")
    print(
        f"{len(training)} training and {len(testing)} test videos re-framed at {SIZE[1]}x{SIZE[0]}, "
        f"{PED2_FPS * args.upsample / args.every:g} frames/s, in {args.out}"
    )


if __name__ == "__main__":
    main()
