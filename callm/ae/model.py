"""The 3D convolutional autoencoder of CALLM stage 1, as a plain ``nn.Module``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from callm.errors import CallmError
from callm.video import WINDOW


@dataclass(frozen=True)
class AEConfig:
    """Shape of the autoencoder. Saved with the weights so a file rebuilds its own model."""

    frames: int = WINDOW
    height: int = 128
    width: int = 192
    widths: tuple[int, ...] = (16, 32, 64, 64)
    # The first layer keeps full time resolution; later layers halve time, height and width together.
    first_time_stride: int = 1

    def __post_init__(self) -> None:
        if not self.widths or any(w < 1 for w in self.widths):
            raise CallmError(f"autoencoder widths must be positive, got {self.widths}")
        time_factor = self.first_time_stride * 2 ** (len(self.widths) - 1)
        space_factor = self.space_factor
        if self.frames % time_factor or self.height % space_factor or self.width % space_factor:
            raise CallmError(
                f"input {self.frames}x{self.height}x{self.width} must divide by {time_factor} in time and "
                f"{space_factor} in space for {len(self.widths)} layers"
            )

    @property
    def space_factor(self) -> int:
        return 2 ** len(self.widths)

    @classmethod
    def for_footage(cls, height: int, frame_size: tuple[int, int], widths: tuple[int, ...]) -> AEConfig:
        """A model ``height`` high whose width keeps the footage's aspect ratio (rounded to what the layers
        divide), so people keep their shape."""
        factor = 2 ** len(widths)
        if height < factor or height % factor:
            raise CallmError(f"--size must be a positive multiple of {factor} for {len(widths)} layers, got {height}")
        aspect = frame_size[1] / frame_size[0]
        width = max(factor, round(height * aspect / factor) * factor)
        return cls(height=height, width=width, widths=widths)

    def strides(self) -> list[tuple[int, int, int]]:
        return [(self.first_time_stride, 2, 2)] + [(2, 2, 2)] * (len(self.widths) - 1)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["widths"] = list(self.widths)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AEConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise CallmError(f"autoencoder config has unknown fields: {sorted(unknown)}")
        values = dict(data)
        if "widths" in values:
            values["widths"] = tuple(int(w) for w in values["widths"])
        return cls(**values)


def _down(c_in: int, c_out: int, stride: tuple[int, int, int]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.LeakyReLU(0.2, inplace=True),
    )


def _up(c_in: int, c_out: int, stride: tuple[int, int, int], last: bool) -> nn.Sequential:
    # output_padding = stride - 1 makes each transposed conv exactly undo its encoder twin's downsampling.
    conv = nn.ConvTranspose3d(
        c_in, c_out, kernel_size=3, stride=stride, padding=1, output_padding=tuple(s - 1 for s in stride)
    )
    if last:  # the output layer maps straight to [-1, 1], the range the frames are scaled to
        return nn.Sequential(conv, nn.Tanh())
    return nn.Sequential(conv, nn.BatchNorm3d(c_out), nn.LeakyReLU(0.2, inplace=True))


class ConvAutoencoder3d(nn.Module):
    """Conv3d encoder and mirrored ConvTranspose3d decoder; input and output are (B, 1, T, H, W) in [-1, 1]."""

    def __init__(self, config: AEConfig) -> None:
        super().__init__()
        self.config = config
        strides = config.strides()
        channels = [1, *config.widths]
        self.encoder = nn.Sequential(
            *(_down(channels[i], channels[i + 1], strides[i]) for i in range(len(config.widths)))
        )
        self.decoder = nn.Sequential(
            *(_up(channels[i + 1], channels[i], strides[i], last=i == 0) for i in reversed(range(len(config.widths))))
        )

    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        return self.encoder(clips)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(clips))
