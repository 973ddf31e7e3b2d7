"""`callm chat` and `Chat`: multi-turn prompts in Video-LLaMA's templates, clips, overflow, transcripts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_user_error
from rich.prompt import Prompt
from synthetic import make_frames, write_video

from callm.ae.events import gated_windows
from callm.cli import app
from callm.errors import CallmError
from callm.results import Detection, Event, read_detection
from callm.video import window_starts
from callm.vlm.chat import Chat, Turn, read_turns
from callm.vlm.explain import Explainer
from callm.vlm.model import ReplyStreamer
from callm.vlm.prompt import PLACEHOLDER

# The frames each clip shows, as the prompt states them (10 fps).
EVENT_1_TIMES = "1.6, 2.0, 2.4, 2.8, 3.2, 3.6, 4.0, 4.4"  # event 1's gated windows 16-47, every 4th frame
EVENT_2_TIMES = "8.0, 8.4, 8.8, 9.2, 9.6, 10.0, 10.4, 10.8"  # event 2's gated windows 80-111
RANGE_TIMES = "1.0, 1.1, 1.2, 1.3, 1.5, 1.6, 1.7, 1.8"  # /at 1-2s: 8 of frames 10-19
VIDEO_TIMES = "0.0, 1.6, 3.2, 4.8, 6.4, 8.0, 9.6, 11.2"  # /video: 8 of 128 frames
EARLIER = "an earlier clip, no longer shown"


def video_message(times: str, question: str, content: str = PLACEHOLDER) -> str:
    return f"<Video>{content}</Video> The video contains 8 frames sampled at {times} seconds.  {question}"


@pytest.fixture(scope="module")
def detection(tmp_path_factory: pytest.TempPathFactory) -> Detection:
    """128 frames (12.8 s at 10 fps) with two intruders, and stage 1's result with two events made by hand, so the
    frames every clip shows are known exactly."""
    first, second = make_frames(128, seed=10, intruder=(20, 36)), make_frames(128, seed=10, intruder=(84, 100))
    first[64:] = second[64:]
    video = write_video(tmp_path_factory.mktemp("chat") / "two.avi", first)
    events = [Event(20, 35, 2.0, 3.6, 28, 2.5, [10, 16, 40, 30]), Event(84, 99, 8.4, 10.0, 90, 2.0, [20, 16, 50, 30])]
    scores = np.zeros(128)
    scores[20:36] = scores[84:100] = 2.0
    return Detection(
        video=str(video),
        fps=10.0,
        num_frames=128,
        frame_size=(48, 64),
        threshold=1.0,
        psnr=np.full(128, 30.0),
        scores=scores,
        events=events,
        window_starts=window_starts(128),
        gated_starts=gated_windows(events, 128),
        seconds=1.0,
    )


@pytest.fixture(scope="module")
def report(detection: Detection, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The detection as `callm detect --json` writes it."""
    path = tmp_path_factory.mktemp("report") / "two.json"
    path.write_text(json.dumps(detection.to_dict()))
    return path


@pytest.fixture(scope="module")
def llama2_explainer(hf_config: Path) -> Explainer:
    return Explainer.from_config(hf_config)


def three_turns(chat: Chat) -> list[Turn]:
    """Two questions about event 1, then one about seconds 1 to 2."""
    turns = [chat.ask("what happens ?"), chat.ask("who is there ?")]
    chat.select_range(1, 2)
    return [*turns, chat.ask("and now ?")]


def test_vicuna_turn_3_keeps_the_history_and_only_the_current_clip_has_video_tokens(
    explainer: Explainer, detection: Detection
) -> None:
    first, second, third = three_turns(Chat(explainer, detection))
    assert first.prompt == f"###Human: {video_message(EVENT_1_TIMES, 'what happens ?')}###Assistant:"
    assert third.prompt == (
        f"###Human: {video_message(EVENT_1_TIMES, 'what happens ?', EARLIER)}"
        f"###Assistant: {first.answer}###Human: who is there ?###Assistant: {second.answer}"
        f"###Human: {video_message(RANGE_TIMES, 'and now ?')}###Assistant:"
    )
    assert (first.view.label, third.view.label) == ("event 1", "1-2 s")
    assert first.view.boxes == ((10, 16, 40, 30),) * 8 and third.view.boxes is None  # no track: the peak box


