"""The prompts are Video-LLaMA's, character for character."""

from __future__ import annotations

from callm.vlm.explain import Explainer
from callm.vlm.prompt import LLAMA2, SYSTEM_PRESETS, VICUNA, system_text, video_message

# The system line demo_video.py sets for an uploaded video (and image), typed here independently of callm's copy.
DEMO_SYSTEM = (
    "You are able to understand the visual content that the user provides. "
    "Follow the instructions carefully and explain your answers in detail."
)

TIMES = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4]
VIDEO = (
    "<Video><ImageHere></Video> The video contains 8 frames sampled at 0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4 seconds."
)


def test_vicuna_v0_prompt() -> None:
    message = video_message(TIMES, "Is there an anomaly?")
    # By default the video demo's system line; its message ends in a space and ask() adds one.
    assert VICUNA.prompt(message) == f"{DEMO_SYSTEM}###Human: {VIDEO}  Is there an anomaly?###Assistant:"
    assert VICUNA.prompt(message, "") == f"###Human: {VIDEO}  Is there an anomaly?###Assistant:"


def test_llama2_chat_prompt() -> None:
    message = video_message(TIMES, "Is there an anomaly?")
    assert LLAMA2.prompt(message) == f"[INST] <<SYS>>\n{DEMO_SYSTEM}\n<</SYS>>\n\n{VIDEO}  Is there an anomaly? [/INST]"
    assert LLAMA2.prompt(message, "") == f"[INST] <<SYS>>\n\n<</SYS>>\n\n{VIDEO}  Is there an anomaly? [/INST]"
    assert LLAMA2.prompt(message, "Be brief.") == (
        f"[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n{VIDEO}  Is there an anomaly? [/INST]"
    )


def test_replies_are_cut_at_the_stop_text_and_role() -> None:
    assert VICUNA.clean(" Yes, a cart.###Human: more") == "Yes, a cart."
    assert VICUNA.clean("Assistant: No.") == "No."
    assert LLAMA2.clean(" No, people walk. </s>") == "No, people walk."


def test_explainer_prompt_uses_the_video_time_of_the_sampled_frames(explainer: Explainer) -> None:
    # 16 frames at 10 fps from 12 s: Video-LLaMA's uniform sampling takes every second one.
    indices = range(0, 16, 2)
    prompt = explainer.prompt([12.0 + i / 10 for i in indices], "Why?")
    assert prompt == (
        "###Human: <Video><ImageHere></Video> The video contains 8 frames sampled at "
        "12.0, 12.2, 12.4, 12.6, 12.8, 13.0, 13.2, 13.4 seconds.  Why?###Assistant:"
    )


def test_multi_turn_prompts_follow_video_llamas_get_prompt() -> None:
    # SINGLE: system + "###", role + ": " + message + "###" for every message, "Assistant:" for the next reply.
    turns = [("first", "one"), ("second", "two")]
    assert VICUNA.conversation(turns, "third", "S") == (
        "S###Human: first###Assistant: one###Human: second###Assistant: two###Human: third###Assistant:"
    )
    # LLAMA_2: the system inside the first [INST]; " reply </s>" after each reply; "<s>" before each later [INST].
    assert LLAMA2.conversation(turns, "third", "S") == (
        "[INST] <<SYS>>\nS\n<</SYS>>\n\nfirst [/INST] one </s><s>[INST] second [/INST] two </s><s>[INST] third [/INST]"
    )
    assert VICUNA.conversation([], "only") == VICUNA.prompt("only")


def test_system_presets_name_the_demo_line_or_nothing() -> None:
    assert system_text("video-demo") == SYSTEM_PRESETS["video-demo"] == DEMO_SYSTEM
    assert system_text("none") == ""
    assert system_text("Answer briefly.") == "Answer briefly."
