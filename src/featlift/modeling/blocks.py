"""Convolutional building blocks shared by the guidance encoder, the decoder step and the refiner."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import BlockGroupConfig, DownConfig, UpConfig
from .region import Region, corner_aligned_upsample

__all__ = [
    "BlockGroup",
    "ConvBlock",
    "DownBlock",
    "LayerNorm2d",
    "UpBlock",
    "add_parts_",
    "add_residual",
    "conv_parts",
    "fold_batchnorm",
    "inference_path",
    "noise_part",
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


def inference_path(module: nn.Module) -> bool:
    """Whether ``module`` may take the lean inference path: eval mode and no autograd graph.

    That path folds BatchNorm into the convolutions, convolves concatenation parts separately instead of
    concatenating them, and works in place. It computes the same function up to float reassociation.
    """
    return not module.training and not torch.is_grad_enabled()


def fold_batchnorm(conv: nn.Conv2d, norm: nn.Module) -> tuple[Tensor, Tensor | None, bool]:
    """(weight, bias, folded): ``conv`` with an eval-mode BatchNorm folded in, when ``norm`` is one."""
    if not isinstance(norm, nn.BatchNorm2d) or norm.running_var is None:
        return conv.weight, conv.bias, False
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    bias = -norm.running_mean * scale
    if norm.bias is not None:
        bias = bias + norm.bias
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    weight = conv.weight * scale.view(-1, 1, 1, 1).to(conv.weight.dtype)
    return weight, bias.to(conv.weight.dtype), True


def conv_parts(parts: list[Tensor], weight: Tensor, bias: Tensor | None, conv: nn.Conv2d, stride=None) -> Tensor:
    """``conv(cat(parts, 1))`` without building the concatenation: one convolution per part, summed."""
    stride = conv.stride if stride is None else stride
    out = None
    start = 0
    for part in parts:
        w = weight[:, start : start + part.shape[1]]
        start += part.shape[1]
        y = F.conv2d(part, w, bias if out is None else None, stride, conv.padding, conv.dilation)
        out = y if out is None else out.add_(y)
    return out


def add_parts_(out: Tensor, parts: list[Tensor]) -> Tensor:
    """In place: ``out += cat(parts, 1)`` under the channel-mismatch rule of :func:`add_residual`."""
    start, channels = 0, out.shape[1]
    for part in parts:
        if start >= channels:
            break
        k = min(part.shape[1], channels - start)
        out[:, start : start + k] += part[:, :k]
        start += k
    return out


def _as_parts(x: Tensor | list[Tensor]) -> list[Tensor]:
    return [x] if isinstance(x, Tensor) else list(x)


def _cat(parts: list[Tensor]) -> Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


class ConvBlock(nn.Module):
    """Residual conv block: (3x3 conv -> norm -> ReLU) once or twice, then an optional 1x1 conv.

    Shape: [B, in_channels, H, W] -> [B, out_channels, H / stride, W / stride]. The block input is added
    to the output (channel-mismatch rule of :func:`add_residual`); with stride 2 the input is first
    resized bilinearly (align_corners=True).

    The input may also be given as a list of tensors that the block treats as their channel
    concatenation; on the inference path (:func:`inference_path`) the concatenation is never built.
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

    def forward(self, x: Tensor | list[Tensor]) -> Tensor:
        if inference_path(self):
            return self._lean(_as_parts(x), self.stride)
        x = _cat(_as_parts(x))
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

    @property
    def pointwise_after_first_conv(self) -> bool:
        """True when every layer after ``conv1`` is per pixel, so the block can be evaluated on a subgrid."""
        return self.conv2 is None and self.stride == 1

    def subsampled(self, x: Tensor | list[Tensor], step: tuple[int, int]) -> Tensor:
        """The block's output at pixels ``(step[0] * i, step[1] * j)`` only (inference path, stride-1 blocks
        with one 3x3 conv): the conv runs with that stride, everything after it is per pixel."""
        if not self.pointwise_after_first_conv:
            raise ValueError("only single-conv, stride-1 blocks can be evaluated on a subgrid")
        return self._lean(_as_parts(x), step)

    def _lean(self, parts: list[Tensor], stride) -> Tensor:
        weight, bias, folded = fold_batchnorm(self.conv1, self.norm1)
        y = conv_parts(parts, weight, bias, self.conv1, stride)
        if not folded:
            y = self.norm1(y)
        y = y.relu_()
        if self.conv2 is not None:
            weight, bias, folded = fold_batchnorm(self.conv2, self.norm2)
            y = F.conv2d(y, weight, bias, 1, 1)
            y = (y if folded else self.norm2(y)).relu_()
        if self.proj is not None:
            y = self.proj(y)
        if not self.residual:
            return y
        if stride != 1 and stride != (1, 1):
            step = (stride, stride) if isinstance(stride, int) else stride
            if self.stride != 1:  # a strided block: the residual is the bilinearly resized input
                x = F.interpolate(_cat(parts), size=y.shape[-2:], mode="bilinear", align_corners=True)
                return add_residual(x, y)
            parts = [p[:, :, :: step[0], :: step[1]] for p in parts]
        return add_parts_(y, parts)


class BlockGroup(nn.Sequential):
    """A sequence of :class:`ConvBlock` s built from a :class:`BlockGroupConfig` (empty = identity).

    Like :class:`ConvBlock`, it accepts a list of tensors standing for their channel concatenation.
    """

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

    def forward(self, x: Tensor | list[Tensor]) -> Tensor:
        if len(self) == 0:
            return _cat(_as_parts(x))
        for block in self:
            x = block(x)
        return x


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

    def forward(self, x: Tensor, region: Region | None = None) -> Tensor:
        """``region`` (tiled inference) places the crop ``x`` in its full grid for the residual."""
        if self.up is None:
            return x
        y = self.up(x)
        if self.residual:
            if region is None:
                residual = F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True)
            else:
                residual = corner_aligned_upsample(x, region, self.up.stride[0])
            y = y.add_(residual) if inference_path(self) else y + residual
        return y


def noise_part(
    like: Tensor,
    channels: int,
    scale: float,
    generator: torch.Generator | None = None,
    region: Region | None = None,
    key: str = "",
) -> Tensor | None:
    """``scale * N(0, 1)`` noise channels shaped like ``like`` (the VAE recipe); ``None`` without channels.

    With a ``region`` (tiled inference) the noise is this crop's slice of one full-grid draw per ``key``.
    """
    if not channels:
        return None
    if region is not None and scale != 0:
        return region.noise(key, like, channels, scale, generator)
    shape = (like.shape[0], channels, like.shape[2], like.shape[3])
    if scale == 0:
        return like.new_zeros(shape)
    noise = torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)
    return noise.mul_(scale)
