"""Convolutional building blocks shared by the guidance encoder, the decoder step and the refiner."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import BlockGroupConfig, DownConfig, UpConfig

__all__ = [
    "BlockGroup",
    "ConvBlock",
    "DownBlock",
    "LayerNorm2d",
    "UpBlock",
    "add_residual",
    "concat_guidance",
    "resize_to",
]


def add_residual(residual: Tensor, out: Tensor) -> Tensor:
    """``out + residual`` where the channel counts may differ.

    A wider residual contributes its first ``out`` channels; a narrower one is added to the first
    channels of ``out`` (as if zero-padded). Spatial sizes must match.
    """
    c_res, c_out = residual.shape[1], out.shape[1]
    if c_res > c_out:
        residual = residual[:, :c_out]
    elif c_res < c_out:
        residual = F.pad(residual, (0, 0, 0, 0, 0, c_out - c_res))
    return out + residual


def resize_to(x: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """Resize ``x`` [B, C, H, W] to ``size`` with a guidance resampling mode.

    ``"nearest"`` is PyTorch's legacy nearest (source index ``floor(i * in / out)``), ``"bilinear"`` is
    antialiased bilinear (align_corners=False) and ``"none"`` requires the size to match already.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    if mode == "bilinear":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    raise ValueError(
        f"guidance map is {tuple(x.shape[-2:])} but {tuple(size)} is needed and the resample mode is 'none'; "
        "set guidance_resample to 'nearest' or 'bilinear'"
    )


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of [B, C, H, W] tensors (eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "batch" else LayerNorm2d(channels)


class ConvBlock(nn.Module):
    """Residual conv block: (3x3 conv -> norm -> ReLU) once or twice, then an optional 1x1 conv.

    Shape: [B, in_channels, H, W] -> [B, out_channels, H / stride, W / stride]. The block input is added
    to the output (channel-mismatch rule of :func:`add_residual`); with stride 2 the input is first
    resized bilinearly (align_corners=True).
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, double: bool, norm: str, residual: bool, stride: int, one_by: bool
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False, stride=stride)
        self.norm1 = _norm(norm, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False) if double else None
        self.norm2 = _norm(norm, out_channels) if double else None
        self.proj = nn.Conv2d(out_channels, out_channels, 1) if one_by else None
        self.residual = residual
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        if self.conv2 is not None:
            y = F.relu(self.norm2(self.conv2(y)))
        if self.proj is not None:
            y = self.proj(y)
        if not self.residual:
            return y
        if self.stride != 1:
            x = F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True)
        return add_residual(x, y)


class BlockGroup(nn.Sequential):
    """A sequence of :class:`ConvBlock` s built from a :class:`BlockGroupConfig` (empty = identity)."""

    def __init__(self, in_channels: int, config: BlockGroupConfig) -> None:
        blocks = []
        if not config.is_identity:
            c = in_channels
            for width in config.widths:
                blocks.append(
                    ConvBlock(
                        c,
                        width,
                        double=config.block == "DoubleConv",
                        norm=config.norm,
                        residual=config.residual,
                        stride=config.stride,
                        one_by=config.one_by,
                    )
                )
                c = width
        super().__init__(*blocks)
        self.out_channels = config.out_channels(in_channels)


class DownBlock(nn.Module):
    """Optional encoder downsampling: strided conv + BatchNorm + ReLU, or 2x2 max pool (+ residual)."""

    def __init__(self, channels: int, config: DownConfig) -> None:
        super().__init__()
        if config.op == "conv":
            self.op = nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=1, stride=config.stride),
                nn.BatchNorm2d(channels),
                nn.ReLU(),
            )
        elif config.op == "max":
            self.op = nn.MaxPool2d(2, 2)
        else:
            self.op = None
        self.residual = config.op != "none" and config.residual == "bilinear"

    def forward(self, x: Tensor) -> Tensor:
        if self.op is None:
            return x
        y = self.op(x)
        if self.residual:
            y = add_residual(F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True), y)
        return y


class UpBlock(nn.Module):
    """Transposed conv (kernel = stride = factor), plus the bilinearly upsampled input (align_corners=True)."""

    def __init__(self, channels: int, config: UpConfig) -> None:
        super().__init__()
        self.up = (
            nn.ConvTranspose2d(channels, channels, config.factor, stride=config.factor)
            if config.op == "tconv"
            else None
        )
        self.residual = self.up is not None and config.residual == "bilinear"

    def forward(self, x: Tensor) -> Tensor:
        if self.up is None:
            return x
        y = self.up(x)
        if self.residual:
            y = y + F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True)
        return y


def concat_guidance(
    x: Tensor,
    guidance: Tensor,
    *,
    resample: str,
    noise_channels: int = 0,
    noise_scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``cat([x, guidance resized to x, noise], dim=1)``: the input of every decoder and refiner stage.

    The noise is ``noise_scale * N(0, 1)`` with ``noise_channels`` channels (the VAE recipe); it is drawn
    from ``generator`` when one is given.
    """
    parts = [x, resize_to(guidance, tuple(x.shape[-2:]), resample)]
    if noise_channels:
        shape = (x.shape[0], noise_channels, x.shape[2], x.shape[3])
        if noise_scale == 0:
            parts.append(x.new_zeros(shape))
        else:
            noise = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
            parts.append(noise * noise_scale)
    return torch.cat(parts, dim=1)
