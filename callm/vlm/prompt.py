"""Video-LLaMA's two conversation templates, reproduced string for string.

The fine-tuned Video-LLaMA weights answer best to the exact prompts their demo sends
(``video_llama/conversation/conversation_video.py`` and ``demo_video.py`` in DAMO-NLP-SG/Video-LLaMA), so
these builders copy them, quirks included (the system line is a config choice, see ``SYSTEM_PRESETS``): the
video message ends with a space and ``Chat.ask`` joins the
question with another, so two spaces precede the question. Multi-turn prompts follow that file's
``Conversation.get_prompt``: earlier replies are written back cleaned, between the template's separators.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PLACEHOLDER = "<ImageHere>"

# The system line of Video-LLaMA's video demo (demo_video.py sets it for an uploaded video, as for an image); its
# audio-visual demo leaves the line empty. Configs name one of these presets or give their own text.
SYSTEM_PRESETS = {
    "video-demo": "You are able to understand the visual content that the user provides. Follow the instructions "
    "carefully and explain your answers in detail.",
    "none": "",
}
DEFAULT_SYSTEM = "video-demo"
VIDEO_SYSTEM = SYSTEM_PRESETS[DEFAULT_SYSTEM]


def system_text(system: str) -> str:
    """The system line a config's ``system`` names: a preset's text, or the text itself."""
    return SYSTEM_PRESETS.get(system, system)


DEFAULT_QUESTION = (
    "Is anything abnormal or dangerous happening in this video? Answer yes or no first, then say what happens."
)


@dataclass(frozen=True)
class Template:
    """One conversation layout: how user turns are wrapped, how earlier replies sit between them, how a reply ends."""

    name: str
    layout: str  # str.format pattern of the first user turn, with {system} and {message}
    past_reply: str  # str.format pattern of an earlier reply, with {reply}
    next_turn: str  # str.format pattern of a later user turn, with {message}
    stop: str  # the reply ends at the first occurrence of this text
    reply_role: str  # a reply that repeats its role label is cut after it, as Video-LLaMA's demo does
    reply_end: str  # what follows a reply in Video-LLaMA's training text: fine-tuning teaches the model to stop

    def prompt(self, message: str, system: str = VIDEO_SYSTEM) -> str:
        return self.conversation((), message, system)

    def conversation(self, turns: Sequence[tuple[str, str]], message: str, system: str = VIDEO_SYSTEM) -> str:
        """The prompt for ``message`` after earlier (user message, reply) turns; the system text leads the first."""
        messages = [user for user, _ in turns] + [message]
        parts = [self.layout.format(system=system, message=messages[0])]
        for (_, reply), later in zip(turns, messages[1:], strict=True):
            parts += [self.past_reply.format(reply=reply), self.next_turn.format(message=later)]
        return "".join(parts)

    def clean(self, generated: str) -> str:
        """The answer alone: cut at the stop text and after a repeated role label, stripped."""
        return generated.split(self.stop)[0].split(self.reply_role)[-1].strip()


# Vicuna v0 (SeparatorStyle.SINGLE, sep "###"): system + sep, then role + ": " + message + sep for every message,
# and a bare "Assistant:" for the reply to come.
VICUNA = Template(
    name="vicuna",
    layout="{system}###Human: {message}###Assistant:",
    past_reply=" {reply}###",
    next_turn="Human: {message}###Assistant:",
    stop="###",
    reply_role="Assistant:",
    reply_end="\n###",
)
# LLaMA-2-chat (SeparatorStyle.LLAMA_2, sep "<s>", sep2 "</s>"): the system block sits inside the first [INST];
# a reply is " " + reply + " </s>" and each later turn "<s>[INST] ... [/INST]". The leading "<s>" is stripped by
# the demo and added back by the tokenizer as the BOS token; the later ones stay in the text.
LLAMA2 = Template(
    name="llama2",
    layout="[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{message} [/INST]",
    past_reply=" {reply} </s>",
    next_turn="<s>[INST] {message} [/INST]",
    stop="</s>",
    reply_role="ASSISTANT:",
    reply_end=" </s>",
)

TEMPLATES = {template.name: template for template in (VICUNA, LLAMA2)}


def video_message(timestamps: Sequence[float], question: str, content: str = PLACEHOLDER) -> str:
    """The user turn for a clip: the placeholder the video tokens replace, the frame times, the question.

    ``content`` replaces the placeholder where the clip's tokens are no longer sent (a chat's earlier clips).
    """
    return (
        f"<Video>{content}</Video> The video contains {len(timestamps)} frames sampled at {_seconds(timestamps)} "
        f"seconds.  {question}"
    )


def clip_message(clip_starts: Sequence[float], question: str) -> str:
    """The user turn for VAD-LLaMA's clip tokens (one per 16-frame clip, ``callm.vador.adaptor``): the placeholder
    they replace, when each clip starts, the question. Video-LLaMA's layout, with clips where it has frames."""
    return (
        f"<Video>{PLACEHOLDER}</Video> The video contains {len(clip_starts)} clips starting at "
        f"{_seconds(clip_starts)} seconds.  {question}"
    )


def _seconds(times: Sequence[float]) -> str:
    return ", ".join(str(round(t, 1)) for t in times)
