"""``callm weights check``'s backend: every layout is named, counted, and tried."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from vlm_tiny import SavedBlip2

from callm.ae.model import AEConfig, ConvAutoencoder3d
from callm.ae.weights import AEWeights, save
from callm.errors import CallmError
from callm.inspect import inspect_weights
from callm.vlm.config import VLMConfig, load_config
from callm.vlm.weights.files import read_checkpoint


@pytest.fixture(scope="module")
def tiny_config(lavis_config: Path) -> VLMConfig:
    return load_config(lavis_config)


CALIBRATION = {
    "error": "motion", "patch": 4, "top_k": 4, "smooth_sigma": 2.0, "stride": 8, "psnr_center": 30.0,
    "psnr_scale": 0.5, "threshold": 2.0, "quantile": 0.99, "holdout_frames": 100, "holdout_videos": ["a.avi"],
}  # fmt: skip


def test_stage_1_weights(tmp_path: Path) -> None:
    model = ConvAutoencoder3d(AEConfig(height=32, width=32, widths=(4, 8)))
    save(AEWeights(model, calibration=CALIBRATION), tmp_path / "ae")
    for path in (tmp_path / "ae", tmp_path / "ae" / "ae.safetensors"):
        info = inspect_weights(path)
        assert (info.kind, info.loadable) == ("callm-ae", True)
        assert info.parameters == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("calibration", "why"),
    [
        ({}, "calibration lacks"),
        ({**CALIBRATION, "threshold": float("nan")}, "threshold must be a finite number"),
        ({**CALIBRATION, "threshold": "2.0"}, "threshold must be a finite number, got '2.0'"),
        ({**CALIBRATION, "psnr_scale": 0}, "psnr_scale must be a positive number"),
    ],
    ids=["no calibration", "NaN threshold", "string threshold", "zero scale"],
)
def test_stage_1_weights_detect_would_refuse_are_not_loadable(tmp_path: Path, calibration: dict, why: str) -> None:
    """``weights check`` says "loads" only for weights ``detect`` can score with."""
    save(AEWeights(ConvAutoencoder3d(AEConfig(height=32, width=32, widths=(4, 8))), calibration), tmp_path / "ae")
    info = inspect_weights(tmp_path / "ae")
    assert info.kind == "callm-ae" and not info.loadable and why in info.detail


def test_lavis_and_video_llama_files(
    lavis_files: tuple[Path, Path], video_llama_file: Path, tiny_config: VLMConfig
) -> None:
    vit, qformer = lavis_files
    for path, kind in ((vit, "lavis-vit"), (qformer, "lavis-qformer"), (video_llama_file, "video-llama")):
        info = inspect_weights(path, tiny_config)
        assert (info.kind, info.loadable) == (kind, True), info.detail
        assert info.parameters == sum(t.numel() for t in read_checkpoint(path, "test").values())
    # Against the published architecture (no config) the tiny files do not fit, and the reason says where.
    info = inspect_weights(video_llama_file)
    assert not info.loadable and "video Q-Former" in info.detail and "wrong shape" in info.detail


def test_a_lavis_checkpoint_bundling_the_vit(
    lavis_files: tuple[Path, Path], tiny_config: VLMConfig, tmp_path: Path
) -> None:
    vit, qformer = lavis_files
    bundled = {f"visual_encoder.{k}": v for k, v in torch.load(vit, weights_only=True).items()}
    bundled |= torch.load(qformer, weights_only=True)["model"]
    torch.save({"model": bundled}, tmp_path / "blip2.pth")
    info = inspect_weights(tmp_path / "blip2.pth", tiny_config)
    assert (info.kind, info.loadable) == ("lavis-blip2", True), info.detail


def test_hf_folders(blip2_hf: SavedBlip2, llm_dir: Path) -> None:
    info = inspect_weights(blip2_hf.path)
    assert (info.kind, info.loadable) == ("hf-blip2", True), info.detail
    assert info.parameters == sum(p.numel() for p in blip2_hf.model.parameters())  # language model included
    info = inspect_weights(llm_dir)
    assert (info.kind, info.loadable) == ("hf-llm", True), info.detail
    assert info.parameters and info.parameters > 0


def test_what_callm_does_not_read(tmp_path: Path) -> None:
    save_file({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.safetensors")
    info = inspect_weights(tmp_path / "other.safetensors")
    assert (info.kind, info.loadable, info.parameters) == ("unknown", False, 4)
    (tmp_path / "empty").mkdir()
    assert inspect_weights(tmp_path / "empty").kind == "unknown"
    (tmp_path / "broken.pth").write_bytes(b"\x00" * 10)
    info = inspect_weights(tmp_path / "broken.pth")
    assert (info.kind, info.loadable) == ("unknown", False) and "damaged" in info.detail
    with pytest.raises(CallmError, match="not found"):
        inspect_weights(tmp_path / "absent.pth")
