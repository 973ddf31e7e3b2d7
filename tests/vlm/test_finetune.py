"""`callm finetune`: the loss drops, only the trainable parameters move, the checkpoint loads in `detect --explain`,
a killed run resumes to the same weights, and the loss covers the answer tokens and nothing else."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_user_error
from synthetic import make_frames, write_frame_folder
from typer.testing import CliRunner

from callm.cli import app
from callm.errors import CallmError
from callm.files import append_jsonl
from callm.vlm import finetune as finetune_module
from callm.vlm.caption import CaptionItem
from callm.vlm.config import load_config
from callm.vlm.explain import Explainer
from callm.vlm.finetune import FinetuneSettings, finetune, read_instructions
from callm.vlm.model import IGNORE_INDEX
from callm.vlm.weights.files import read_checkpoint

# Answers in the tiny tokenizer's words, so every answer token is a real one (no <unk>).
TEMPLATES = (
    'questions = ["is there anything abnormal in this video ?", "is anything dangerous happening ?"]\n'
    "[answers]\n"
    'normal = "no . people walk on the walkway ."\n'
    'abnormal = "yes . a cart on the walkway ."\n'
    'timed_normal = "no ."\n'
    'timed_abnormal = "yes {times}"\n'
)
FAST = ["--device", "cpu", "--dtype", "fp32"]
TRAIN = ["--epochs", "3", "--batch-size", "2", "--lr", "0.01", "--save-every", "2", "--train-video-qformer"]


@pytest.fixture(scope="module")
def instructions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 windows of two 48-frame folders, the second with an intruder in frames 16-39, through `callm instruct`."""
    root = tmp_path_factory.mktemp("site")
    videos = [
        write_frame_folder(root / "frames" / "01", make_frames(48, seed=3)),
        write_frame_folder(root / "frames" / "02", make_frames(48, seed=3, intruder=(16, 40))),
    ]
    labels = np.zeros(96, np.uint8)
    labels[48 + 16 : 48 + 40] = 1
    np.save(root / "labels.npy", labels)
    with append_jsonl(root / "captions.jsonl") as append:
        for video in videos:
            for start in (0, 16, 32):
                append(CaptionItem(str(video), 10.0, start).record("people walk"))
    (root / "templates.toml").write_text(TEMPLATES)
    out = root / "data" / "instruct.json"
    args = ["instruct", str(root / "captions.jsonl"), "--labels", str(root / "labels.npy"), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--templates", str(root / "templates.toml")])
    assert result.exit_code == 0, result.output
    return out


def state_of(explainer: Explainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in explainer.model.state_dict().items()}


def changed_keys(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    assert before.keys() == after.keys()
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_finetune_lowers_the_loss_moves_only_llama_proj_and_detect_loads_it(
    runner, instructions: Path, lavis_config: Path, clip_dir: Path, weights_dir: Path, tmp_path: Path
) -> None:
    explainer = Explainer.from_config(lavis_config)
    before = state_of(explainer)
    out = tmp_path / "tuned"
    settings = FinetuneSettings(epochs=12, batch_size=2, lr=0.05, save_every=10)
    result = finetune(explainer, read_instructions(instructions), out, settings)

    assert result.steps == len(result.losses) == 36  # a few dozen: 12 epochs of 3 steps
    first, last = np.mean(result.losses[:4]), np.mean(result.losses[-4:])
    assert last < 0.8 * first, result.losses
    trainable = {"video_qformer.llama_proj.weight", "video_qformer.llama_proj.bias"}
    assert set(result.trainable) == trainable
    assert changed_keys(before, state_of(explainer)) == trainable
    assert all(not p.requires_grad for p in explainer.model.llm.parameters())

    # The official layout: {"model": {...}} with Video-LLaMA's own key names, all of the video branch.
    saved = torch.load(out / "video_llama.pth", weights_only=True)
    assert set(saved) == {"model"} and "llama_proj.weight" in saved["model"]
    assert any(k.startswith("video_Qformer.bert.encoder.layer.0.") for k in saved["model"])
    assert torch.equal(saved["model"]["llama_proj.weight"], explainer.model.video_qformer.llama_proj.weight)
    report = json.loads((out / "finetune.json").read_text())
    assert report["steps"] == 36 and report["trainable_parameters"] == 32 * 32 + 32

    # The written config is the training one with the new checkpoint, and detect --explain runs on it.
    config, base = load_config(out / "vlm.toml"), load_config(lavis_config)
    assert Path(config.video_llama) == out / "video_llama.pth"
    for field in dataclasses.fields(config):
        if field.name in ("vision", "qformer", "llm"):
            assert Path(getattr(config, field.name)).resolve() == Path(getattr(base, field.name)).resolve()
        elif field.name != "video_llama":
            assert getattr(config, field.name) == getattr(base, field.name), field.name
    reloaded = Explainer.from_config(config).model.video_qformer.state_dict()
    assert changed_keys(reloaded, explainer.model.video_qformer.state_dict()) == set()
    json_out = tmp_path / "d.json"
    args = ["detect", str(clip_dir / "intruder.avi"), "-w", str(weights_dir), "--threshold", "2", *FAST]
    result = runner.invoke(app, [*args, "--explain", "--vlm", str(out / "vlm.toml"), "--json", str(json_out)])
    assert result.exit_code == 0, result.output
    events = json.loads(json_out.read_text())["events"]
    assert events and all(e["verdict"] in ("anomaly", "normal") for e in events)


def test_the_video_qformer_option_trains_the_whole_video_branch_only(
    instructions: Path, lavis_config: Path, tmp_path: Path
) -> None:
    explainer = Explainer.from_config(lavis_config)
    before = state_of(explainer)
    settings = FinetuneSettings(epochs=1, batch_size=3, lr=1e-2, train_video_qformer=True)
    result = finetune(explainer, read_instructions(instructions), tmp_path / "out", settings)
    changed = changed_keys(before, state_of(explainer))
    assert changed == set(result.trainable)
    assert all(k.startswith("video_qformer.") for k in changed)
    assert {"video_qformer.video_query_tokens", "video_qformer.video_frame_position_embedding.weight"} <= changed
    assert any(k.startswith("video_qformer.video_qformer.encoder.") for k in changed)


def test_a_killed_run_resumes_to_the_weights_of_an_unbroken_one(
    runner, instructions: Path, lavis_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(out: Path, *extra: str):
        return runner.invoke(
            app, ["finetune", str(instructions), "--vlm", str(lavis_config), "--out", str(out), *TRAIN, *extra]
        )

    unbroken = tmp_path / "unbroken"
    assert run(unbroken).exit_code == 0

    real_save = finetune_module.save_checkpoint
    saves: list[int] = []

    def save_then_die(folder, module, optimizer, state):
        real_save(folder, module, optimizer, state)
        saves.append(state["step"])
        if len(saves) == 2:
            raise KeyboardInterrupt

    killed = tmp_path / "killed"
    monkeypatch.setattr(finetune_module, "save_checkpoint", save_then_die)
    assert run(killed).exit_code == 130
    assert saves == [2, 4] and not (killed / "video_llama.pth").exists()
    monkeypatch.setattr(finetune_module, "save_checkpoint", real_save)
    result = run(killed, "--resume")
    assert result.exit_code == 0, result.output

    expected, resumed = (read_checkpoint(p / "video_llama.pth", "test") for p in (unbroken, killed))
    assert expected.keys() == resumed.keys() and all(torch.equal(expected[k], resumed[k]) for k in expected)
    losses = [json.loads((p / "finetune.json").read_text())["losses"] for p in (unbroken, killed)]
    assert losses[0] == losses[1] and len(losses[0]) == 9

    assert_user_error(run(killed, "--resume", "--lr", "0.5"), "trained with other data or settings")
    assert_user_error(run(tmp_path / "new", "--resume"), "no checkpoint to resume from")


def test_mixing_a_general_instruction_file(runner, instructions: Path, lavis_config: Path, tmp_path: Path) -> None:
    site = json.loads(instructions.read_text())
    # VideoChat-style items: a whole video each, no window or fps, several questions per video.
    first, fourth = (str((instructions.parent / site[i]["video"]).resolve()) for i in (0, 3))
    general = [
        {"video": first, "QA": [{"q": "what happens ?", "a": "people walk ."}, {"q": "is it a street ?", "a": "no ."}]},
        {"video": fourth, "QA": [{"q": "who is there ?", "a": "a person ."}]},
    ]
    mix = tmp_path / "general.json"
    mix.write_text(json.dumps(general))
    assert len(read_instructions(mix)) == 3  # one instruction per question
    out = tmp_path / "mixed"
    args = ["finetune", str(instructions), "--vlm", str(lavis_config), "--out", str(out), "--epochs", "1"]
    # In bf16, as on a GPU: the LLM's weights and the autocast; the video branch stays fp32.
    result = runner.invoke(app, [*args, "--mix", str(mix), "--mix-ratio", "0.34", "--vlm-dtype", "bf16"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "finetune.json").read_text())
    assert (report["site_examples"], report["mix_examples"]) == (6, 2)
    assert all(np.isfinite(report["losses"]))
    assert {t.dtype for t in read_checkpoint(out / "video_llama.pth", "test").values()} == {torch.float32}
    assert "loss" in result.stdout and "vlm.toml" in result.stdout


def test_bad_instruction_files_are_one_line(runner, lavis_config: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    for content, fragment in [
        ("{}", "non-empty JSON list"),
        ('[{"video": "a.avi"}]', 'item 1: needs "video"'),
        ('[{"video": "a.avi", "QA": [{"q": "x"}]}]', '"QA" must be a non-empty list'),
        ('[{"video": "a.avi", "QA": [{"q": "x", "a": "y"}], "window": [5, 2]}]', '"window" must be'),
        ("[", "not a JSON file"),
    ]:
        bad.write_text(content)
        with pytest.raises(CallmError, match=fragment):
            read_instructions(bad)
    args = ["finetune", str(bad), "--vlm", str(lavis_config), "--out", str(tmp_path / "o")]
    assert_user_error(runner.invoke(app, args), "not a JSON file")
    bad.write_text('[{"video": "missing.avi", "QA": [{"q": "x", "a": "y"}]}]')
    assert_user_error(runner.invoke(app, args), "missing.avi: no such file or directory")


# ---------------------------------------------------------------------------------------------------------------
# The label mask


@pytest.mark.parametrize("config_fixture", ["lavis_config", "hf_config"])  # vicuna and llama2 templates
def test_the_loss_covers_the_answer_tokens_and_nothing_else(
    config_fixture: str, request: pytest.FixtureRequest
) -> None:
    explainer = Explainer.from_config(request.getfixturevalue(config_fixture))
    model, tokenizer = explainer.model, explainer.model.tokenizer
    answer = "yes . a cart on the walkway ."
    prompt = explainer.prompt([0.0, 0.2, 0.4], "is there anything abnormal ?")
    video = torch.randn(1, 32, model.llm.config.hidden_size)
    embeds, labels = model.teacher_forcing(model.tokenize_prompt(prompt), model.tokenize_answer(answer, 256), video)

    # The exact mask against the tokenised template: prompt text (BOS first), 32 video positions, prompt text,
    # all ignored; then the answer and the template's reply end, all learned.
    before, after = prompt.split("<ImageHere>")
    n_prompt = len(tokenizer(before).input_ids) + 32 + len(tokenizer(after, add_special_tokens=False).input_ids)
    expected_answer = tokenizer(answer + model.template.reply_end, add_special_tokens=False).input_ids
    assert labels.tolist() == [IGNORE_INDEX] * n_prompt + expected_answer
    reply_end = {"vicuna": "###", "llama2": "</s>"}[model.template.name]
    assert tokenizer.decode(labels[n_prompt:]) == f"{answer} {reply_end}"
    assert model.template.reply_end.strip() == model.template.stop  # it learns to stop where answers are cut
    # What the loss sees before the answer is exactly what `detect --explain` sends the model.
    assert torch.equal(embeds[:, :n_prompt], model.embed_prompt(prompt, video))

    # The loss is the mean cross-entropy of predicting the answer tokens, and of nothing else.
    with torch.no_grad():
        logits = model.llm(inputs_embeds=embeds).logits[0]
        loss = model.loss([(embeds, labels)])
    answer_ids = torch.tensor(expected_answer)
    predicted = logits[n_prompt - 1 : -1]  # position t predicts token t + 1
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(predicted, answer_ids).item(), rel=1e-5)

    # Padding a batch changes nothing: a batch's loss is the token-weighted mean of its examples'.
    short_ids = model.tokenize_answer("no .", 256)
    short = model.teacher_forcing(model.tokenize_prompt(prompt), short_ids, video)
    with torch.no_grad():
        short_loss = model.loss([short])
        both = model.loss([(embeds, labels), short])
    n_long, n_short = len(expected_answer), len(short_ids)
    assert both.item() == pytest.approx((loss * n_long + short_loss * n_short).item() / (n_long + n_short), rel=1e-5)