def test_an_events_view_follows_its_track_and_old_transcripts_keep_their_box(
    explainer: Explainer, detection: Detection
) -> None:
    # The main track moves right 2 px a frame over the event; frames outside it look where it began or ended.
    track = [[f, 10 + 2 * (f - 20), 16, 30 + 2 * (f - 20), 30, 2.0] for f in range(20, 36)]
    event = Event(20, 35, 2.0, 3.6, 28, 2.5, [10, 16, 40, 30], tracks=[track])
    tracked = Detection(**{**detection.__dict__, "events": [event, detection.events[1]]})
    view = Chat(explainer, tracked).view
    expected = {16: 10, 20: 10, 24: 18, 28: 26, 32: 34, 36: 40, 40: 40, 44: 40}
    assert dict(zip(view.frames, (b[0] for b in view.boxes or ()), strict=True)) == expected
    old = {**view.to_dict(), "box": [10, 16, 40, 30]}
    del old["boxes"]
    assert type(view).from_dict(old).boxes == ((10, 16, 40, 30),) * 8


def test_llama2_turn_3_keeps_the_history_and_only_the_current_clip_has_video_tokens(
    llama2_explainer: Explainer, detection: Detection
) -> None:
    first, second, third = three_turns(Chat(llama2_explainer, detection))
    assert third.prompt == (
        f"[INST] <<SYS>>\n\n<</SYS>>\n\n"
        f"{video_message(EVENT_1_TIMES, 'what happens ?', EARLIER)} [/INST] "
        f"{first.answer} </s><s>[INST] who is there ? [/INST] {second.answer} </s>"
        f"<s>[INST] {video_message(RANGE_TIMES, 'and now ?')} [/INST]"
    )


def test_answers_stream_as_generated_and_greedy_answers_repeat(explainer: Explainer, detection: Detection) -> None:
    pieces: list[str] = []
    streamed = Chat(explainer, detection).ask("what happens ?", on_text=pieces.append)
    quiet = Chat(explainer, detection).ask("what happens ?")
    assert streamed.answer == quiet.answer
    assert "".join(pieces).strip() == streamed.answer


def test_the_stream_holds_back_what_may_start_the_stop_text(explainer: Explainer) -> None:
    pieces: list[str] = []
    streamer = ReplyStreamer(explainer.model.tokenizer, "###", pieces.append)
    for text in (" Yes, a cart #", "# and", " C#", " too###Human: more"):
        streamer.on_finalized_text(text)
    streamer.on_finalized_text("", stream_end=True)
    assert pieces == ["Yes, a cart ", "## and", " C", "# too"]


def test_switching_clips(explainer: Explainer, detection: Detection) -> None:
    chat = Chat(explainer, detection)
    assert chat.view.label == "event 1"
    assert chat.select_event(2).timestamps == pytest.approx([8.0 + 0.4 * i for i in range(8)])
    assert chat.select_video().frames == tuple(range(0, 128, 16))
    assert chat.select_range(12, 99).frames == tuple(range(120, 128))  # cut at the video's end
    for bad, message in [
        (lambda: chat.select_event(3), "no event 3: the events are numbered 1 to 2"),
        (lambda: chat.select_event(0), "no event 0"),
        (lambda: chat.select_range(20, 30), "the range starts at 20 s, but the video lasts 12.8 s"),
        (lambda: chat.select_range(5, 4), "ends before it starts"),
        (lambda: chat.select_range(1.01, 1.05), "no frame starts within 1.01-1.05 s"),
    ]:
        with pytest.raises(CallmError, match=message):
            bad()
    assert chat.view.label == "12-12.8 s"  # a refused switch keeps the clip


def prompt_tokens(explainer: Explainer, prompt: str) -> int:
    tokens = explainer.model.tokenize_prompt(prompt)
    return len(tokens.before) + len(tokens.after) + 32  # 32 video tokens


