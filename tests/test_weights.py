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
