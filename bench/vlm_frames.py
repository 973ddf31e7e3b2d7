"""How close stage 2's frames come to Video-LLaMA's own: resizing after decoding vs decord's resize while decoding.

    pip install decord   # not a callm dependency; its wheels exist for some Pythons only
    python bench/vlm_frames.py [--video examples/ped2_test04.mp4] [--size 224]

Video-LLaMA's loader reads videos with ``decord.VideoReader(path, height=S, width=S)``: FFmpeg scales each frame
while decoding. callm decodes at full size (OpenCV) and resizes after, so the pixels the ViT sees differ a
little. Prints the mean and largest absolute difference, in grey levels of 0-255 RGB, of several resizes
against decord's frames, and of the one ``callm.vlm.frames.FramePreprocessor`` uses.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from callm.video import Video

REPO = Path(__file__).resolve().parent.parent
RESIZES = {
    "PIL bilinear (callm)": lambda f, s: np.asarray(Image.fromarray(f).resize((s, s), Image.BILINEAR)),
    "PIL bicubic": lambda f, s: np.asarray(Image.fromarray(f).resize((s, s), Image.BICUBIC)),
    "OpenCV area": lambda f, s: cv2.resize(f, (s, s), interpolation=cv2.INTER_AREA),
    "OpenCV linear": lambda f, s: cv2.resize(f, (s, s), interpolation=cv2.INTER_LINEAR),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=REPO / "examples" / "ped2_test04.mp4")
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    try:
        import decord
    except ImportError:
        raise SystemExit("bench/vlm_frames.py needs decord: pip install decord") from None
    reader = decord.VideoReader(str(args.video), height=args.size, width=args.size)
    indices = list(range(0, len(reader), max(1, len(reader) // 10)))
    reference = reader.get_batch(indices).asnumpy().astype(np.float32)
    frames = Video(args.video).read_frames(indices, rgb=True)
    for name, resize in RESIZES.items():
        ours = np.stack([resize(frames[i], args.size) for i in indices]).astype(np.float32)
        difference = np.abs(ours - reference)
        print(
            f"{name:22s} mean {difference.mean():.2f}, max {difference.max():.0f} grey levels ({len(indices)} frames)"
        )


if __name__ == "__main__":
    main()