def test_overflow_leaves_out_the_oldest_turns_but_never_the_current_video(
    explainer: Explainer, detection: Detection
) -> None:
    history = [Chat(explainer, detection).ask("what happens ?")]
    chat = Chat(explainer, detection, history)
    history += [chat.ask("who is there ?"), chat.ask("why ?")]
    # Room for the last turn and the new question only: the clip's video message moves to the oldest turn kept.
    expected = (
        f"###Human: {video_message(EVENT_1_TIMES, 'why ?')}###Assistant: {history[2].answer}"
        "###Human: where ?###Assistant:"
    )
    room = prompt_tokens(explainer, expected) + explainer.config.max_new_tokens
    turn = Chat(explainer, detection, history, max_length=room).ask("where ?")
    assert (turn.prompt, turn.turns_left_out) == (expected, 2)
    # One token less: every earlier turn goes; the question keeps its clip.
    turn = Chat(explainer, detection, history, max_length=room - 1).ask("where ?")
    assert (turn.prompt, turn.turns_left_out) == (
        f"###Human: {video_message(EVENT_1_TIMES, 'where ?')}###Assistant:",
        3,
    )
    # A question that cannot fit with its clip is refused, and the conversation is unchanged.
    small = Chat(explainer, detection, history, max_length=40)
    with pytest.raises(CallmError, match="ask a shorter question"):
        small.ask("where ?")
    assert small.history == history


def test_a_report_reads_back_as_its_detection(report: Path, detection: Detection, tmp_path: Path) -> None:
    assert read_detection(report).to_dict() == detection.to_dict()
    (tmp_path / "other.json").write_text('{"video": "x"}')
    with pytest.raises(CallmError, match="not a callm detect JSON file"):
        read_detection(tmp_path / "other.json")


def chat_args(detection: Detection, report: Path, config: Path, *extra: str) -> list[str]:
    return ["chat", detection.video, "--vlm", str(config), "--report", str(report), *extra]


