"""VAD-LLaMA's phase 3 with tiny models: `callm finetune --adaptor` lowers the loss and changes the adaptor alone,
its loss covers the answer tokens and nothing else, and `detect --explainer ltc --adaptor` answers with the LLM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import assert_user_error
from synthetic import make_frames, write_video
from typer.testing import CliRunner

from callm.cli import app
from callm.errors import CallmError
from callm.inspect import inspect_weights
from callm.vador import phase3
from callm.vador.adaptor import (
    DEFAULT_QUESTION,
    Adaptor,
    AdaptorConfig,
    AdaptorLLM,
    AdaptorPrompt,
    load_adaptor,
    state_fingerprint,
)
from callm.vador.features import FeatureIndex
from callm.vador.online import OnlineScorer, template_answer
from callm.vador.weights import load
from callm.vlm.config import load_config
from callm.vlm.explain import generation_options
from callm.vlm.model import IGNORE_INDEX
from callm.vlm.weights.llm import load_language_model

CPU = ["--device", "cpu", "--dtype", "fp32"]
VADOR_TRAIN = ["--epochs", "4", "--lr", "3e-3", "--batch-size", "4"]
PHASE3 = ["--epochs", "60", "--batch-size", "4", "--lr", "0.05", "--save-every", "20"]


def invoke(*args: str | Path) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return " ".join(result.stdout.split())  # rich may wrap lines


@pytest.fixture(scope="module")
def vador_run(weights_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two normal and two abnormal videos, their `ae` features, and phase-1 and phase-2 VADors trained on them."""
    root = tmp_path_factory.mktemp("phase3")
    for seed in range(2):
        write_video(root / "videos" / "Normal" / f"n{seed}.avi", make_frames(48, seed=seed))
        write_video(root / "videos" / "Abnormal" / f"a{seed}.avi", make_frames(48, seed=seed + 20, intruder=(16, 40)))
    paths = {name: root / name for name in ("videos", "features", "phase1", "phase2")}
    invoke("features", paths["videos"], "--weights", weights_dir, "--out", paths["features"], *CPU)
    invoke("train-vador", paths["features"], "--out", paths["phase1"], "--phase", "1", *VADOR_TRAIN)
    invoke(
        "train-vador", paths["features"], "--out", paths["phase2"], "--phase", "2", "--init", paths["phase1"],
        *VADOR_TRAIN,
    )  # fmt: skip
    return paths


def full_state(**modules: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v.detach().clone() for name, m in modules.items() for k, v in m.state_dict().items()}


