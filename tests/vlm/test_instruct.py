"""`callm instruct`: the documented instruction layout from frame labels, a phrase file and stage-1 events."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_user_error
from synthetic import make_frames, write_frame_folder

from callm.ae.weights import load
from callm.cascade import DetectOptions, Stage1
from callm.cli import app
from callm.errors import CallmError
from callm.files import append_jsonl
from callm.results import format_seconds, time_ranges_text, timed_answer
from callm.vlm.caption import CaptionItem
from callm.vlm.instruct import as_sentence, read_templates
from callm.vlm.prompt import DEFAULT_QUESTION

TEMPLATES = read_templates()
TEMPLATES_TEXT = (Path(__file__).parents[2] / "callm" / "vlm" / "instruct_templates.toml").read_text()
CAPTION = "a person walks on the walkway"
ITEM_KEYS = {"video", "window", "fps", "abnormal", "QA"}


def write_captions(path: Path, videos: list[Path], windows: list[int], fps: float = 10.0) -> Path:
    with append_jsonl(path) as append:
        for video in videos:
            for start in windows:
                append(CaptionItem(str(video), fps, start).record(CAPTION))
    return path


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two 48-frame folders (windows at 0, 16, 32), their captions, and labels marking frames 28-35 of the second."""
    root = tmp_path_factory.mktemp("labelled")
    videos = [
        write_frame_folder(root / "frames" / name, make_frames(48, seed=i)) for i, name in enumerate(("01", "02"))
    ]
    labels = np.zeros(96, np.uint8)
    labels[48 + 28 : 48 + 36] = 1
    np.save(root / "labels.npy", labels)
    return write_captions(root / "captions.jsonl", videos, [0, 16, 32]), root / "labels.npy"