def test_scripted_questions_answer_each_in_json_and_save_a_transcript_that_resumes(
    runner, detection: Detection, report: Path, lavis_config: Path, explainer: Explainer, tmp_path: Path
) -> None:
    saved = tmp_path / "chat.json"
    script = ["what happens ?", "/event 2", "who is there ?", "/at 1-2s", "and now ?", f"/save {saved}"]
    result = runner.invoke(
        app, chat_args(detection, report, lavis_config, *(f"--ask={line}" for line in script), "--json")
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    turns = [Turn.from_dict(turn) for turn in data["turns"]]
    assert [(t.question, t.view.label) for t in turns] == [
        ("what happens ?", "event 1"),
        ("who is there ?", "event 2"),
        ("and now ?", "1-2 s"),
    ]
    assert turns[1].prompt.endswith(f"###Human: {video_message(EVENT_2_TIMES, 'who is there ?')}###Assistant:")
    assert len(data["events"]) == 2 and data["template"] == "vicuna"
    # The transcript saved before the end reloads as the same turns, and the same Python calls give the same answers.
    assert read_turns(saved) == turns
    python = Chat(explainer, detection)
    assert [python.ask("what happens ?").answer] == [turns[0].answer]
    # Resuming continues the history (as much of it as the tiny LLM's 256 tokens hold), earlier clips as text.
    script = ["--resume", str(saved), "--ask", "/video", "--ask", "so ?", "--json"]
    resumed = runner.invoke(app, chat_args(detection, report, lavis_config, *script))
    assert resumed.exit_code == 0, resumed.output
    assert "now asking about whole video: 8 frames sampled at 0.0-11.2 s" in resumed.stderr
    last = Turn.from_dict(json.loads(resumed.stdout)["turns"][-1])
    assert last.prompt.startswith(f"###Human: <Video>{EARLIER}</Video>") and last.turns_left_out < 3
    assert last.prompt.endswith(f"{turns[2].answer}###Human: {video_message(VIDEO_TIMES, 'so ?')}###Assistant:")
    assert last.prompt.count(PLACEHOLDER) == 1


def test_interactive_session_through_stdin(
    runner, detection: Detection, report: Path, hf_config: Path, tmp_path: Path
) -> None:
    saved = tmp_path / "session.json"
    session = [
        "what happens ?",
        "/event 2",
        "who is there ?",
        "/at 30-40s",  # refused: a message, and the conversation goes on
        "/event 9",
        "/at 1-2s",
        "and now ?",
        "/nope",
        f"/save {saved}",
    ]  # then Ctrl-D
    result = runner.invoke(app, chat_args(detection, report, hf_config), input="\n".join(session) + "\n")
    assert result.exit_code == 0, result.output
    turns = read_turns(saved)
    assert [(t.question, t.view.label) for t in turns] == [
        ("what happens ?", "event 1"),
        ("who is there ?", "event 2"),
        ("and now ?", "1-2 s"),
    ]
    assert turns[2].prompt.endswith(f"<s>[INST] {video_message(RANGE_TIMES, 'and now ?')} [/INST]")
    assert result.stdout.count("callm: ") == 3  # one streamed answer per question
    for turn in turns:
        assert f"callm: {turn.answer}" in result.stdout
    assert "Anomalies in two.avi" in result.stdout  # the events table first
    assert result.stderr.splitlines() == [
        "callm: error: the range starts at 30 s, but the video lasts 12.8 s",
        "callm: error: no event 9: the events are numbered 1 to 2 (/events lists them)",
        "callm: error: unknown command /nope: /help lists the commands",
    ]


def test_quit_leaves_before_the_rest(runner, detection: Detection, report: Path, lavis_config: Path) -> None:
    result = runner.invoke(app, chat_args(detection, report, lavis_config), input="/help\n/quit\nnever asked\n")
    assert result.exit_code == 0, result.output
    assert "/at A-B" in result.stdout and result.stdout.count("callm: ") == 0


def test_ctrl_c_leaves_cleanly_at_the_prompt_and_during_an_answer(
    runner, detection: Detection, report: Path, lavis_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(Prompt, "ask", interrupted)
    assert runner.invoke(app, chat_args(detection, report, lavis_config)).exit_code == 0
    monkeypatch.setattr(Prompt, "ask", lambda *args, **kwargs: "what happens ?")
    monkeypatch.setattr(Chat, "ask", interrupted)
    assert runner.invoke(app, chat_args(detection, report, lavis_config)).exit_code == 0


def test_stage_1_runs_without_a_report(runner, clip_dir: Path, weights_dir: Path, lavis_config: Path) -> None:
    args = ["chat", str(clip_dir / "intruder.avi"), "--vlm", str(lavis_config), "-w", str(weights_dir)]
    script = ["--ask", "/video", "--ask", "what happens ?", "--json", "--device", "cpu", "--dtype", "fp32"]
    result = runner.invoke(app, [*args, *script])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["video"].endswith("intruder.avi") and len(data["turns"]) == 1


def test_user_errors(runner, detection: Detection, report: Path, lavis_config: Path, tmp_path: Path) -> None:
    missing = runner.invoke(app, ["chat", str(tmp_path / "none.avi"), "--vlm", str(lavis_config)])
    assert_user_error(missing, "none.avi: no such file or directory")
    other = write_video(tmp_path / "other.avi", make_frames(16))
    wrong = runner.invoke(app, ["chat", str(other), "--vlm", str(lavis_config), "--report", str(report)])
    assert_user_error(wrong, "is the report of two.avi, not of other.avi")
    assert_user_error(runner.invoke(app, chat_args(detection, report, lavis_config, "--json")), "add --ask")
    # A bad scripted command is reported, the rest still runs, and the exit code says something failed.
    result = runner.invoke(
        app, chat_args(detection, report, lavis_config, "--ask", "/event 5", "--ask", "hi", "--json")
    )
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("callm: error")]
    assert errors == ["callm: error: no event 5: the events are numbered 1 to 2 (/events lists them)"]
    assert len(json.loads(result.stdout)["turns"]) == 1
