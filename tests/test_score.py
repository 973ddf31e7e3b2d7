"""Stage-1 scoring: PSNR math, error maps, worst-patch MSE, boxes, and which window scores which frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from callm.ae.model import AEConfig
from callm.ae.score import (
    CENTRE,
    ErrorMeasure,
    FrameScorer,
    error_box,
    error_maps,
    frame_mse,
    psnr_from_mse,
    scored_range,
    to_model_range,
)
from callm.errors import CallmError
from callm.video import WINDOW

# --- PSNR and pixel range ------------------------------------------------------------------------------------


def test_to_model_range_maps_uint8_to_minus_one_one() -> None:
    out = to_model_range(np.array([0, 255, 51], dtype=np.uint8))
    assert out.dtype == torch.float32
    assert out.tolist() == pytest.approx([-1.0, 1.0, 51 / 127.5 - 1.0])


def test_psnr_from_mse_hand_values() -> None:
    # Frames live in [-1, 1] but PSNR is of [0, 1] images: an MSE of m in [-1, 1] is m / 4 there, peak 1.
    black, white = -torch.ones(4, 4), torch.ones(4, 4)
    assert psnr_from_mse(((white - black) ** 2).mean()) == pytest.approx(0.0)  # 0 vs 1 images: MSE 1, 0 dB
    grey, lighter = torch.zeros(4, 4), torch.full((4, 4), 0.2)  # 0.5 vs 0.6 in [0, 1]: MSE 0.01, 20 dB
    assert psnr_from_mse(((lighter - grey) ** 2).mean()) == pytest.approx(20.0, abs=1e-5)
    values = psnr_from_mse(np.array([4e-2, 4e-4, 1.0]))
    assert values == pytest.approx([20.0, 40.0, 10 * np.log10(4.0)])
    assert np.isfinite(psnr_from_mse(0.0)) and psnr_from_mse(0.0) == pytest.approx(100.0)  # clamped, not inf
    assert psnr_from_mse(np.array([1e-3, 1e-2]))[0] > psnr_from_mse(np.array([1e-3, 1e-2]))[1]


# --- error maps ----------------------------------------------------------------------------------------------


def test_frame_error_is_pixelwise_squared_difference() -> None:
    clips = torch.zeros(2, 4, 3, 5)
    recon = torch.full((2, 4, 3, 5), 0.5)
    recon[1, 2, 1, 1] = -1.0
    maps = error_maps(clips, recon, "frame")
    assert maps.shape == (2, 4, 3, 5)
    assert maps[0].unique().tolist() == [0.25]
    assert maps[1, 2, 1, 1] == 1.0


def test_motion_error_ignores_static_error_and_sees_wrong_motion() -> None:
    clips = torch.rand(1, 5, 4, 4) * 2 - 1
    static = clips[:, :1].expand(1, 5, 4, 4).clone()  # a still scene
    # A reconstruction off by a constant everywhere: big frame error, no motion error (it cancels).
    offset = static + 0.5
    assert error_maps(static, offset, "frame").mean() == pytest.approx(0.25)
    assert error_maps(static, offset, "motion").abs().max() < 1e-6
    # A reconstruction that drifts by 0.1 per frame while the scene stands still: motion error 0.01.
    drifting = static + 0.1 * torch.arange(5.0).view(1, 5, 1, 1)
    motion = error_maps(static, drifting, "motion")
    assert motion.shape == (1, 5, 4, 4)
    assert torch.allclose(motion, torch.full_like(motion, 0.01), atol=1e-6)
    # Frame 0 has no predecessor and takes frame 1's map.
    recon = clips.clone()
    recon[:, 1] += 0.3
    moved = error_maps(clips, recon, "motion")
    assert torch.allclose(moved[:, 0], moved[:, 1])
    assert moved[:, 1].mean() > 0 and moved[:, 3].abs().max() < 1e-6


def test_unknown_error_kind() -> None:
    with pytest.raises(CallmError, match="unknown error kind 'pixels'"):
        error_maps(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), "pixels")


def test_frame_mse_top_k_averages_the_worst_regions() -> None:
    errors = torch.zeros(1, 16, 16)
    errors[0, 0:4, 0:4] = 1.0  # one hot 4x4 region; with stride 2, patches overlapping it see 1, 1/2 or 1/4
    worst = frame_mse(errors, ErrorMeasure(patch=4, top_k=1))
    three = frame_mse(errors, ErrorMeasure(patch=4, top_k=3))
    assert worst.item() == pytest.approx(1.0)
    assert three.item() == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    everything = frame_mse(errors, ErrorMeasure(patch=4, top_k=10_000))  # k beyond the grid: all patches
    assert everything.item() == pytest.approx((1 + 0.5 + 0.5 + 0.25) / 49)


def test_frame_mse_patch_finds_a_small_hot_spot() -> None:
    errors = torch.zeros(3, 32, 32)
    errors[1, 8:12, 20:24] = 1.0  # a 4x4 hot spot on an otherwise perfect frame
    errors[2] = 0.1
    whole = frame_mse(errors, ErrorMeasure(patch=0))
    assert whole.tolist() == pytest.approx([0.0, 16 / 1024, 0.1])
    patch = frame_mse(errors, ErrorMeasure(patch=4, top_k=1))
    assert patch[1] == pytest.approx(1.0)  # the worst 4x4 region is the hot spot itself
    assert patch[1] > 10 * whole[1]
    assert patch[2] == pytest.approx(0.1)  # a uniform error is the same at any scale
    assert patch[0] == 0.0


# --- boxes ---------------------------------------------------------------------------------------------------


def test_error_box_scales_blob_to_original_pixels() -> None:
    error = np.zeros((32, 32), dtype=np.float32)
    error[8:16, 16:24] = 1.0
    # The model sees 32x32; the original frame is 64 high and 128 wide: x scales by 4, y by 2.
    assert error_box(error, (64, 128), blur=3) == [64, 16, 96, 32]
    assert error_box(error, (32, 32), blur=3) == [16, 8, 24, 16]


def test_error_box_takes_the_blob_holding_the_peak() -> None:
    error = np.zeros((32, 32), dtype=np.float32)
    error[2:6, 2:6] = 0.6  # a weaker blob elsewhere is left out
    error[20:28, 10:14] = 1.0
    assert error_box(error, (32, 32), blur=3) == [10, 20, 14, 28]


def test_error_box_of_perfect_reconstruction_is_whole_frame() -> None:
    assert error_box(np.zeros((16, 16)), (48, 64), blur=3) == [0, 0, 64, 48]


# --- which window scores which frame -------------------------------------------------------------------------


class WindowStamp(nn.Module):
    """A fake autoencoder whose reconstruction is off by an amount that names the window.

    Frames carry their own index as pixel value, so a clip's first pixel is its window's start; the
    reconstruction adds ``(start + 1) * STEP`` everywhere, so every frame of the window has MSE
    ``((start + 1) * STEP) ** 2`` and a frame's PSNR tells which window scored it.
    """

    STEP = 1e-3

    def __init__(self, size: int = 16) -> None:
        super().__init__()
        self.config = AEConfig(height=size, width=size, widths=(1,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = torch.round((x[:, 0, 0, 0, 0] + 1) * 127.5)
        return x + ((start + 1) * self.STEP).view(-1, 1, 1, 1, 1)


def scoring_windows(n: int, stride: int, patch: int = 0, error: str = "frame") -> tuple[np.ndarray, object]:
    frames = [np.full((16, 16), i, dtype=np.uint8) for i in range(n)]
    measure = ErrorMeasure(error, patch)
    scorer = FrameScorer(WindowStamp(), measure, torch.device("cpu"), torch.float32, stride=stride, batch_size=5)
    result = scorer.score_frames(iter(frames), (48, 64), "synthetic")
    mse = 4 * 10 ** (-result.psnr / 10)
    return np.rint(np.sqrt(mse) / WindowStamp.STEP).astype(int) - 1, result


@pytest.mark.parametrize("n", [16, 40, 57])
def test_stride_one_scores_each_frame_from_the_window_centred_on_it(n: int) -> None:
    source, result = scoring_windows(n, stride=1)
    assert len(result.psnr) == n
    assert result.windows_scored == n - WINDOW + 1
    for frame in range(n):
        if frame < CENTRE:
            assert source[frame] == 0  # before the first centre: the first window
        elif frame > n - WINDOW + CENTRE:
            assert source[frame] == n - WINDOW  # after the last centre: the last window
        else:
            assert source[frame] == frame - CENTRE  # the window whose index-8 frame it is


def test_stride_sixteen_each_window_scores_all_its_frames() -> None:
    source, result = scoring_windows(48, stride=16)
    assert result.windows_scored == 3
    assert source.tolist() == [0] * 16 + [16] * 16 + [32] * 16


def test_stride_sixteen_with_an_overlapping_last_window_takes_the_nearest_centre() -> None:
    source, result = scoring_windows(56, stride=16)  # windows 0, 16, 32 and the end-aligned 40
    assert result.windows_scored == 4
    assert source[:40].tolist() == [0] * 16 + [16] * 16 + [32] * 8
    # Frame 40 + k sits at offset 8 + k of window 32 and offset k of window 40; the nearer centre wins.
    assert source[40:45].tolist() == [32] * 5
    assert source[45:].tolist() == [40] * 11


def test_stride_eight_scores_the_middle_eight_frames() -> None:
    assert scored_range(8) == (4, 12)
    source, _ = scoring_windows(48, stride=8)  # windows 0, 8, 16, 24, 32
    assert source.tolist() == [0] * 12 + [8] * 8 + [16] * 8 + [24] * 8 + [32] * 12


@pytest.mark.parametrize("stride", [0, 17])
def test_stride_out_of_range(stride: int) -> None:
    with pytest.raises(CallmError, match="--stride must be between 1 and 16"):
        FrameScorer(WindowStamp(), ErrorMeasure("frame", 0), torch.device("cpu"), torch.float32, stride=stride)


def test_boxes_are_in_original_frame_pixels() -> None:
    _, result = scoring_windows(20, stride=4, patch=4)
    assert result.boxes.shape == (20, 4)
    # A uniform error has no better region than the whole frame, given in the original 48x64 pixels.
    assert (result.boxes == [0, 0, 64, 48]).all()


def test_scoring_a_stream_too_short_for_one_window() -> None:
    with pytest.raises(CallmError, match="at least 16"):
        scoring_windows(12, stride=1)


class OffsetStamp(WindowStamp):
    """Like WindowStamp, but the error also grows with the frame's offset inside its window."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offsets = torch.arange(x.shape[2], dtype=x.dtype).view(1, 1, -1, 1, 1)
        return x + (offsets + 1) * self.STEP


