"""VADor weights on disk: ``vador.safetensors`` (tensors) beside ``vador.json`` (config, features, training).

``features`` in the JSON is the encoder settings of the features it was trained on, so scoring can refuse
features from another encoder. No pickle anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callm.errors import CallmError
from callm.vador.model import VADor, VADorConfig
from callm.weights_folder import WeightsFolder

FOLDER = WeightsFolder("callm-vador", "VADor weights", "vador.safetensors", "vador.json", "callm train-vador")
# An uncalibrated VADor calls a clip abnormal when its predictor says so more likely than not.
DECISION_LINE = 0.5
# A VADor folder may carry the stage-1 encoder its ``ae`` features came from, so it keeps working when the
# stage-1 model beside it is retrained (the shipped one does: its encoder is the first shipped autoencoder).
ENCODER_DIR = "encoder"


def own_encoder(path: str | Path) -> Path | None:
    """The encoder weights folder inside a VADor folder, if it has one."""
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    candidate = folder / ENCODER_DIR
    return candidate if (candidate / "ae.json").is_file() else None


@dataclass
class VADorWeights:
    model: VADor
    features: dict[str, Any]  # encoder settings of the training features (see callm.vador.features)
    training: dict[str, Any] = field(default_factory=dict)
    # {"threshold", "quantile", "videos", "clips"} when train-vador --calibrate scored held-out normal videos
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def threshold(self) -> float:
        """The clip score above which a clip is abnormal: calibrated, or the 0.5 decision line."""
        return float(self.calibration.get("threshold", DECISION_LINE))

    def check_features(self, encoder: dict[str, Any], source: str) -> None:
        """Refuse features another encoder (or another setting of it) made: the AP would score noise."""
        if encoder != self.features:
            raise CallmError(
                f"{source}: features from encoder {encoder.get('kind')} {_differences(encoder, self.features)}, "
                "but the VADor was trained on others; extract them with the same encoder and options"
            )


def _differences(found: dict[str, Any], expected: dict[str, Any]) -> str:
    names = sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k))
    return "(" + ", ".join(f"{k}={found.get(k)!r} not {expected.get(k)!r}" for k in names[:3]) + ")"


def save(weights: VADorWeights, folder: str | Path) -> None:
    meta = {
        "config": weights.model.config.to_dict(),
        "features": weights.features,
        "training": weights.training,
        "calibration": weights.calibration,
    }
    FOLDER.save(weights.model, folder, meta)


def load(path: str | Path) -> VADorWeights:
    """A VADor folder (or either file in it); one-line errors for another kind of file or damaged tensors."""
    tensors, meta = FOLDER.read_meta(path)
    model = VADor(VADorConfig.from_dict(meta.get("config", {})))
    FOLDER.load_tensors(model, tensors)
    return VADorWeights(model.eval(), meta.get("features", {}), meta.get("training", {}), meta.get("calibration", {}))
