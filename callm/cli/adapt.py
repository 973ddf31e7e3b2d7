"""Adapting stage 2 to a site, CALLM's recipe: caption, instruct, finetune, eval-vlm."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from callm.cli.common import (
    DeviceOpt,
    DtypeOpt,
    FpsOpt,
    Load8bitOpt,
    ThresholdOpt,
    VlmDeviceOpt,
    VlmDtypeOpt,
    VlmOpt,
    app,
    check_output_file,
    quiet_transformers,
    user_errors,
    vlm_config,
)
from callm.console import console, make_progress
from callm.errors import CallmError
from callm.video import check_fps

if TYPE_CHECKING:
    from callm.vlm.config import VLMConfig
    from callm.vlm.finetune import LoopSettings

PANEL = "Adapt stage 2 to a site (CALLM)"


@app.command(rich_help_panel=PANEL)
@user_errors
def caption(
    data: Annotated[list[Path], typer.Argument(help="Videos, frame folders, or folders of them.")],
    model: Annotated[str, typer.Option("--model", "-m", help="BLIP-2: an HF folder or hub id.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Captions file (JSON lines) to write or complete.")],
    every: Annotated[
        int, typer.Option(min=1, help="Frames between captioned windows (16 = stage 1's tiling of the video).")
    ] = 16,
    prompt: Annotated[str, typer.Option(help='e.g. "Question: what is happening? Answer:" (default: none).')] = "",
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 30,
    fps: FpsOpt = 10.0,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Zero-shot BLIP-2 captions of each 16-frame window's 9th frame; rerunning completes the file."""
    check_output_file(out, "--out")
    check_fps(fps)
    from callm.device import parse_dtype, pick_device
    from callm.vlm.caption import Blip2Captioner, CaptionOptions, caption_videos

    quiet_transformers()
    options = CaptionOptions(
        every=every, batch_size=batch_size, prompt=prompt, max_new_tokens=max_new_tokens, folder_fps=fps
    )
    torch_device = pick_device(device)
    captioner = Blip2Captioner(model, torch_device, parse_dtype(dtype, torch_device), options)
    with make_progress() as progress:
        summary = caption_videos(data, out, captioner, progress)
    console.print(
        f"{out}: {summary.captioned} new caption(s), {summary.skipped} already there, {summary.videos} video(s)",
        markup=False,
    )


