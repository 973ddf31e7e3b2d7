"""Stage-1 commands (and the cascade on top of them): train-ae, detect, eval."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from callm.ae.budget import BASE_FRAMES, BASE_STEPS
from callm.ae.events import HOLD_QUANTILE
from callm.ae.motion import SUSTAIN_SECONDS
from callm.cli.common import (
    DeviceOpt,
    DtypeOpt,
    FpsOpt,
    Load8bitOpt,
    StrideOpt,
    ThresholdOpt,
    VlmDeviceOpt,
    VlmDtypeOpt,
    WeightsOpt,
    app,
    check_output_file,
    check_output_folder,
    check_quantile,
    default_weights,
    quiet_transformers,
    user_errors,
    vlm_config,
)
from callm.console import FrameBar, ScanBars, console, err_console, make_progress
from callm.errors import CallmError
from callm.video import WINDOW, check_fps, find_videos, is_frame_folder

if TYPE_CHECKING:
    from callm.ae.calibrate import ScoringSettings
    from callm.cascade import Stage1, Stage1Recipe, Stage2
    from callm.results import Detection
    from callm.scan import ExplainStep


def _recipe(
    weights: Path | None, stride: int | None, threshold: float | None, min_event: int | None, max_gap: int | None,
    follow: bool, fps: float, device: str, dtype: str,
) -> Stage1Recipe:  # fmt: skip
    from callm.cascade import DetectOptions, Stage1Recipe

    options = DetectOptions(
        stride=stride, threshold=threshold, min_event_frames=min_event, max_gap=max_gap, follow_objects=follow,
        folder_fps=fps,
    )  # fmt: skip
    return Stage1Recipe(str(weights or default_weights()), options, device, dtype)


def _evidence_note(calibration: dict[str, Any]) -> str:
    """One line on what the threshold rests on, and a warning when that is too little."""
    from callm.ae.calibrate import ENOUGH_WINDOWS

    evidence = calibration.get("evidence") or {}
    if not evidence:
        return f"from {calibration['holdout_frames']} held-out frames"
    interval = evidence.get("threshold_interval_90")
    note = (
        f"from {evidence['windows']} normal windows of {evidence['videos']} video(s), worth about "
        f"{evidence['effective_windows']:.0f} independent ones"
        + (f"; 90% interval {interval[0]:.2f}-{interval[1]:.2f}" if interval else "")
    )
    if not evidence.get("enough"):
        err_console.print(
            "callm: warning: this threshold rests on little normal footage and is provisional; calibrate on "
            f"more (at least {ENOUGH_WINDOWS} independent {WINDOW}-frame windows, a few minutes) for a dependable one",
            markup=False,
        )
    return note


HOLD_HELP = (
    "An event lasts while its score stays above this share of normal frames' scores, so stage 2 sees all of it, "
    "not only its peak (0 = it ends at the threshold)."
)


def _checked(settings: ScoringSettings) -> ScoringSettings:
    """Scoring settings from the command line, refused in one line before any work when they make no sense."""
    from callm.ae.score import ERROR_KINDS

    check_quantile(settings.quantile)
    if settings.error not in ERROR_KINDS:
        raise CallmError(f"--error must be one of {', '.join(ERROR_KINDS)}, got {settings.error!r}")
    numbers = (("--smooth", settings.smooth_sigma), ("--flow-weight", settings.flow_weight),
               ("--region", settings.patch_fraction), ("--hold", settings.hold_quantile))  # fmt: skip
    for name, value in numbers:
        if value is not None and (not math.isfinite(value) or value < 0):
            raise CallmError(f"{name} must be a number >= 0, got {value}")
    if settings.flow_weight > 1 or settings.patch_fraction > 1 or settings.hold_quantile >= 1:
        raise CallmError("--flow-weight and --region are shares between 0 and 1, --hold a share below 1")
    return settings


@app.command("train-ae")
@user_errors
def train_ae_command(
    data: Annotated[list[Path], typer.Argument(help="Normal footage: videos, frame folders, or folders of them.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Weights folder to write (checkpoints go inside).")],
    steps: Annotated[
        int,
        typer.Option(
            min=0,
            help=f"Training steps of the final model (0 = {BASE_STEPS} for {BASE_FRAMES} frames, growing with the "
            "square root of the footage's length).",
        ),
    ] = 0,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    lr: float = 1e-3,
    seed: int = 0,
    size: Annotated[int, typer.Option(help="Model input height; the width follows the footage's aspect.")] = 128,
    widths: Annotated[str, typer.Option(help="Encoder channel widths, comma-separated.")] = "16,32,64,64",
    crop: Annotated[int, typer.Option(help="Train on crops of this side (0 = whole frames).", min=0)] = 64,
    folds: Annotated[
        int, typer.Option(help="Cross-fitting folds: each part of the footage is scored by a model not trained on it.")
    ] = 2,
    quantile: Annotated[float, typer.Option(help="Share of normal 16-frame windows below the threshold.")] = 0.99,
    smooth: Annotated[
        float | None,
        typer.Option(help="Temporal smoothing of the scores (Gaussian sigma, frames; default: 0.2 s, at least 2)."),
    ] = None,
    flow_weight: Annotated[
        float, typer.Option(help="Share of the optical-flow speed signal in the score (0 = the autoencoder alone).")
    ] = 0.5,
    sustain: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Seconds a speed must be kept up to count fully (a limb's flick does not, a bike does; 0 = "
            "instantaneous).",
        ),
    ] = SUSTAIN_SECONDS,
    hold: Annotated[float, typer.Option(help=HOLD_HELP)] = HOLD_QUANTILE,
    error: Annotated[
        str, typer.Option(help="Autoencoder error: 'motion' (of frame differences) or 'frame' (pixels, the paper's).")
    ] = "motion",
    region: Annotated[
        float, typer.Option(help="Side of the scored error regions as a share of the height (0 = whole frame).")
    ] = 0.125,
    calibration_stride: Annotated[
        int,
        typer.Option(
            "--stride",
            help="Scoring stride the gate is calibrated at; detect uses it by default (1 = the paper).",
            min=1,
            max=16,
        ),
    ] = 8,
    resume: Annotated[
        bool, typer.Option(help="Continue from OUT/checkpoint (finished models are only scored again).")
    ] = False,
    fps: FpsOpt = 10.0,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Train the stage-1 autoencoder on normal footage and calibrate its gate by cross-fitting."""
    check_output_folder(out)
    check_fps(fps)
    from callm.ae.train import TrainSettings, train_ae
    from callm.device import parse_dtype, pick_device

    try:
        width_list = tuple(int(w) for w in widths.split(","))
    except ValueError:
        raise CallmError(f"--widths must be comma-separated integers, got {widths!r}") from None
    if not math.isfinite(lr) or lr <= 0:
        raise CallmError(f"--lr must be a positive number, got {lr}")
    if folds < 2:
        raise CallmError(
            f"--folds must be at least 2 (a model must never score the footage it trained on), got {folds}"
        )
    from callm.ae.calibrate import ScoringSettings

    scoring = _checked(
        ScoringSettings(
            error=error,
            patch_fraction=region,
            flow_weight=flow_weight,
            sustain_seconds=sustain,
            hold_quantile=hold,
            smooth_sigma=smooth,
            stride=calibration_stride,
            quantile=quantile,
        )
    )
    settings = TrainSettings(steps=steps, batch_size=batch_size, lr=lr, seed=seed, crop=crop, folds=folds)
    torch_device = pick_device(device)
    with make_progress() as progress:
        weights = train_ae(
            data, out, size, width_list, settings, scoring, torch_device, parse_dtype(dtype, torch_device), fps,
            resume=resume, progress=progress,
        )  # fmt: skip
    cal, training = weights.calibration, weights.training
    console.print(
        f"saved {out}: final loss {training['chunk_losses'][-1]:.5f} after {training['steps']} steps, "
        f"{training['wall_seconds']:.0f} s in all; threshold {cal['threshold']:.3f} {_evidence_note(cal)}"
    )


