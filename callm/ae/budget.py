"""How long ``train-ae`` trains by default (no torch here: the CLI's help text reads it)."""

from __future__ import annotations

import math

from callm.errors import CallmError

# The default budget: BASE_STEPS for BASE_FRAMES of footage, growing with the square root of the footage (twice
# the footage repeats its kinds of motion more than it adds new ones), within [MIN_STEPS, MAX_STEPS].
BASE_STEPS, BASE_FRAMES, MIN_STEPS, MAX_STEPS = 1500, 2500, 300, 4000


def default_steps(frames: int) -> int:
    """Training steps for ``frames`` frames of normal footage when ``--steps`` is not given."""
    return int(min(MAX_STEPS, max(MIN_STEPS, round(BASE_STEPS * math.sqrt(frames / BASE_FRAMES)))))


def check_folds(folds: int) -> None:
    if folds < 2:
        raise CallmError(f"--folds must be at least 2 (no model may score the footage it trained on), got {folds}")
