"""The VAD-LLaMA path's commands: features, train-vador, eval-vador, ablate-vador."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import typer

from callm.cli.common import (
    DeviceOpt,
    DtypeOpt,
    FpsOpt,
    WeightsOpt,
    app,
    check_output_file,
    check_output_folder,
    check_quantile,
    default_weights,
    user_errors,
)
from callm.console import console, make_progress
from callm.errors import CallmError
from callm.video import check_fps

if TYPE_CHECKING:
    from callm.vador.model import ListKind
    from callm.vador.train import TrainSettings

# Options train-vador and ablate-vador share.
EpochsOpt = Annotated[int, typer.Option(min=1, help="Passes over the training videos.")]
BatchOpt = Annotated[int, typer.Option(min=1, help="Videos per step.")]
LrOpt = Annotated[float, typer.Option(help="Peak learning rate (AdamW; linear warm-up, then cosine to 0).")]
WeightDecayOpt = Annotated[float, typer.Option(help="AdamW weight decay.")]
WarmupOpt = Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of the steps spent warming up.")]
SmoothnessOpt = Annotated[float, typer.Option(min=0.0, help="Weight of the score-smoothness term (0 = off).")]
SparsityOpt = Annotated[float, typer.Option(min=0.0, help="Weight of the score-sparsity term (0 = off).")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the initial weights and the batch order.")]
KOpt = Annotated[int, typer.Option("--k", min=1, help="Clips per context list.")]
AttentionOpt = Annotated[
    str, typer.Option(help="How a list attends to a clip: dot (the paper's plain product), l2, softmax.")
]
TrainLabelsOpt = Annotated[
    Path | None,
    typer.Option(
        help="Training videos: a list file (Anomaly_Train.txt layout, optional 0/1 label per line); "
        "default: every video, normal when a folder is named Normal."
    ),
]
TestLabelsOpt = Annotated[
    Path, typer.Option(help="Frame labels: UCSD .m, .npy of all frames, or UCF-Crime Temporal_Anomaly_Annotation.txt.")
]
OnlyOpt = Annotated[Path | None, typer.Option(help="Evaluate only the videos this list file names.")]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="Write the results as JSON here.")]

S = TypeVar("S", bound=str)


def _choice(value: str, allowed: tuple[S, ...], option: str) -> S:
    if value not in allowed:
        raise CallmError(f"{option} must be one of {', '.join(allowed)}, got {value!r}")
    return cast(S, value)


def _settings(**values: Any) -> TrainSettings:
    from callm.vador.train import TrainSettings

    return TrainSettings(**values)


def _context_lists(context: str) -> tuple[ListKind, ...]:
    from callm.vador.model import LIST_KINDS

    names = [name.strip() for name in context.split(",") if name.strip()]
    if not names:
        raise CallmError(f"--context takes names from {', '.join(LIST_KINDS)}, comma-separated; got {context!r}")
    return tuple(_choice(name, LIST_KINDS, "--context") for name in names)


@app.command()
@user_errors
def features(
    data: Annotated[list[Path], typer.Argument(help="Videos, frame folders, or folders of them.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Features folder (resumable: done videos are skipped).")],
    encoder: Annotated[str, typer.Option(help="ae (stage 1's encoder) or videollama (stage 2's).")] = "ae",
    weights: WeightsOpt = None,
    pooling: Annotated[str, typer.Option(help="ae: pool the bottleneck by avgmax, avg or max.")] = "avgmax",
    vlm: Annotated[Path | None, typer.Option(help="videollama: the stage-2 config (TOML).")] = None,
    tokens: Annotated[str, typer.Option(help="videollama: mean of the video query tokens, or all of them.")] = "mean",
    clip_frames: Annotated[int, typer.Option(help="videollama: frames sampled from each 16-frame clip.")] = 8,
    batch_size: Annotated[int, typer.Option(min=1, help="Clips per encoder call.")] = 8,
    fps: FpsOpt = 10.0,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Clip features (one row per 16-frame clip) for the VADor, one .npy per video plus index.json."""
    check_output_folder(out)
    check_fps(fps)
    from callm.vador.features import (
        POOLINGS,
        TOKEN_MODES,
        AEClipEncoder,
        ClipEncoder,
        VideoLlamaClipEncoder,
        extract_features,
    )

    clip_encoder: ClipEncoder
    if _choice(encoder, ("ae", "videollama"), "--encoder") == "ae":
        if vlm is not None:
            raise CallmError("--vlm is only used with --encoder videollama")
        from callm.device import parse_dtype, pick_device

        pool = _choice(pooling, POOLINGS, "--pooling")
        torch_device = pick_device(device)
        clip_encoder = AEClipEncoder.from_weights(
            weights or default_weights(), torch_device, parse_dtype(dtype, torch_device), pool
        )
    else:
        if vlm is None:
            raise CallmError("--encoder videollama needs --vlm CONFIG.toml (the stage-2 config)")
        if weights is not None:
            raise CallmError("--weights is for --encoder ae (stage-1 weights)")
        from callm.vlm.config import load_config

        token_mode = _choice(tokens, TOKEN_MODES, "--tokens")
        clip_encoder = VideoLlamaClipEncoder.from_config(load_config(vlm), token_mode, clip_frames)
    with make_progress() as progress:
        index, extracted = extract_features(data, clip_encoder, out, fps, batch_size, progress)
    clips = sum(len(v.clips) for v in index.videos)
    console.print(
        f"{out}: {len(index.videos)} videos, {clips} clips of {index.dim} features "
        f"({extracted} extracted now, {len(index.videos) - extracted} already there)"
    )


