"""Optical flow per frame: the row tops, the motion step, sustained speeds, and the ends of a stream."""

from __future__ import annotations

import numpy as np
import pytest

from callm.ae.motion import (
    TOP_PER_ROW,
    FlowTiming,
    SustainedSpeed,
    cell_side,
    motion_step,
    row_tops,
    speed_cells,
    with_speed_cells,
)


def moving_block(frames: int, speed: int, size: tuple[int, int] = (64, 96)) -> list[np.ndarray]:
    """A textured 16x16 block crossing a textured still background at ``speed`` px/frame."""
    rng = np.random.default_rng(0)
    background = rng.integers(60, 120, size).astype(np.uint8)
    block = rng.integers(150, 250, (16, 16)).astype(np.uint8)
    out = []
    for t in range(frames):
        frame = background.copy()
        x = 8 + speed * t
        frame[24:40, x : x + 16] = block
        out.append(frame)
    return out


def test_row_tops_keep_each_rows_fastest_cells() -> None:
    speed = np.zeros((8, 12), np.float32)
    speed[0:2, 0:2] = 4.0  # one fast cell in row 0
    speed[4:6, 2:4] = 1.0
    speed[4:6, 6:8] = 3.0  # two cells in row 2, the faster first
    tops = row_tops(speed_cells(speed, 2))
    assert tops.shape == (4, TOP_PER_ROW) and tops.dtype == np.float16
    assert tops[0].tolist() == [4.0, 0.0, 0.0, 0.0]
    assert tops[2].tolist() == [3.0, 1.0, 0.0, 0.0]
    assert not tops[1].any() and not tops[3].any()


def test_the_flow_reads_the_speed_of_a_moving_block() -> None:
    frames = moving_block(12, speed=2)
    pairs = [(frame, row_tops(cells)) for frame, cells in with_speed_cells(frames)]
    assert len(pairs) == 12
    assert all(a is b for a, (b, _) in zip(frames, pairs, strict=True))  # frames pass through unchanged
    cell = cell_side(64)
    block_rows = range(24 // cell + 1, 40 // cell - 1)  # rows wholly inside the block
    for _, tops in pairs[1:]:
        fastest = float(max(tops[r, 0] for r in block_rows))
        assert fastest == pytest.approx(2.0, abs=0.4)
        assert float(tops[0, 0]) < 0.3  # the still background far from the block
    # The first frame has no predecessor: it takes the first measured rows, not a standstill.
    assert np.array_equal(pairs[0][1], pairs[1][1])


def test_a_longer_motion_step_measures_over_more_frames() -> None:
    frames = moving_block(12, speed=1)
    rows_1 = [c for _, c in with_speed_cells(frames, step=1)]
    rows_3 = [c for _, c in with_speed_cells(frames, step=3)]
    assert len(rows_3) == 12
    assert float(rows_3[6].max()) == pytest.approx(3 * float(rows_1[6].max()), rel=0.25)
    assert motion_step(10) == 1 and motion_step(25) == 2 and motion_step(30) == 3 and motion_step(2) == 1


def test_frames_too_small_or_too_few_for_flow_read_as_still() -> None:
    tiny = [np.full((8, 8), i * 10, np.uint8) for i in range(3)]
    assert all(not c.any() for _, c in with_speed_cells(tiny))
    one = [np.zeros((32, 32), np.uint8)]
    ((frame, cells),) = list(with_speed_cells(one))
    assert frame is one[0] and not cells.any()


def sustained_over(cells: list[np.ndarray], frames: int, step: int = 1, cell: int = 4) -> list[np.ndarray]:
    sustained = SustainedSpeed(frames, step, cell)
    return [sustained(c) for c in cells]


def test_a_one_frame_flick_does_not_count_as_sustained_speed() -> None:
    still = np.zeros((6, 8), np.float32)
    flick = still.copy()
    flick[2, 3] = 5.0  # a limb or a flow glitch: fast for one frame only
    out = sustained_over([still, still, still, flick, still], frames=3)
    assert out[3].max() == 0.0  # the frames before had nothing near it
    assert np.array_equal(sustained_over([still, flick], frames=1)[1], flick)  # 1 frame: instantaneous


def test_a_slow_steady_object_keeps_its_speed_while_it_moves() -> None:
    frames = []
    for t in range(8):  # 1.5 px/frame in 4 px cells: a cell every few frames, at a steady speed
        cells = np.zeros((6, 12), np.float32)
        cells[2, 1 + (3 * t) // 8] = 1.5
        frames.append(cells)
    out = sustained_over(frames, frames=5)
    assert out[-1].max() == pytest.approx(1.5)
    assert np.argmax(out[-1]) == np.argmax(frames[-1])  # where the object is now, not where it was


def test_a_fast_object_is_followed_not_lost() -> None:
    frames = []
    for t in range(6):  # 12 px/frame: 3 cells a frame, far beyond one cell of slack
        cells = np.zeros((4, 24), np.float32)
        cells[1, 2 + 3 * t] = 12.0
        frames.append(cells)
    out = sustained_over(frames, frames=5)
    assert out[-1].max() == pytest.approx(12.0)


def test_the_sustained_speed_never_exceeds_the_speed_now() -> None:
    rng = np.random.default_rng(1)
    frames = [rng.random((6, 8)).astype(np.float32) * 3 for _ in range(10)]
    for now, out in zip(frames, sustained_over(frames, frames=4), strict=True):
        assert (out <= now + 1e-6).all()


def test_flow_timing_follows_the_frame_rate() -> None:
    assert FlowTiming.for_fps(10.0, 0.5) == FlowTiming(1, 5)
    assert FlowTiming.for_fps(30.0, 0.5) == FlowTiming(3, 15)
    assert FlowTiming.for_fps(25.0, 0.0) == FlowTiming(2, 1)  # 0 s: instantaneous