@pytest.mark.parametrize("stride", [1, 8])
def test_frames_at_the_ends_copy_the_nearest_scored_frame(stride: int) -> None:
    """A window's edge frames reconstruct worse than its middle: the ends of a video must not be scored from
    them, or every video would start and end with a false alarm."""
    frames = [np.full((16, 16), i, dtype=np.uint8) for i in range(40)]
    scorer = FrameScorer(OffsetStamp(), ErrorMeasure("frame", 0), torch.device("cpu"), torch.float32, stride=stride)
    psnr = scorer.score_frames(iter(frames), (16, 16), "synthetic").psnr
    lo, hi = scored_range(stride)
    first_scored, last_scored = lo, 40 - WINDOW + hi - 1
    assert np.all(psnr[:first_scored] == psnr[first_scored])
    assert np.all(psnr[last_scored + 1 :] == psnr[last_scored])
    # Inside, every frame was scored at an offset in [lo, hi) of its window, never at the window's edges.
    offsets = np.rint(np.sqrt(4 * 10 ** (-psnr / 10)) / OffsetStamp.STEP).astype(int) - 1
    assert offsets.min() >= lo and offsets.max() < hi


# --- the flow's sustained speed at a stream's start ------------------------------------------------------------


def block_stream(moving_frames: range, n: int = 40, size: int = 64) -> list[np.ndarray]:
    """A textured background with a block that moves 6 px a frame during ``moving_frames`` and stands still after."""
    background = (90 + 40 * np.random.default_rng(0).random((size, size))).astype(np.uint8)
    frames, x = [], 4
    for t in range(n):
        if t in moving_frames:
            x += 6
        frame = background.copy()
        frame[24:40, x : x + 12] = 240
        frames.append(frame)
    return frames


def start_speeds(frames: list[np.ndarray], sustain: int) -> np.ndarray:
    scorer = FrameScorer(
        WindowStamp(size=64), ErrorMeasure("frame", 0), torch.device("cpu"), torch.float32, stride=8,
        sustain=sustain, flow=lambda tops: float(tops.max()),
    )  # fmt: skip
    speed = scorer.score_frames(iter(frames), (64, 64), "synthetic").speed
    assert speed is not None
    return speed


def test_a_streams_first_frames_take_the_speed_kept_up_over_its_start() -> None:
    """Nothing can have kept a speed up before a stream began: without a past, a flicker in the first frames of
    every video (or of a camera's reconnection) would count in full and start it with a false alarm."""
    flicker = start_speeds(block_stream(range(1, 3)), sustain=5)
    steady = start_speeds(block_stream(range(1, 40)), sustain=5)
    assert np.all(flicker[:4] == flicker[4]) and np.all(steady[:4] == steady[4])
    assert flicker[0] < 0.25 * steady[0]  # the flicker was not kept up; the steady block was
    instantaneous = start_speeds(block_stream(range(1, 3)), sustain=1)
    assert instantaneous[1] > 0.5 * steady[0]  # it was fast while it lasted