@pytest.fixture(scope="module")
def phase3_run(vador_run: dict[str, Path], lavis_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`callm finetune --adaptor` through the CLI, watched: the VADor, LLM and adaptor it trains, before and after."""
    out = tmp_path_factory.mktemp("adaptor") / "adaptor"
    seen: dict[str, Any] = {}
    real_load_lm, real_train_steps, real_vador = phase3.load_language_model, phase3.train_steps, load

    def load_lm(config: Any) -> Any:
        seen["lm"], report = real_load_lm(config)
        return seen["lm"], report

    def train_steps(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        seen["adaptor"] = module
        seen["before"] = full_state(vador=seen["vador"].model, llm=seen["lm"].llm, adaptor=module)
        return real_train_steps(module, *args, **kwargs)

    def load_vador(path: Path) -> Any:
        seen["vador"] = real_vador(path)
        return seen["vador"]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(phase3, "load_language_model", load_lm)
        patch.setattr(phase3, "train_steps", train_steps)
        patch.setattr("callm.vador.weights.load", load_vador)
        seen["stdout"] = invoke(
            "finetune", "--adaptor", "--vador", vador_run["phase2"], "--features", vador_run["features"],
            "--vlm", lavis_config, "--out", out, *PHASE3,
        )  # fmt: skip
    seen["after"] = full_state(vador=seen["vador"].model, llm=seen["lm"].llm, adaptor=seen["adaptor"])
    seen["out"] = out
    return seen


def test_phase_three_lowers_the_loss_and_moves_only_the_adaptor(phase3_run: Any, vador_run: dict[str, Path]) -> None:
    out = phase3_run["out"]
    meta = json.loads((out / "adaptor.json").read_text())
    training = meta["training"]
    assert training["videos"] == 4 and training["steps"] == len(training["losses"]) == 60
    # One batch holds all four videos, so each step's loss is the loss on all of them. Three clip tokens steer a
    # frozen random LLM less than Video-LLaMA's 32 video tokens do, hence a smaller drop than `finetune`'s test.
    losses = training["losses"]
    assert losses[-1] < 0.85 * losses[0] and np.mean(losses[-5:]) < np.mean(losses[-10:-5]) < losses[0], losses
    assert "adaptor trained 60 steps on 4 videos" in phase3_run["stdout"]

    before, after = phase3_run["before"], phase3_run["after"]
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"adaptor.proj.weight", "adaptor.proj.bias"}  # the VADor and the LLM are untouched
    assert any(k.startswith("llm.") for k in before) and any(k.startswith("vador.predictor.") for k in before)
    assert all(not p.requires_grad for p in phase3_run["lm"].llm.parameters())

    # Safetensors + JSON, naming the VADor, its features and the prompt it was trained in; it loads back equal.
    vador = load(vador_run["phase2"])
    assert meta["kind"] == "callm-vador-adaptor" and meta["config"] == {"dim": 16, "width": 32}
    assert meta["vador"] == state_fingerprint(vador.model) and meta["features"] == vador.features
    assert meta["prompt"] == {"template": "vicuna", "question": DEFAULT_QUESTION, "system": ""}
    assert all(torch.equal(v, after[f"vador.{k}"]) for k, v in vador.model.state_dict().items())
    reloaded = load_adaptor(out).model.state_dict()
    assert all(torch.equal(reloaded[k.removeprefix("adaptor.")], v) for k, v in after.items() if "adaptor." in k)
    assert (out / "checkpoint" / "state.safetensors").is_file()
    info = inspect_weights(out)  # `callm weights check` knows it
    assert (info.kind, info.loadable, info.parameters) == ("callm-vador-adaptor", True, 2 * 16 * 32 + 32)


@pytest.mark.parametrize("config_fixture", ["lavis_config", "hf_config"])  # vicuna and llama2 templates
def test_the_adaptor_loss_covers_the_answer_tokens_and_nothing_else(
    config_fixture: str, request: pytest.FixtureRequest
) -> None:
    config = load_config(request.getfixturevalue(config_fixture))
    lm, _ = load_language_model(config)
    tokenizer = lm.tokenizer
    torch.manual_seed(0)
    adapted = AdaptorLLM(
        Adaptor(AdaptorConfig(dim=4, width=32)), lm, AdaptorPrompt(config.template), generation_options(config)
    )
    pairs, starts = torch.randn(3, 8), [0.0, 1.6, 3.2]
    answer = "yes . a cart on the walkway ."
    example = adapted.example(pairs, starts, answer, 256, "video")
    embeds, labels = lm.teacher_forcing(example.prompt, example.answer_ids, adapted.tokens(pairs))

    # The exact mask: prompt text (BOS first), one position per clip, prompt text, all ignored; then the answer and
    # the template's reply end, all learned.
    prompt = adapted.prompt_text(starts)
    assert "<Video><ImageHere></Video> The video contains 3 clips starting at 0.0, 1.6, 3.2 seconds." in prompt
    before, after = prompt.split("<ImageHere>")
    n_before = len(tokenizer(before).input_ids)
    n_prompt = n_before + 3 + len(tokenizer(after, add_special_tokens=False).input_ids)
    expected_answer = tokenizer(answer + lm.template.reply_end, add_special_tokens=False).input_ids
    assert labels.tolist() == [IGNORE_INDEX] * n_prompt + expected_answer
    # The clip tokens sit where the placeholder was, one per clip, as the adaptor makes them.
    with torch.no_grad():
        assert torch.equal(embeds[0, n_before : n_before + 3], adapted.adaptor(pairs))
        logits = lm.llm(inputs_embeds=embeds).logits[0]
        loss = adapted.loss([example])
    predicted = logits[n_prompt - 1 : -1]  # position t predicts token t + 1
    expected = torch.nn.functional.cross_entropy(predicted, torch.tensor(expected_answer))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_detect_answers_with_the_llm_through_the_adaptor(
    phase3_run: Any, vador_run: dict[str, Path], lavis_config: Path, weights_dir: Path, tmp_path: Path
) -> None:
    video = vador_run["videos"] / "Abnormal" / "a0.avi"
    args = [
        "detect", video, "-w", weights_dir, "--explainer", "ltc", "--vador", vador_run["phase2"],
        "--adaptor", phase3_run["out"], "--vlm", lavis_config, *CPU,
    ]  # fmt: skip
    invoke(*args, "--json", tmp_path / "a.json")
    invoke(*args, "--json", tmp_path / "b.json")
    ltc, again = (json.loads((tmp_path / name).read_text())["ltc"] for name in ("a.json", "b.json"))
    assert ltc["answer_source"] == "llm" and ltc == again  # greedy: the same answer every time

    # The answer is the LLM's greedy reply to the adaptor's tokens of the video's clips, the inputs phase 3 trained
    # on (the stored features of the same video, scored online), not the template's.
    vador = load(vador_run["phase2"])
    entry = next(v for v in FeatureIndex.read(vador_run["features"]).videos if v.name == "a0.avi")
    scorer = OnlineScorer(vador.model)
    pairs = torch.stack([scorer.step(row).pair for row in entry.load()])
    adapted = AdaptorLLM.load(phase3_run["out"], vador, load_config(lavis_config))
    starts = [start / entry.fps for start, _ in entry.clips]
    expected = adapted.lm.reply(
        adapted.lm.embed_prompt(adapted.prompt_text(starts), adapted.tokens(pairs)), adapted.options
    )
    assert ltc["answer"] == expected and expected.strip()
    assert ltc["answer"] != template_answer([]) and not ltc["answer"].startswith("Yes, there are anomalies")


def test_without_an_adaptor_the_answer_stays_the_template(
    vador_run: dict[str, Path], weights_dir: Path, tmp_path: Path
) -> None:
    video = vador_run["videos"] / "Abnormal" / "a0.avi"
    args = ["detect", video, "-w", weights_dir, "--explainer", "ltc", "--vador", vador_run["phase2"], *CPU]
    invoke(*args, "--json", tmp_path / "d.json")
    assert json.loads((tmp_path / "d.json").read_text())["ltc"]["answer_source"] == "template"


def test_the_adaptor_is_refused_where_it_does_not_fit(
    phase3_run: Any, vador_run: dict[str, Path], lavis_config: Path, hf_config: Path, weights_dir: Path
) -> None:
    runner = CliRunner()
    video = vador_run["videos"] / "Normal" / "n0.avi"
    base = ["detect", str(video), "-w", str(weights_dir), *CPU]
    adaptor = ["--adaptor", str(phase3_run["out"])]

    def ltc(vador: Path, *extra: str) -> Any:
        return runner.invoke(app, [*base, "--explainer", "ltc", "--vador", str(vador), *adaptor, *extra])

    assert_user_error(runner.invoke(app, [*base, *adaptor, "--vlm", str(lavis_config)]), "--adaptor is for")
    assert_user_error(ltc(vador_run["phase2"]), "need a stage-2 config")
    assert_user_error(ltc(vador_run["phase1"], "--vlm", str(lavis_config)), "trained behind another VADor")
    assert_user_error(ltc(vador_run["phase2"], "--vlm", str(hf_config)), "trained with the vicuna template")
    not_adaptor = [*base, "--explainer", "ltc", "--vador", str(vador_run["phase2"]), "--vlm", str(lavis_config)]
    assert_user_error(runner.invoke(app, [*not_adaptor, "--adaptor", str(vador_run["phase2"])]), "not a VADor adaptor")


def test_finetune_adaptor_refuses_mixed_up_options(
    phase3_run: Any, vador_run: dict[str, Path], lavis_config: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    common = ["finetune", "--vlm", str(lavis_config), "--out", str(tmp_path / "o")]
    vador = ["--vador", str(vador_run["phase2"]), "--features", str(vador_run["features"])]
    instructions = tmp_path / "i.json"
    instructions.write_text("[]")
    assert_user_error(runner.invoke(app, [*common, "--adaptor"]), "--adaptor needs --vador")
    assert_user_error(runner.invoke(app, [*common, str(instructions), "--adaptor", *vador]), "no instruction files")
    assert_user_error(runner.invoke(app, [*common, *vador]), "go with --adaptor")
    assert_user_error(runner.invoke(app, common), "give instruction files")
    assert_user_error(runner.invoke(app, [*common, "--adaptor", *vador, "--resume"]), "no checkpoint to resume")
    again = [*common[:-1], str(phase3_run["out"]), "--adaptor", *vador, *PHASE3, "--resume", "--lr", "0.5"]
    assert_user_error(runner.invoke(app, again), "trained with other data or settings")
    with pytest.raises(CallmError, match="not a VADor adaptor"):
        load_adaptor(vador_run["phase1"])