@app.command()
@user_errors
def calibrate(
    data: Annotated[
        list[Path], typer.Argument(help="Normal footage of the site: videos, frame folders, or folders of them.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Weights folder to write (may be --weights itself).")],
    weights: WeightsOpt = None,
    calibration_stride: Annotated[
        int | None,
        typer.Option("--stride", help="Scoring stride to calibrate at (default: the weights' own).", min=1, max=16),
    ] = None,
    quantile: Annotated[float, typer.Option(help="Share of normal 16-frame windows below the threshold.")] = 0.99,
    smooth: Annotated[float | None, typer.Option(help="Gaussian sigma in frames (default: the weights' own).")] = None,
    flow_weight: Annotated[
        float | None, typer.Option(help="Share of the optical-flow signal (default: the weights' own).")
    ] = None,
    hold: Annotated[float | None, typer.Option(help=HOLD_HELP + " Default: the weights' own.")] = None,
    error: Annotated[
        str | None, typer.Option(help="Autoencoder error: 'motion' or 'frame' (default: the weights' own).")
    ] = None,
    region: Annotated[
        float | None, typer.Option(help="Scored region side as a share of the height, 0 = whole frame (default: own).")
    ] = None,
    fps: FpsOpt = 10.0,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Fit a trained model's gate to a new site's normal footage (no training): a new threshold and score scale."""
    from callm.ae.recalibrate import recalibrate, scoring_of
    from callm.ae.weights import load, save
    from callm.device import parse_dtype, pick_device
    from callm.video import Video

    check_output_folder(out)
    check_fps(fps)
    model = load(weights or default_weights())
    own = scoring_of(model)
    settings = _checked(
        replace(
            own,
            quantile=quantile,
            smooth_sigma=own.smooth_sigma if smooth is None else smooth,
            stride=calibration_stride or own.stride,
            flow_weight=own.flow_weight if flow_weight is None else flow_weight,
            hold_quantile=own.hold_quantile if hold is None else hold,
            error=error or own.error,
            patch_fraction=own.patch_fraction if region is None else region,
        )
    )
    videos = [Video(path, folder_fps=fps) for path in find_videos(data)]
    torch_device = pick_device(device)
    with make_progress() as progress:
        calibrated = recalibrate(model, videos, settings, torch_device, parse_dtype(dtype, torch_device), progress)
    save(calibrated, out)
    cal = calibrated.calibration
    console.print(
        f"saved {out}: threshold {cal['threshold']:.3f} (was {model.calibration['threshold']:.3f}) at stride "
        f"{cal['stride']}, {_evidence_note(cal)}"
    )


def _explain_config(path: Path | None, calls: str, dtype: str | None, device: str | None, load_8bit: bool) -> Any:
    if calls not in ("event", "window"):
        raise CallmError(f"--vlm-calls must be 'event' or 'window', got {calls!r}")
    env = os.environ.get("CALLM_VLM_CONFIG")
    if path is None and not env:
        raise CallmError(
            "--explain and --adaptor need a stage-2 config: pass --vlm CONFIG.toml or set CALLM_VLM_CONFIG"
        )
    return vlm_config(path or Path(env or ""), dtype, device, load_8bit)


# The options every way of running the cascade shares (one video, a scan, a live watch): stage 1's and the
# explainers'. Each command lists them in its own signature (typer reads options from signatures) through these.
MinEventOpt = Annotated[
    int | None, typer.Option(help="Drop events shorter than this many frames (default: half a second's worth).")
]
MaxGapOpt = Annotated[
    int | None, typer.Option(help="Merge events separated by at most this many frames (default: a second's worth).")
]
FollowOpt = Annotated[
    bool,
    typer.Option(help="An event lasts while the object that set it off is in view and stands out (not only while "
                 "the frame's score is raised)."),
]  # fmt: skip
ExplainOpt = Annotated[bool, typer.Option(help="Ask the stage-2 video LLM about every gated event.")]
ExplainerOpt = Annotated[
    str, typer.Option(help="'vlm': stage 2 explains events (with --explain); 'ltc': the VADor path also runs.")
]
VadorOpt = Annotated[Path | None, typer.Option(help="Trained VADor folder (callm train-vador) for --explainer ltc.")]
AdaptorOpt = Annotated[
    Path | None,
    typer.Option(help="--explainer ltc: the VADor's phase-3 adaptor (finetune --adaptor); the LLM of --vlm answers."),
]
VlmConfigOpt = Annotated[
    Path | None, typer.Option(help="Stage-2 config (TOML) naming its weights; default $CALLM_VLM_CONFIG.")
]
VlmCallsOpt = Annotated[
    str, typer.Option(help="'event': one stage-2 call per event over its gated windows; 'window': one each.")
]


@dataclass
class Cascade:
    """Stage 1 built, and the explainers asked for, loaded: everything checked before a video is read."""

    recipe: Stage1Recipe
    stage1: Stage1
    stage2: Stage2 | None
    ltc: Any  # a VADorDetector for --explainer ltc
    folder_fps: float
    described: dict[str, Any]  # what the explainers are, for a scan's resume check

    def explain(self, detection: Detection, progress: Any = None) -> None:
        from callm.cascade import explain_with_ltc

        if self.stage2 is not None:
            self.stage2.explain(detection, progress)
        if self.ltc is not None:
            explain_with_ltc(detection, self.ltc, self.folder_fps)

    def explain_steps(self) -> list[ExplainStep]:
        """The explainers as steps a scan runs on each video stage 1 scored."""
        return [self.explain] if self.stage2 is not None or self.ltc is not None else []


def _cascade(
    weights: Path | None, stride: int | None, threshold: float | None, min_event: int | None, max_gap: int | None,
    follow: bool, fps: float, device: str, dtype: str, explain: bool, explainer: str, vador: Path | None,
    adaptor: Path | None, vlm: Path | None, vlm_calls: str, vlm_dtype: str | None, vlm_device: str | None,
    load_8bit: bool,
) -> Cascade:  # fmt: skip
    if explainer not in ("vlm", "ltc"):
        raise CallmError(f"--explainer must be 'vlm' or 'ltc', got {explainer!r}")
    if (explainer == "ltc") != (vador is not None):
        raise CallmError("--explainer ltc and --vador VADOR_DIR go together")
    if adaptor is not None and vador is None:
        raise CallmError("--adaptor is for --explainer ltc")
    stage2_config = None
    if explain or adaptor is not None:
        stage2_config = _explain_config(vlm, vlm_calls, vlm_dtype, vlm_device, load_8bit)
    elif vlm is not None:
        raise CallmError("--vlm is only used with --explain or --adaptor")
    recipe = _recipe(weights, stride, threshold, min_event, max_gap, follow, fps, device, dtype)
    stage1 = recipe.build()  # fails here, once, on bad weights, before any video is touched
    ltc = _ltc_detector(vador, Path(recipe.weights), device, dtype, adaptor, stage2_config) if vador else None
    stage2 = _stage2(stage2_config, vlm_calls, fps) if explain else None  # its weights load before any scoring
    described = _explainers_described(stage2_config if explain else None, vlm_calls, vador, adaptor)
    return Cascade(recipe, stage1, stage2, ltc, fps, described)


@app.command()
@user_errors
def detect(
    path: Annotated[Path, typer.Argument(help="A video file or a folder of its frames.")],
    weights: WeightsOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the full result as JSON here.")] = None,
    clips: Annotated[
        Path | None,
        typer.Option("--clips", help="Write each event as an mp4 here (1.5 s each side, tracked boxes drawn)."),
    ] = None,
    stride: StrideOpt = None,
    threshold: ThresholdOpt = None,
    min_event: MinEventOpt = None,
    max_gap: MaxGapOpt = None,
    follow: FollowOpt = True,
    fps: FpsOpt = 10.0,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    explain: ExplainOpt = False,
    explainer: ExplainerOpt = "vlm",
    vador: VadorOpt = None,
    adaptor: AdaptorOpt = None,
    vlm: VlmConfigOpt = None,
    vlm_calls: VlmCallsOpt = "event",
    vlm_dtype: VlmDtypeOpt = None,
    vlm_device: VlmDeviceOpt = None,
    load_8bit: Load8bitOpt = False,
) -> None:
    """Find abnormal moments in one video. With --explain, the stage-2 video LLM judges and explains each event."""
    from callm.report import detection_summary, events_table, write_json

    check_output_file(json_out, "--json")
    if clips is not None:
        check_output_folder(clips, "--clips")
    if path.is_dir() and not is_frame_folder(path):
        find_videos([path])  # a folder with nothing to scan gets that message, not this one
        raise CallmError(f"{path}: a folder of videos; scan it with callm scan {path} --out RUN_DIR")
    cascade = _cascade(
        weights, stride, threshold, min_event, max_gap, follow, fps, device, dtype, explain, explainer, vador, adaptor,
        vlm, vlm_calls, vlm_dtype, vlm_device, load_8bit,
    )  # fmt: skip
    with make_progress() as progress:
        bar = FrameBar(progress, path.name)
        detection = cascade.stage1.detect(path, bar)
        bar.close()
        cascade.explain(detection, progress)
        clip_files = _write_clips(detection, clips, progress) if clips is not None else []
    if detection.events or detection.ltc is not None:
        console.print(events_table(detection))
    console.print(detection_summary(detection))
    if clip_files:
        console.print(f"{len(clip_files)} clip(s) in {clips}: {', '.join(p.name for p in clip_files)}")
    if json_out is not None:
        write_json(json_out, {**detection.to_dict(), **({"clips": [str(p) for p in clip_files]} if clips else {})})


def _write_clips(detection: Detection, folder: Path, progress: Any) -> list[Path]:
    """Each event's clip as ``<video>-event<k>.mp4`` in ``folder``, written atomically."""
    import contextlib

    from callm.clips import write_event_clips
    from callm.files import atomic_path

    if not detection.events:
        return []
    task = progress.add_task("clips", total=None)
    paths = [folder / f"{Path(detection.video).stem}-event{k}.mp4" for k in range(1, len(detection.events) + 1)]
    with contextlib.ExitStack() as stack:
        write_event_clips(detection, [stack.enter_context(atomic_path(p)) for p in paths])
    progress.remove_task(task)
    return paths


@app.command()
@user_errors
def scan(
    paths: Annotated[list[Path], typer.Argument(help="Folders (searched recursively), videos or frame folders.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: results, summary and report.html.")],
    workers: Annotated[int, typer.Option(help="Videos scored in parallel processes.", min=1)] = 1,
    engine: Annotated[str, typer.Option(help="'local' processes or a 'ray' cluster.")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: start a local Ray).")] = None,
    retry_errors: Annotated[bool, typer.Option(help="Rescan files that failed before.")] = False,
    weights: WeightsOpt = None,
    stride: StrideOpt = None,
    threshold: ThresholdOpt = None,
    min_event: MinEventOpt = None,
    max_gap: MaxGapOpt = None,
    follow: FollowOpt = True,
    fps: FpsOpt = 10.0,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    explain: ExplainOpt = False,
    explainer: ExplainerOpt = "vlm",
    vador: VadorOpt = None,
    adaptor: AdaptorOpt = None,
    vlm: VlmConfigOpt = None,
    vlm_calls: VlmCallsOpt = "event",
    vlm_dtype: VlmDtypeOpt = None,
    vlm_device: VlmDeviceOpt = None,
    load_8bit: Load8bitOpt = False,
) -> None:
    """Scan an archive: every video under the folders into a resumable run folder with an HTML report."""
    check_output_folder(out)
    if engine not in ("local", "ray"):
        raise CallmError(f"--engine must be 'local' or 'ray', got {engine!r}")
    find_videos(paths)  # nothing to scan: said before any model loads
    cascade = _cascade(
        weights, stride, threshold, min_event, max_gap, follow, fps, device, dtype, explain, explainer, vador, adaptor,
        vlm, vlm_calls, vlm_dtype, vlm_device, load_8bit,
    )  # fmt: skip
    _scan(
        paths, out, cascade.recipe, engine, workers, address, retry_errors, cascade.explain_steps(), cascade.described
    )


def _ltc_detector(vador: Path, ae_weights: Path, device: str, dtype: str, adaptor: Path | None, config: Any) -> Any:
    """The VADor path: its encoder (the one the VADor folder carries, else stage 1's weights; the stage-2
    ``config`` for videollama features), and with ``adaptor`` the LLM ``config`` names to answer."""
    from callm.device import parse_dtype, pick_device
    from callm.vador.features import encoder_for
    from callm.vador.online import VADorDetector
    from callm.vador.weights import load as load_vador
    from callm.vador.weights import own_encoder

    weights = load_vador(vador)
    torch_device = pick_device(device)
    encoder = encoder_for(
        weights.features, torch_device, parse_dtype(dtype, torch_device), own_encoder(vador) or ae_weights, config
    )
    if adaptor is None:
        return VADorDetector(encoder, weights)
    from callm.vador.adaptor import AdaptorLLM

    quiet_transformers()
    return VADorDetector(encoder, weights, answerer=AdaptorLLM.load(adaptor, weights, config))


def _stage2(config: Any, calls: str, fps: float) -> Stage2:
    from callm.cascade import Stage2
    from callm.vlm.explain import Explainer

    quiet_transformers()
    return Stage2(Explainer.from_config(config), calls, fps)  # type: ignore[arg-type]


def _explainers_described(config: Any, calls: str, vador: Path | None, adaptor: Path | None) -> dict[str, Any]:
    """What the explainers are, for a scan's resume check: another model or config changes every answer."""
    import dataclasses
    import hashlib
    import json

    from callm.files import file_sha1

    described: dict[str, Any] = {}
    if config is not None:
        text = json.dumps(dataclasses.asdict(config), sort_keys=True, default=str)
        described["vlm"] = {"config_sha1": hashlib.sha1(text.encode()).hexdigest(), "calls": calls}
    for name, folder in (("vador", vador), ("adaptor", adaptor)):
        if folder is not None:
            described[name] = sorted(file_sha1(p) for p in Path(folder).glob("*.safetensors"))
    return described


def _scan(
    paths: list[Path], out: Path, recipe: Stage1Recipe, engine: str, workers: int, address: str | None,
    retry_errors: bool, explainers: list[ExplainStep], described: dict[str, Any],
) -> None:  # fmt: skip
    from callm.report import scan_table
    from callm.report.html import build_report
    from callm.scan import scan

    with make_progress() as progress:
        summary = scan(
            paths, out, recipe, engine, workers, address, retry_errors, explainers, ScanBars(progress), described,  # type: ignore[arg-type]
        )  # fmt: skip
    report = build_report(out)
    console.print(scan_table(summary))
    console.print(f"results in {out}/ (summary.jsonl, summary.csv, videos/); report: {report}")
    for path, error in summary.failures:
        err_console.print(f"callm: failed: {error if error.startswith(path) else f'{path}: {error}'}", markup=False)
    if summary.interrupted:
        err_console.print("callm: interrupted; rerun the same command to continue", markup=False)
        raise typer.Exit(130)
    if summary.failed:
        raise typer.Exit(1)


@app.command()
@user_errors
def report(run_dir: Annotated[Path, typer.Argument(help="The --out folder of a batch scan or a watch.")]) -> None:
    """Rebuild a scan's report.html from its JSON files, or write a watch folder's from its event store."""
    from callm.report.html import build_report, build_watch_report

    watched = (run_dir / "events.sqlite").is_file()
    console.print(f"wrote {build_watch_report(run_dir) if watched else build_report(run_dir)}")


@app.command("eval")
@user_errors
def eval_command(
    root: Annotated[Path, typer.Argument(help="Dataset root with testing/frames/<video>/ folders.")],
    labels: Annotated[Path | None, typer.Option(help="UCSD .m ground truth or .npy of frame labels.")] = None,
    masks: Annotated[
        Path | None,
        typer.Option(help="Pixel masks: a folder per test video (named as it), one image per frame: localisation."),
    ] = None,
    weights: WeightsOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the metrics as JSON here.")] = None,
    stride: StrideOpt = None,
    threshold: ThresholdOpt = None,
    min_event: MinEventOpt = None,
    max_gap: MaxGapOpt = None,
    follow: FollowOpt = True,
    fps: FpsOpt = 10.0,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Frame-level ROC AUC of stage 1 on a labelled test set, and its gate with the events detect finds."""
    check_output_file(json_out, "--json")
    from callm.evaluate import evaluate
    from callm.report import eval_table, localisation_line, write_json

    if not root.is_dir():
        raise CallmError(f"{root}: not a folder")
    stage1 = _recipe(weights, stride, threshold, min_event, max_gap, follow, fps, device, dtype).build()
    with make_progress() as progress:
        result = evaluate(root, labels, stage1, progress, masks)
    console.print(eval_table(result))
    console.print(
        f"frame AUC {result['frame_auc']:.4f} (raw {result['frame_auc_raw']:.4f}); at the gate, "
        f"{100 * result['anomalous_frames_in_gated_windows']:.1f}% of abnormal and "
        f"{100 * result['normal_frames_in_gated_windows']:.1f}% of normal frames reach stage 2"
    )
    if "localisation" in result:
        console.print(localisation_line(result["localisation"]))
    if json_out is not None:
        write_json(json_out, result)
