"""What ``callm train-ae`` with its defaults costs on this machine, for Ped2-sized footage and 2-3 times more.

    python bench/train_cost.py [--steps 60] [--dtype fp32 --dtype bf16] [--json F]

Times ``--steps`` training steps of the default model on random crops (the step cost does not depend on what
the frames show) in each precision, then adds up what the default budget asks for: the final model's steps
(``callm.ae.budget.default_steps`` of all the footage) and each cross-fitting fold's (of the rest), plus one
scoring pass over the footage for the calibration at the measured scoring speed. A real run adds decoding the
footage once into the frame cache (about a minute for Ped2).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from callm.ae.budget import default_steps
from callm.ae.model import AEConfig, ConvAutoencoder3d
from callm.ae.train import TrainSettings
from callm.device import autocast, parse_dtype

PED2_FRAMES = 2550  # the 16 training videos


def seconds_per_step(dtype: torch.dtype, steps: int) -> float:
    settings = TrainSettings()
    model = ConvAutoencoder3d(AEConfig()).to(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr)
    crop = settings.crop
    x = (
        torch.rand(settings.batch_size, 1, 16, crop, crop)
        .mul(2)
        .sub(1)
        .contiguous(memory_format=torch.channels_last_3d)
    )
    began = 0.0
    for step in range(steps + 5):
        if step == 5:  # after oneDNN's first-call kernel choice
            began = time.perf_counter()
        with autocast(torch.device("cpu"), dtype):
            y = model(x)
        loss = torch.nn.functional.mse_loss(y.float(), x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - began) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--dtype", action="append", help="repeatable; default fp32 and bf16")
    parser.add_argument("--scoring-fps", type=float, default=80.0, help="frames/s of scoring (bench/stage1.py)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    results = {}
    for name in args.dtype or ["fp32", "bf16"]:
        per_step = seconds_per_step(parse_dtype(name), args.steps)
        rows = {}
        for factor in (1, 2, 3):
            frames = factor * PED2_FRAMES
            final = default_steps(frames)
            folds = [default_steps(frames // 2)] * 2  # two folds, each trained on the other half
            minutes = ((final + sum(folds)) * per_step + frames / args.scoring_fps) / 60
            rows[factor] = {"frames": frames, "final_steps": final, "fold_steps": folds, "minutes": round(minutes, 1)}
            print(
                f"{name}: {per_step:.3f} s/step; {factor}x Ped2 ({frames} frames): {final} + {sum(folds)} steps, "
                f"about {minutes:.1f} min",
                flush=True,
            )
        results[name] = {"seconds_per_step": per_step, "footage": rows}
    print(
        f"({torch.get_num_threads()} threads; the budget grows with the square root of the footage: "
        f"{default_steps(PED2_FRAMES)} steps for Ped2, {default_steps(3 * PED2_FRAMES)} for three times it)"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
