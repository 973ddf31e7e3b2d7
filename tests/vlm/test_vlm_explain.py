"""End to end: tiny models in every layout -> config file -> Explainer.explain on synthetic clips."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Blip2QFormerConfig
from vlm_tiny import TINY_QFORMER

from callm.errors import CallmError
from callm.vlm.config import load_config
from callm.vlm.explain import Explainer, parse_verdict
from callm.vlm.frames import crop_region, crop_side, focus, sample_indices, to_rgb
from callm.vlm.model import VideoQFormer
from callm.vlm.prompt import PLACEHOLDER
from callm.vlm.weights.loaders import save_video_llama, video_qformer_config


def test_explain_is_deterministic_on_a_grey_window_with_a_box(explainer: Explainer, window: np.ndarray) -> None:
    first = explainer.explain(window, fps=10.0, start_s=3.2, boxes=[[4, 20, 40, 30]] * len(window))
    second = explainer.explain(window, fps=10.0, start_s=3.2, boxes=[[4, 20, 40, 30]] * len(window))
    assert first == second
    assert first.verdict in ("anomaly", "normal") and isinstance(first.text, str)
    assert [r.component for r in explainer.reports] == ["vision encoder", "Q-Former", "video Q-Former", "LLM"]


def test_hf_blip2_llama2_and_drawn_box_end_to_end(hf_config: Path, window: np.ndarray) -> None:
    explainer = Explainer.from_config(hf_config)
    rgb = to_rgb(window)
    answers = {explainer.explain(rgb, fps=25.0, boxes=[[4, 20, 40, 30]] * len(rgb)) for _ in range(2)}
    assert len(answers) == 1
    assert explainer.model.template.name == "llama2" and explainer.config.focus == "draw"


def test_seeded_sampling_repeats(explainer: Explainer, window: np.ndarray) -> None:
    config = dataclasses.replace(explainer.config, sample=True, temperature=1.5, seed=7)
    sampler = Explainer(explainer.model, config)
    assert sampler.explain(window, fps=10.0) == sampler.explain(window, fps=10.0)


def test_the_verdict_comes_from_the_generated_answer(lavis_config: Path, window: np.ndarray) -> None:
    explainer = Explainer.from_config(lavis_config)
    with torch.no_grad():  # all logits equal: greedy decoding picks token 0, "no"
        explainer.model.llm.model.norm.weight.zero_()
    answer = explainer.explain(window, fps=10.0)
    assert answer.text.startswith("no no")
    assert (answer.verdict, answer.explicit) == ("normal", True)


def test_video_tokens_sit_between_the_text_pieces(explainer: Explainer) -> None:
    model = explainer.model
    video = torch.zeros(1, 32, model.llm.config.hidden_size)
    before, after = "###Human: <Video>", "</Video> Why?###Assistant:"
    embedded = model.embed_prompt(before + PLACEHOLDER + after, video)
    n_before = len(model.tokenizer(before).input_ids)  # with BOS
    n_after = len(model.tokenizer(after, add_special_tokens=False).input_ids)
    assert embedded.shape[1] == n_before + 32 + n_after
    assert torch.equal(embedded[0, n_before : n_before + 32], video[0])
    with pytest.raises(ValueError, match="exactly once"):
        model.embed_prompt("no placeholder", video)


def test_parse_verdict() -> None:
    assert parse_verdict("Yes, a cart drives on the walkway.") == ("anomaly", True)
    assert parse_verdict("No. People walk.") == ("normal", True)
    assert parse_verdict("I see no anomaly here") == ("normal", True)
    assert parse_verdict("Nobody knows; yesterday") == ("anomaly", False)  # whole words only
    assert parse_verdict("") == ("anomaly", False)


def test_frame_sampling_and_focus() -> None:
    assert sample_indices(16, 8) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert sample_indices(15, 8) == [0, 1, 3, 5, 7, 9, 11, 13]
    assert sample_indices(5, 8) == [0, 1, 2, 3, 4]
    assert crop_side(240, 360, [[100, 100, 140, 120]], 2.0) == 120  # at least half of 240
    assert crop_side(240, 360, [[100, 100, 140, 120], [0, 0, 100, 10]], 2.0) == 200  # the clip's longest box
    assert crop_region(240, 360, [100, 100, 140, 120], 120) == (60, 50, 180, 170)
    assert crop_region(240, 360, [0, 0, 300, 50], 600) == (0, 0, 360, 240)  # clipped to the frame
    assert crop_region(240, 360, [330, 200, 350, 230], 120) == (240, 120, 360, 240)  # shifted inside
    frames = np.zeros((2, 48, 64, 3), np.uint8)
    assert focus(frames, [[20, 20, 26, 26]] * 2, "crop").shape == (2, 24, 24, 3)
    drawn = focus(frames, [[4, 20, 40, 30], [30, 4, 60, 10]], "draw")
    assert drawn[0, 20, 10].tolist() == [255, 0, 0] and drawn[1, 4, 40].tolist() == [255, 0, 0]
    assert drawn[1, 20, 10].tolist() == [0, 0, 0] and frames.max() == 0
    with pytest.raises(ValueError, match="one box per frame"):
        focus(frames, [[4, 20, 40, 30]], "crop")
    with pytest.raises(ValueError, match="uint8"):
        to_rgb(np.zeros((2, 8, 8), np.float32))


def test_the_crop_follows_a_moving_object() -> None:
    # A bright 4x4 block crossing the frame: each crop is centred on that frame's box, all crops one size.
    frames = np.zeros((3, 96, 160, 3), np.uint8)
    boxes = [[10 + 60 * t, 40, 14 + 60 * t, 44] for t in range(3)]
    for frame, (x0, y0, x1, y1) in zip(frames, boxes, strict=True):
        frame[y0:y1, x0:x1] = 255
    crops = focus(frames, boxes, "crop")
    assert crops.shape == (3, 48, 48, 3)
    for t, crop in enumerate(crops):
        ys, xs = np.nonzero(crop[..., 0])
        if t == 1:  # mid-frame, the block sits at the crop's centre
            assert (ys.mean(), xs.mean()) == (23.5, 23.5)
        assert len(ys) == 16  # the whole block is in every crop


def test_an_llm_of_another_width_is_refused(lavis_config: Path, tmp_path: Path) -> None:
    wide = VideoQFormer(video_qformer_config(Blip2QFormerConfig(**TINY_QFORMER), {}), llm_hidden_size=48)
    save_video_llama(wide, tmp_path / "wide.pth")
    config = dataclasses.replace(load_config(lavis_config), video_llama=str(tmp_path / "wide.pth"))
    with pytest.raises(CallmError, match=r"projects into an LLM 48 wide, but .* is 32 wide"):
        Explainer.from_config(config)


def test_the_verdict_is_the_first_yes_or_no_of_the_answer() -> None:
    cases = {
        "No, nobody is in danger. Yes, people walk.": ("normal", True),
        "Yes: a cart. No one else is hurt, no.": ("anomaly", True),
        "Well... no. Yes it is busy; yes.": ("normal", True),
        "Nobody knows; yesterday a cyclist rode by, no?": ("normal", True),  # whole words only: "no" wins
        "People walk along the path.": ("anomaly", False),
    }
    for text, expected in cases.items():
        assert parse_verdict(text) == expected, text


def test_video_qformer_forward_matches_an_independent_computation() -> None:
    """Video-LLaMA: each frame's 32 tokens get that frame's position embedding, the frames' tokens are laid end to
    end in time order, the video query tokens read them through the 2-layer video Q-Former, and llama_proj maps
    the result. Recomputed here from the module's weights with transformers' Q-Former and plain tensor ops, so a
    dropped, zeroed or misplaced position embedding, a wrong flatten order or a missing projection all fail."""
    from transformers import Blip2QFormerModel

    from callm.vlm.model import VideoQFormer

    torch.manual_seed(0)
    config = video_qformer_config(Blip2QFormerConfig(**TINY_QFORMER), {})
    module = VideoQFormer(config, llm_hidden_size=24, num_query_tokens=5, max_frames=6).eval()
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0, 0.5)
    width = config.encoder_hidden_size
    frames = torch.randn(2, 4, 3, width)  # (batch, frames, queries per frame, width)

    reference_qformer = Blip2QFormerModel(config).eval()
    reference_qformer.load_state_dict(module.video_qformer.state_dict())
    positions = module.video_frame_position_embedding.weight.detach()
    sequence = torch.cat([frames[:, t] + positions[t] for t in range(4)], dim=1)  # time-major: frame 0's tokens first
    queries = module.video_query_tokens.detach().expand(2, -1, -1)
    with torch.no_grad():
        summary = reference_qformer(query_embeds=queries, encoder_hidden_states=sequence).last_hidden_state
        expected = summary @ module.llama_proj.weight.T + module.llama_proj.bias
        got = module(frames)
    assert got.shape == (2, 5, 24)
    assert torch.allclose(got, expected, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(module(frames.flip(1)), got, atol=1e-3)  # frame order matters: positions are used
