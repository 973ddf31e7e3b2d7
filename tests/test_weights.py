"""Stage-1 weights on disk: a faithful round trip, and a clear refusal of anything else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from callm.ae.model import AEConfig, ConvAutoencoder3d
from callm.ae.weights import META_FILE, TENSORS_FILE, AEWeights, load, save
from callm.errors import CallmError
from callm.files import write_json_atomic

CALIBRATION = {"error": "motion", "patch": 4, "threshold": 2.5, "holdout_videos": ["x.avi"]}


@pytest.fixture
def saved(tmp_path: Path, tiny_config: AEConfig) -> tuple[Path, ConvAutoencoder3d]:
    torch.manual_seed(1)
    model = ConvAutoencoder3d(tiny_config)
    model.train()
    with torch.no_grad():
        model(torch.rand(2, 1, 16, 32, 32) * 2 - 1)  # moves the BatchNorm running statistics off their defaults
    model.eval()
    folder = tmp_path / "w"
    save(AEWeights(model, calibration=CALIBRATION, training={"epochs": 3}), folder)
    return folder, model


def test_round_trip_gives_identical_outputs_and_metadata(saved) -> None:
    folder, model = saved
    assert sorted(p.name for p in folder.iterdir()) == [META_FILE, TENSORS_FILE]  # no temporary files left
    loaded = load(folder)
    assert loaded.config == model.config
    assert loaded.calibration == CALIBRATION
    assert loaded.training == {"epochs": 3}
    assert not loaded.model.training
    x = torch.rand(3, 1, 16, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


@pytest.mark.parametrize("name", [TENSORS_FILE, META_FILE])
def test_load_from_either_file(saved, name: str) -> None:
    folder, _ = saved
    assert load(folder / name).calibration == CALIBRATION


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(CallmError, match="weights not found"):
        load(tmp_path / "nope")


def test_folder_without_one_of_the_files(saved) -> None:
    folder, _ = saved
    (folder / META_FILE).unlink()
    with pytest.raises(CallmError, match=f"{META_FILE} is missing"):
        load(folder)


def test_some_other_file(tmp_path: Path) -> None:
    other = tmp_path / "model.pt"
    other.write_bytes(b"\x80\x04pickle")
    with pytest.raises(CallmError, match="not callm autoencoder weights"):
        load(other)


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"kind": "callm-vlm", "format_version": 1}, "not callm autoencoder weights \\(kind is 'callm-vlm'\\)"),
        ({"model_type": "bert"}, "kind is None"),
        (["a", "list"], "not callm autoencoder weights"),
        ("just a string", "not callm autoencoder weights"),
        ({"kind": "callm-ae", "format_version": 2}, "weights format 2 but this callm reads 1"),
    ],
)
def test_json_of_another_kind(saved, meta, message: str) -> None:
    folder, _ = saved
    write_json_atomic(folder / META_FILE, meta)
    with pytest.raises(CallmError, match=message):
        load(folder)


def test_damaged_metadata(saved) -> None:
    folder, _ = saved
    (folder / META_FILE).write_bytes(b'{"kind": "callm-ae", ')
    with pytest.raises(CallmError, match="damaged weights metadata"):
        load(folder)
    (folder / META_FILE).write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CallmError, match="damaged weights metadata"):
        load(folder)


@pytest.mark.parametrize("cut", ["garbage", "truncated", "empty"])
def test_corrupt_safetensors(saved, cut: str) -> None:
    folder, _ = saved
    tensors = folder / TENSORS_FILE
    data = tensors.read_bytes()
    tensors.write_bytes({"garbage": bytes(range(256)) * 4, "truncated": data[: len(data) // 2], "empty": b""}[cut])
    with pytest.raises(CallmError, match="corrupt or not a safetensors file"):
        load(folder)


def edit_config(folder: Path, **changes) -> None:
    meta = json.loads((folder / META_FILE).read_text())
    meta["config"].update(changes)
    write_json_atomic(folder / META_FILE, meta)


def test_tensor_shapes_not_matching_config(saved) -> None:
    folder, _ = saved
    edit_config(folder, widths=[4, 16])
    with pytest.raises(CallmError, match="tensor shapes do not match the config"):
        load(folder)


def test_tensor_names_not_matching_config(saved) -> None:
    folder, _ = saved
    edit_config(folder, widths=[4, 8, 8])
    with pytest.raises(CallmError, match=r"tensors do not match the config in ae.json \(missing \['decoder"):
        load(folder)


def test_config_that_cannot_be_built(saved) -> None:
    folder, _ = saved
    edit_config(folder, height=30)
    with pytest.raises(CallmError, match="must divide"):
        load(folder)


# --- weights from before the optical-flow signal ---------------------------------------------------------------

VERSION_1 = {
    "error": "motion", "patch": 8, "top_k": 8, "smooth_sigma": 7.0, "stride": 8, "psnr_center": 30.0,
    "psnr_scale": 0.5, "threshold": 1.87, "quantile": 0.99, "holdout_frames": 300, "holdout_videos": ["15", "16"],
}  # fmt: skip


def test_version_1_weights_detect_as_they_always_did(saved, clip_dir: Path) -> None:
    """An ``ae.json`` written before the flow signal and the window threshold: it loads, computes no flow, and
    scores each frame as then: PSNR smoothed, in spreads below its calibrated centre."""
    import numpy as np

    from callm.ae.calibrate import smooth_curve
    from callm.cascade import DetectOptions, Stage1

    folder, model = saved
    save(AEWeights(model, calibration=VERSION_1), folder)
    stage1 = Stage1(load(folder), DetectOptions(), torch.device("cpu"), torch.float32)
    assert stage1.scorer.flow == "off"
    detection = stage1.detect(clip_dir / "intruder.avi")
    assert detection.speed is None and "speed" not in detection.to_dict()
    assert np.allclose(detection.scores, (30.0 - smooth_curve(detection.psnr, 7.0)) / 0.5)
    assert detection.threshold == 1.87 and detection.settings["stride"] == 8


def test_flow_weights_score_both_signals(weights_dir: Path, clip_dir: Path) -> None:
    import numpy as np

    from callm.ae.calibrate import Calibration
    from callm.cascade import DetectOptions, Stage1

    weights = load(weights_dir)
    calibration = Calibration.from_dict(weights.calibration)
    assert calibration.uses_flow and calibration.version == 4
    detection = Stage1(weights, DetectOptions(), torch.device("cpu"), torch.float32).detect(clip_dir / "intruder.avi")
    assert detection.speed is not None and len(detection.speed) == detection.num_frames
    assert np.allclose(detection.scores, calibration.calibrated(detection.psnr, detection.speed))
    data = detection.to_dict()
    assert len(data["speed"]) == data["num_frames"] and data["settings"]["flow_weight"] == calibration.flow_weight
    # The racing intruder is the fastest thing in the clip: its frames have the highest flow signal.
    intruder = slice(24, 44)
    assert detection.speed[intruder].mean() > detection.speed[:20].max()


def test_detect_counts_speeds_as_far_as_the_calibration_says(weights_dir: Path, clip_dir: Path) -> None:
    from dataclasses import replace

    from callm.ae.calibrate import Calibration
    from callm.cascade import DetectOptions, Stage1

    weights = load(weights_dir)
    calibration = Calibration.from_dict(weights.calibration)
    assert calibration.sustain_frames == 5
    instantaneous = replace(weights, calibration=replace(calibration, sustain_frames=1).to_dict())
    found = {
        name: Stage1(w, DetectOptions(), torch.device("cpu"), torch.float32).detect(clip_dir / "intruder.avi")
        for name, w in (("sustained", weights), ("instantaneous", instantaneous))
    }
    sustained, now = found["sustained"].speed, found["instantaneous"].speed
    assert found["sustained"].to_dict()["settings"]["sustain_frames"] == 5
    # Kept-up speed never exceeds the speed now, and is lower somewhere (a flick, the intruder's first frames);
    # the first frames, which have no past, take the speed kept up over the video's first 5.
    assert (sustained[4:] <= now[4:] + 1e-9).all() and (sustained[4:] < now[4:] - 1e-6).any()
    assert (sustained[:4] == sustained[4]).all()
    # The intruder races through for 20 frames: it keeps its speed, so it still stands out.
    assert sustained[24:44].mean() > sustained[:20].max()