@app.command("train-vador")
@user_errors
def train_vador_command(
    features: Annotated[list[Path], typer.Argument(help="Features folders (from `callm features`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="VADor weights folder to write.")],
    labels: TrainLabelsOpt = None,
    phase: Annotated[int, typer.Option(min=1, max=2, help="1: the predictor alone; 2: with context lists.")] = 1,
    init: Annotated[Path | None, typer.Option(help="Phase 2: the phase-1 VADor to start from.")] = None,
    context: Annotated[
        str, typer.Option(help="Phase 2: lists, from normal, abnormal, history (LSTC adds history).")
    ] = "normal,abnormal",
    k: KOpt = 4,
    attention: AttentionOpt = "dot",
    epochs: EpochsOpt = 30,
    batch_size: BatchOpt = 8,
    lr: LrOpt = 1e-5,
    weight_decay: WeightDecayOpt = 1e-3,
    warmup: WarmupOpt = 0.1,
    smoothness: SmoothnessOpt = 0.0,
    sparsity: SparsityOpt = 0.0,
    seed: SeedOpt = 0,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.")] = False,
    calibrate: Annotated[
        Path | None,
        typer.Option(help="List file of held-out normal videos: the clip threshold is fitted to their scores."),
    ] = None,
    quantile: Annotated[float, typer.Option(help="--calibrate: share of their clips under the threshold.")] = 0.99,
) -> None:
    """Train the VADor on weak (video-level) labels: phase 1, then phase 2 from it."""
    check_output_folder(out)
    from callm.vador.model import ATTENTIONS
    from callm.vador.train import train_vador
    from callm.vador.weights import DECISION_LINE

    if phase == 2 and init is None:
        raise CallmError("--phase 2 starts from phase 1's weights: pass --init PHASE1_FOLDER")
    if phase == 1 and init is not None:
        raise CallmError("--init is for --phase 2")
    check_quantile(quantile)
    settings = _settings(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup=warmup,
        smoothness=smoothness,
        sparsity=sparsity,
        seed=seed,
    )
    lists = _context_lists(context) if phase == 2 else ()
    mode = _choice(attention, ATTENTIONS, "--attention")
    with make_progress() as progress:
        weights = train_vador(
            features, labels, out, settings, lists, k, mode, init, resume, progress, calibrate, quantile
        )
    training, calibration = weights.training, weights.calibration
    unmatched = training["unmatched_list_entries"]
    console.print(
        f"saved {out}: phase {phase}, {training['normal_videos']} normal + {training['abnormal_videos']} abnormal "
        f"videos, final loss {training['epoch_losses'][-1]:.4f}, {training['train_seconds']:.1f} s"
        + (f"; {unmatched} listed videos have no features" if unmatched else "")
        + (
            f"; clip threshold {calibration['threshold']:.3f} from {calibration['clips']} clips of "
            f"{len(calibration['videos'])} held-out normal videos"
            if calibration
            else f"; clip threshold {DECISION_LINE:g} (uncalibrated: see --calibrate)"
        )
    )


def _auc(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


@app.command("eval-vador")
@user_errors
def eval_vador_command(
    features: Annotated[Path, typer.Argument(help="Features folder of the test videos.")],
    vador: Annotated[Path, typer.Option(help="VADor weights folder (from train-vador).")],
    labels: TestLabelsOpt,
    only: OnlyOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """AUC_O (all test frames) and AUC_A (videos with anomalies) of a trained VADor."""
    check_output_file(json_out, "--json")
    from rich.table import Table

    from callm.files import write_json_atomic
    from callm.vador.evaluate import evaluate_vador
    from callm.vador.weights import load

    result = evaluate_vador(load(vador), features, labels, only)
    table = Table(title=f"VADor on {features}")
    for column in ("video", "frames", "abnormal", "AUC", "mean score"):
        table.add_column(column, justify="left" if column == "video" else "right")
    for key, video in result["per_video"].items():
        table.add_row(
            key, str(video["frames"]), str(video["abnormal_frames"]), _auc(video["auc"]), f"{video['mean_score']:.3f}"
        )
    console.print(table)
    console.print(
        f"AUC_O {_auc(result['auc_o'])} over {result['num_videos']} videos, AUC_A {_auc(result['auc_a'])} over "
        f"the {result['abnormal_videos']} with anomalies"
    )
    if json_out is not None:
        write_json_atomic(json_out, result)


@app.command("ablate-vador")
@user_errors
def ablate_vador_command(
    features: Annotated[list[Path], typer.Argument(help="Features folders of the training videos.")],
    test: Annotated[Path, typer.Option(help="Features folder of the test videos.")],
    test_labels: TestLabelsOpt,
    labels: TrainLabelsOpt = None,
    only: OnlyOpt = None,
    k: KOpt = 4,
    attention: AttentionOpt = "dot",
    epochs: EpochsOpt = 30,
    phase2_epochs: Annotated[int | None, typer.Option(min=1, help="Phase-2 epochs (default: --epochs).")] = None,
    batch_size: BatchOpt = 8,
    lr: LrOpt = 1e-5,
    weight_decay: WeightDecayOpt = 1e-3,
    warmup: WarmupOpt = 0.1,
    smoothness: SmoothnessOpt = 0.0,
    sparsity: SparsityOpt = 0.0,
    seed: SeedOpt = 0,
    json_out: JsonOpt = None,
) -> None:
    """VAD-LLaMA's Table 3 here: baseline, +N, +A, +N+A, +N+A+H, each evaluated by AUC_O and AUC_A."""
    check_output_file(json_out, "--json")
    import dataclasses

    from rich.table import Table

    from callm.files import write_json_atomic
    from callm.vador.ablation import ablation
    from callm.vador.evaluate import labelled_videos
    from callm.vador.model import ATTENTIONS
    from callm.vador.train import load_training_set

    training = load_training_set(features, labels)
    train_features, train_labels, encoder = training.features, training.labels, training.encoder
    index, labelled = labelled_videos(test, test_labels, only)
    if index.encoder != encoder:
        raise CallmError(f"{test}: features of another encoder than the training features")
    phase1 = _settings(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup=warmup,
        smoothness=smoothness,
        sparsity=sparsity,
        seed=seed,
    )
    phase2 = dataclasses.replace(phase1, epochs=phase2_epochs or epochs)
    mode = _choice(attention, ATTENTIONS, "--attention")
    with make_progress() as progress:
        rows = ablation(train_features, train_labels, labelled, phase1, phase2, k, (mode,), progress=progress)
    table = Table(title=f"Table 3 on {test} (attention {attention}, K={k})")
    for column in ("row", "AUC_O", "AUC_A", "final loss"):
        table.add_column(column, justify="left" if column == "row" else "right")
    for row in rows:
        table.add_row(row.name, _auc(row.auc_o), _auc(row.auc_a), f"{row.final_loss:.4f}")
    console.print(table)
    if json_out is not None:
        write_json_atomic(json_out, [row.to_dict() for row in rows])