@app.command(rich_help_panel=PANEL)
@user_errors
def instruct(
    captions: Annotated[Path, typer.Argument(help="Captions file written by callm caption.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Instruction file (JSON) to write.")],
    labels: Annotated[Path | None, typer.Option(help="Frame labels: UCSD .m or .npy, as callm eval reads.")] = None,
    phrases: Annotated[
        Path | None, typer.Option(help="CSV video,start_s,end_s,phrase: what is abnormal where.")
    ] = None,
    stage1: Annotated[Path | None, typer.Option(help="Stage-1 weights: its events mark the abnormal windows.")] = None,
    all_normal: Annotated[bool, typer.Option(help="Every window is normal (e.g. the training footage).")] = False,
    answers: Annotated[
        str | None, typer.Option(help="'describe' (CALLM) or 'timed' (VAD-LLaMA); default: timed with --stage1.")
    ] = None,
    templates: Annotated[Path | None, typer.Option(help="Question and answer templates (TOML).")] = None,
    balance: Annotated[
        float | None, typer.Option(min=0, help="Keep at most this many normal windows per abnormal one.")
    ] = None,
    seed: int = 0,
    threshold: ThresholdOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Turn captions and what is known to be abnormal into instruction-tuning data for callm finetune."""
    check_output_file(out, "--out")
    from callm.vlm.caption import read_captions
    from callm.vlm.instruct import (
        answer_style,
        build_instructions,
        caption_videos_of,
        label_spans,
        phrase_spans,
        read_templates,
        stage1_spans,
        write_instructions,
    )

    given = [name for name, value in (("--labels", labels), ("--phrases", phrases), ("--stage1", stage1)) if value]
    if len(given) + all_normal != 1:
        raise CallmError("give exactly one of --labels, --phrases, --stage1 and --all-normal")
    style = answer_style(answers or ("timed" if stage1 else "describe"))
    chosen_templates = read_templates(templates)
    records = read_captions(captions)
    if not records:
        raise CallmError(f"{captions}: holds no captions")
    videos = caption_videos_of(records)
    with make_progress() as progress:
        if labels:
            spans = label_spans(videos, labels)
        elif phrases:
            spans = phrase_spans(videos, phrases)
        elif stage1:
            from callm.ae.weights import load
            from callm.cascade import DetectOptions, Stage1
            from callm.device import parse_dtype, pick_device

            torch_device = pick_device(device)
            model = Stage1(
                load(stage1, torch_device),
                DetectOptions(threshold=threshold),
                torch_device,
                parse_dtype(dtype, torch_device),
            )
            spans = stage1_spans(videos, model.detect, progress)
        else:
            spans = {}
    items, summary = build_instructions(records, spans, out, style, chosen_templates, balance, seed)
    write_instructions(out, items)
    table = Table(title=f"Instructions written to {out}")
    for column in ("videos", "windows", "normal", "abnormal", "left out (balance)", "written"):
        table.add_column(column, justify="right")
    table.add_row(
        *(str(v) for v in (summary.videos, summary.windows, summary.normal, summary.abnormal, summary.dropped)),
        str(summary.written),
    )
    console.print(table)


@app.command("finetune", rich_help_panel=PANEL)
@user_errors
def finetune_command(
    vlm: VlmOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the fine-tuned checkpoint and its config.")],
    instructions: Annotated[
        list[Path] | None, typer.Argument(help="Instruction files written by callm instruct (not with --adaptor).")
    ] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 3,
    batch_size: Annotated[int, typer.Option(min=1)] = 4,
    grad_accum: Annotated[int, typer.Option(min=1, help="Micro-batches per optimiser step.")] = 1,
    lr: Annotated[float, typer.Option(help="Peak learning rate (linear warm-up, then cosine to 0).")] = 1e-4,
    warmup: Annotated[float, typer.Option(help="Share of the steps spent warming up.")] = 0.1,
    weight_decay: float = 0.05,
    save_every: Annotated[int, typer.Option(min=1, help="Optimiser steps between checkpoints.")] = 100,
    seed: int = 0,
    train_video_qformer: Annotated[
        bool, typer.Option(help="Also train the video Q-Former, its query tokens and frame positions.")
    ] = False,
    mix: Annotated[
        Path | None, typer.Option(help="General-purpose instruction file (e.g. VideoChat's) against forgetting.")
    ] = None,
    mix_ratio: Annotated[float, typer.Option(min=0, help="Items drawn from --mix per site item.")] = 0.5,
    adaptor: Annotated[
        bool, typer.Option("--adaptor", help="VAD-LLaMA phase 3: train the VADor's adaptor to the LLM instead.")
    ] = False,
    vador: Annotated[Path | None, typer.Option(help="--adaptor: the trained VADor (callm train-vador).")] = None,
    features: Annotated[
        list[Path] | None, typer.Option(help="--adaptor: features folders (callm features) it scores; repeatable.")
    ] = None,
    question: Annotated[str | None, typer.Option(help="--adaptor: the question its answers reply to.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.")] = False,
    vlm_dtype: VlmDtypeOpt = None,
    vlm_device: VlmDeviceOpt = None,
) -> None:
    """Fine-tune Video-LLaMA's llama_proj (the LLM and frame encoder frozen) on instruction files; with --adaptor,
    VAD-LLaMA's adaptor from the VADor's clips to the LLM on the VADor's own time-stamped answers."""
    from callm.vlm.finetune import FinetuneSettings, LoopSettings

    loop = LoopSettings(
        epochs=epochs,
        batch_size=batch_size,
        grad_accum=grad_accum,
        lr=lr,
        warmup=warmup,
        weight_decay=weight_decay,
        save_every=save_every,
        seed=seed,
    )
    config = vlm_config(vlm, vlm_dtype, vlm_device, False)
    if adaptor:
        if instructions or mix or train_video_qformer:
            raise CallmError("--adaptor trains on VADor scores: no instruction files, --mix or --train-video-qformer")
        if vador is None or not features:
            raise CallmError("--adaptor needs --vador VADOR_DIR and --features FEATURES_DIR")
        _finetune_adaptor(vador, features, config, out, loop, question, resume)
        return
    if vador is not None or features or question is not None:
        raise CallmError("--vador, --features and --question go with --adaptor")
    if not instructions:
        raise CallmError("give instruction files (callm instruct), or --adaptor with --vador and --features")
    from callm.vlm.explain import Explainer
    from callm.vlm.finetune import CONFIG_FILE, VIDEO_LLAMA_FILE, finetune, read_instructions

    settings = FinetuneSettings(
        **dataclasses.asdict(loop), train_video_qformer=train_video_qformer, mix_ratio=mix_ratio if mix else 0.0
    )
    site = [item for path in instructions for item in read_instructions(path)]
    general = read_instructions(mix) if mix else []
    quiet_transformers()
    explainer = Explainer.from_config(config)
    with make_progress() as progress:
        result = finetune(explainer, site, out, settings, general, resume, progress)
    losses = result.losses
    console.print(
        f"saved {out / VIDEO_LLAMA_FILE}: {result.steps} steps on {result.site_examples} site + "
        f"{result.mix_examples} mixed examples, loss {losses[0]:.4f} -> {losses[-1]:.4f}; "
        f"use it with: callm detect VIDEO --explain --vlm {out / CONFIG_FILE}",
        markup=False,
    )


def _finetune_adaptor(
    vador: Path,
    features: list[Path],
    config: VLMConfig,
    out: Path,
    settings: LoopSettings,
    question: str | None,
    resume: bool,
) -> None:
    from callm.vador.adaptor import DEFAULT_QUESTION
    from callm.vador.phase3 import finetune_adaptor
    from callm.vador.weights import load

    quiet_transformers()
    with make_progress() as progress:
        weights = finetune_adaptor(
            load(vador), features, config, out, settings, question or DEFAULT_QUESTION, resume, progress
        )
    training, losses = weights.training, weights.training["losses"]
    console.print(
        f"saved {out}: adaptor trained {training['steps']} steps on {training['videos']} videos "
        f"({training['answers_with_anomalies']} with anomalies by the VADor), loss {losses[0]:.4f} -> "
        f"{losses[-1]:.4f}; use it with: callm detect VIDEO --explainer ltc --vador {vador} --adaptor {out} "
        "--vlm CONFIG",
        markup=False,
    )


@app.command("eval-vlm", rich_help_panel=PANEL)
@user_errors
def eval_vlm(
    data: Annotated[
        Path, typer.Argument(help="A dataset root (testing/frames/<video>/, as callm eval) or a 'VIDEO LABEL' list.")
    ],
    vlm: VlmOpt,
    labels: Annotated[Path | None, typer.Option(help="Frame labels (.m / .npy) of a dataset root.")] = None,
    question: Annotated[str | None, typer.Option(help="Question to ask (default: the config's).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the metrics and answers as JSON here.")] = None,
    fps: FpsOpt = 10.0,
    vlm_dtype: VlmDtypeOpt = None,
    vlm_device: VlmDeviceOpt = None,
    load_8bit: Load8bitOpt = False,
) -> None:
    """Video-level accuracy of stage 2's yes/no answers on a labelled set (abnormal: any abnormal frame)."""
    check_output_file(json_out, "--json")
    check_fps(fps)
    from callm.files import write_json_atomic
    from callm.vlm.evaluate import evaluate_vlm, labelled_dataset, read_video_list
    from callm.vlm.explain import Explainer

    if data.is_dir():
        videos = labelled_dataset(data, labels, fps)
    elif labels is not None:
        raise CallmError("--labels goes with a dataset root; a video list carries its own labels")
    elif data.is_file():
        videos = read_video_list(data)
    else:
        raise CallmError(f"{data}: no such file or directory")
    quiet_transformers()
    explainer = Explainer.from_config(vlm_config(vlm, vlm_dtype, vlm_device, load_8bit))
    with make_progress() as progress:
        result = evaluate_vlm(explainer, videos, question, fps, progress)
    table = Table(title=f"Stage-2 video-level answers ({vlm})")
    for column in ("video", "label", "verdict", "correct", "answer"):
        table.add_column(column)
    for row in result["per_video"]:
        table.add_row(
            Path(row["video"]).name,
            "abnormal" if row["abnormal"] else "normal",
            row["verdict"],
            {True: "yes", False: "no", None: "-"}[row["correct"]],
            row["answer"],
        )
    console.print(table)

    def share(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    console.print(
        f"accuracy {share(result['accuracy'])} ({result['correct']} of {result['videos']} videos); abnormal videos "
        f"{share(result['abnormal_accuracy'])} of {result['abnormal_videos']}, normal videos "
        f"{share(result['normal_accuracy'])} of {result['normal_videos']}; "
        f"{result['unanswered']} unanswered (no yes or no; counted as not right); "
        f"accuracy of the answered {share(result['accuracy_of_answered'])}",
        markup=False,
    )
    if json_out is not None:
        write_json_atomic(json_out, result)