def run_instruct(runner, captions: Path, out: Path, *args: str) -> list[dict]:
    result = runner.invoke(app, ["instruct", str(captions), "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def check_layout(items: list[dict], out: Path) -> None:
    """The documented layout: Video-LLaMA's {"video", "QA": [{"q", "a"}]} plus the window; questions take turns."""
    for number, item in enumerate(items):
        assert ITEM_KEYS <= set(item) <= ITEM_KEYS | {"box"}
        assert (out.parent / item["video"]).resolve().exists() and not Path(item["video"]).is_absolute()
        start, end = item["window"]
        assert end - start == 16 and item["fps"] == 10.0
        [qa] = item["QA"]
        assert qa["q"] == TEMPLATES.questions[number % len(TEMPLATES.questions)]
        assert qa["a"].startswith("Yes" if item["abnormal"] else "No")


def test_from_frame_labels(runner, labelled: tuple[Path, Path], tmp_path: Path) -> None:
    captions, labels = labelled
    out = tmp_path / "sub" / "instruct.json"
    items = run_instruct(runner, captions, out, "--labels", str(labels))
    check_layout(items, out)
    assert [(Path(i["video"]).name, i["window"][0], i["abnormal"]) for i in items] == [
        ("01", 0, False), ("01", 16, False), ("01", 32, False), ("02", 0, False), ("02", 16, True), ("02", 32, True)
    ]  # fmt: skip
    assert items[0]["QA"][0]["a"] == "No. This is normal. A person walks on the walkway."
    assert items[4]["QA"][0]["a"] == "Yes. This is abnormal. A person walks on the walkway."

    timed = run_instruct(runner, captions, tmp_path / "timed.json", "--labels", str(labels), "--answers", "timed")
    assert [i["QA"][0]["a"] for i in timed[3:]] == [
        "No, there are no anomalies.",
        "Yes, there are anomalies from 2.8s to 3.2s.",
        "Yes, there are anomalies from 3.2s to 3.6s.",
    ]


def test_from_a_phrase_file(runner, labelled: tuple[Path, Path], tmp_path: Path) -> None:
    captions, _ = labelled
    phrases = tmp_path / "phrases.csv"
    phrases.write_text(
        "video,start_s,end_s,phrase\n"
        "01,,,Someone is riding a bike.\n"  # the whole video
        f'{Path(json.loads(captions.read_text().splitlines()[3])["video"])},2.0,2.5,"a cart, on the walkway"\n'
    )
    out = tmp_path / "instruct.json"
    items = run_instruct(runner, captions, out, "--phrases", str(phrases))
    check_layout(items, out)
    answers = [i["QA"][0]["a"] for i in items]
    assert answers[:3] == ["Yes. This is abnormal. Someone is riding a bike."] * 3
    assert answers[3:] == [
        "No. This is normal. A person walks on the walkway.",
        "Yes. This is abnormal. A cart, on the walkway.",
        "No. This is normal. A person walks on the walkway.",
    ]


def test_from_stage1_events(runner, clip_dir: Path, weights_dir: Path, tmp_path: Path) -> None:
    videos = [clip_dir / "normal.avi", clip_dir / "intruder.avi"]
    captions = write_captions(tmp_path / "captions.jsonl", videos, [0, 16, 32, 48])
    out = tmp_path / "instruct.json"
    args = ["--stage1", str(weights_dir), "--threshold", "2", "--device", "cpu", "--dtype", "fp32"]
    items = run_instruct(runner, captions, out, *args)
    check_layout(items, out)
    stage1 = Stage1(load(weights_dir), DetectOptions(threshold=2), torch.device("cpu"), torch.float32)
    events = {video.name: stage1.detect(video).events for video in videos}
    assert any(e.start_frame < 44 and e.end_frame >= 24 for e in events["intruder.avi"])  # the intruder is found
    for item in items:
        start, end = item["window"]
        hits = [e for e in events[Path(item["video"]).name] if e.start_frame < end and e.end_frame >= start]
        assert item["abnormal"] == bool(hits)
        answer = item["QA"][0]["a"]
        if not hits:
            assert answer == "No, there are no anomalies." and "box" not in item
            continue
        assert item["box"] == hits[0].box
        times = [float(t) for t in re.findall(r"(\d+(?:\.\d)?)s", answer)]
        assert re.fullmatch(r"Yes, there are anomalies from \S+s to \S+s( and from \S+s to \S+s)*\.", answer)
        assert min(times) >= round(start / 10, 1) and max(times) <= round(end / 10, 1)
        first = hits[0]
        assert times[0] == round(max(first.start_frame, start) / 10, 1)


def test_balance_is_seeded(runner, labelled: tuple[Path, Path], tmp_path: Path) -> None:
    captions, labels = labelled
    args = ["--labels", str(labels), "--balance", "1"]
    first = run_instruct(runner, captions, tmp_path / "a.json", *args)
    again = run_instruct(runner, captions, tmp_path / "b.json", *args)
    assert first == again
    assert sum(i["abnormal"] for i in first) == 2 and sum(not i["abnormal"] for i in first) == 2
    outputs = {
        json.dumps(run_instruct(runner, captions, tmp_path / "c.json", *args, "--seed", str(s))) for s in range(6)
    }
    assert len(outputs) > 1  # the seed picks which normal windows stay


def test_edited_templates(runner, labelled: tuple[Path, Path], tmp_path: Path) -> None:
    captions, labels = labelled
    templates = tmp_path / "t.toml"
    templates.write_text(
        'questions = ["is there anything abnormal ?"]\n[answers]\nnormal = "no . {caption}"\n'
        'abnormal = "yes . {what} {times}"\ntimed_normal = "no ."\ntimed_abnormal = "yes {times}"\n'
    )
    items = run_instruct(runner, captions, tmp_path / "i.json", "--labels", str(labels), "--templates", str(templates))
    assert {i["QA"][0]["q"] for i in items} == {"is there anything abnormal ?"}
    assert items[0]["QA"][0]["a"] == "no . A person walks on the walkway."
    assert items[5]["QA"][0]["a"] == "yes . A person walks on the walkway. from 3.2s to 3.6s"


def test_bad_inputs_are_one_line(runner, labelled: tuple[Path, Path], tmp_path: Path) -> None:
    captions, labels = labelled
    out = str(tmp_path / "i.json")

    def fails(*args: str, fragment: str) -> None:
        assert_user_error(runner.invoke(app, ["instruct", str(captions), "--out", out, *args]), fragment)

    fails(fragment="exactly one of --labels")
    fails("--labels", str(labels), "--all-normal", fragment="exactly one of --labels")
    fails("--all-normal", "--answers", "poetry", fragment="answers must be one of describe, timed")
    fails("--all-normal", "--balance", "1", fragment="--balance needs abnormal windows")
    short = tmp_path / "short.npy"
    np.save(short, np.zeros(10, np.uint8))
    fails("--labels", str(short), fragment="10 labels but the 2 test videos have 96 frames")
    phrases = tmp_path / "p.csv"
    phrases.write_text("video,start_s,end_s,phrase\n07,,,A car.\n")
    fails("--phrases", str(phrases), fragment="line 2: no captioned video is called '07'")
    phrases.write_text("video,phrase\n01,A car.\n")
    fails("--phrases", str(phrases), fragment="the header video,start_s,end_s,phrase")
    templates = tmp_path / "t.toml"
    templates.write_text(TEMPLATES_TEXT.replace("This is normal. {caption}", "{who}"))
    fails("--all-normal", "--templates", str(templates), fragment="answers.normal uses who")


def test_time_text_helpers() -> None:
    assert format_seconds(1.5) == "1.5s" and format_seconds(2.0) == "2s" and format_seconds(3.04) == "3s"
    assert time_ranges_text([(3.0, 3.5), (1.5, 2.0), (2.0, 2.4)]) == "from 1.5s to 2.4s and from 3s to 3.5s"
    assert timed_answer([(1.5, 2.0)]) == "Yes, there are anomalies from 1.5s to 2s."
    assert timed_answer([]) == "No, there are no anomalies."
    assert (
        as_sentence("  a man  walks ") == "A man walks." and as_sentence("Stop!") == "Stop!" and as_sentence("") == ""
    )


def test_the_shipped_templates_ask_first_what_detect_asks() -> None:
    assert TEMPLATES.questions[0] == DEFAULT_QUESTION
    assert len(TEMPLATES.questions) > 1


def test_every_question_asks_whether_something_is_abnormal(tmp_path: Path) -> None:
    """Yes must mean an anomaly in every question: the shipped set, and a set that asks "is it normal?" is refused."""
    assert all(any(w in q for w in ("abnormal", "anomal", "unusual", "out of place")) for q in TEMPLATES.questions)
    inverted = tmp_path / "t.toml"
    answers = "\n".join(f'{k} = "{v}"' for k, v in TEMPLATES.answers.items())
    inverted.write_text(f'questions = ["Is this normal? Answer yes if something is abnormal."]\n[answers]\n{answers}\n')
    with pytest.raises(CallmError, match="asks whether something is normal"):
        read_templates(inverted)


def test_the_shipped_timed_answers_are_vad_llamas() -> None:
    """`callm instruct`'s shipped timed answers and the VADor's answers are the same texts."""
    from callm.results import TIMED_ABNORMAL, TIMED_NORMAL

    assert (TEMPLATES.answers["timed_abnormal"], TEMPLATES.answers["timed_normal"]) == (TIMED_ABNORMAL, TIMED_NORMAL)
