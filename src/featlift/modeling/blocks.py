"""Convolutional building blocks shared by the guidance encoder, the decoder step and the refiner.

Config strings are turned into classes here, once, at construction, through the tables :data:`NORMS`,
:data:`BLOCK_CONVS`, :data:`DOWN_OPS` and :data:`UP_OPS`; ``forward`` never looks at a string.

Every block's ``forward`` takes ``lean`` (see :mod:`featlift.modeling._inference`): False (the default)
runs the plain autograd path, True the lean inference path, which computes the same function. Every
block also reports its :meth:`reach`: how far, in cells of its input grid, a difference at the border of
its input can travel inward through it. Tiled inference composes its halo from these
(:mod:`featlift.modeling._tiling`); a block that is not translation-equivariant raises
:class:`~featlift.modeling._region.UntileableError` instead.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import BlockGroupConfig, DownConfig, UpConfig
from ..errors import UntileableError
from ._inference import FoldedConv
from ._region import Region, corner_aligned_upsample

__all__ = [
    "BLOCK_CONVS",
    "DOWN_OPS",
    "NORMS",
    "UP_OPS",
    "BlockGroup",
    "ConvBlock",
    "DownBlock",
    "LayerNorm2d",
    "UpBlock",
    "add_residual",
    "as_parts",
    "cat_parts",
    "conv_parts",
]

Parts = Tensor | list[Tensor]


# -- the channel-mismatch residual -------------------------------------------------------------------


def _residual_spans(widths: list[int], channels: int) -> list[tuple[int, int, int]]:
    """The channel-mismatch rule for a residual made of parts of ``widths`` channels (their channel
    concatenation) added to ``channels`` output channels: ``(part, take, at)`` triples saying that the
    first ``take`` channels of ``part`` add to output channels ``at .. at + take``. Residual channels
    beyond the output are cut; output channels beyond the residual get nothing (zero padding)."""
    spans, at = [], 0
    for i, width in enumerate(widths):
        take = min(width, channels - at)
        if take <= 0:
            break
        spans.append((i, take, at))
        at += take
    return spans


def add_residual(residual: Parts, out: Tensor, *, inplace: bool = False) -> Tensor:
    """``out + residual`` where the channel counts may differ (the rule of :func:`_residual_spans`).

    ``residual`` may be a list of tensors standing for their channel concatenation. ``inplace`` adds into
    ``out`` (the lean path) instead of building a new tensor. Spatial sizes must match.
    """
    parts = as_parts(residual)
    spans = _residual_spans([p.shape[1] for p in parts], out.shape[1])
    if inplace:
        for i, take, at in spans:
            out[:, at : at + take] += parts[i][:, :take]
        return out
    cut = cat_parts([parts[i][:, :take] for i, take, _ in spans])
    if cut.shape[1] < out.shape[1]:
        cut = F.pad(cut, (0, 0, 0, 0, 0, out.shape[1] - cut.shape[1]))
    return out + cut


def as_parts(x: Parts) -> list[Tensor]:
    """A tensor or a list of concatenation parts, as a list."""
    return [x] if isinstance(x, Tensor) else list(x)


def cat_parts(parts: list[Tensor]) -> Tensor:
    """The channel concatenation of ``parts`` (the part itself when there is one)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


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


# -- norms and conv blocks ---------------------------------------------------------------------------


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


# config ``norm`` -> the norm class (BatchNorm2d is folded into its conv on the lean path)
NORMS: dict[str, type[nn.Module]] = {"batch": nn.BatchNorm2d, "layer": LayerNorm2d}
# config ``block`` -> 3x3 convs per block ("IdentityBlock" makes the whole group an identity)
BLOCK_CONVS: dict[str, int] = {"SingleConv": 1, "DoubleConv": 2, "IdentityBlock": 0}


class ConvBlock(nn.Module):
    """Residual conv block: (3x3 conv -> norm -> ReLU) ``convs`` times (1 or 2), then an optional 1x1 conv.

    Shape: [B, in_channels, H, W] -> [B, out_channels, H / stride, W / stride]. The block input is added
    to the output (the channel-mismatch rule of :func:`add_residual`); with stride 2 the input is first
    resized bilinearly (align_corners=True).

    The input may also be a list of tensors that the block treats as their channel concatenation; on the
    lean path the concatenation is never built.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        convs: int,
        norm: type[nn.Module],
        residual: bool,
        stride: int,
        one_by: bool,
    ) -> None:
        super().__init__()
        if convs not in (1, 2):
            raise ValueError(f"a conv block has 1 or 2 3x3 convs, got {convs}")
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False, stride=stride)
        self.norm1 = norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False) if convs == 2 else None
        self.norm2 = norm(out_channels) if convs == 2 else None
        self.proj = nn.Conv2d(out_channels, out_channels, 1) if one_by else None
        self.residual = residual
        self.stride = stride
        self._folded = (FoldedConv(), FoldedConv())

    def reach(self) -> int:
        """Cells a border difference travels inward: one per 3x3 conv (1x1 convs and norms are per pixel)."""
        if self.stride != 1:
            raise UntileableError("a strided conv block")
        convs = [c for c in (self.conv1, self.conv2) if c is not None]
        return sum(c.kernel_size[0] // 2 for c in convs)

    def forward(self, x: Parts, *, lean: bool = False) -> Tensor:
        if lean:
            return self._lean(as_parts(x), self.stride)
        x = cat_parts(as_parts(x))
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

    def subsampled(self, x: Parts, step: tuple[int, int]) -> Tensor:
        """The block's output at pixels ``(step[0] * i, step[1] * j)`` only (lean path, stride-1 blocks
        with one 3x3 conv): the conv runs with that stride, everything after it is per pixel."""
        if not self.pointwise_after_first_conv:
            raise ValueError("only single-conv, stride-1 blocks can be evaluated on a subgrid")
        return self._lean(as_parts(x), step)

    def _conv_norm_relu(self, i: int, parts: list[Tensor], stride) -> Tensor:
        conv, norm = (self.conv1, self.norm1) if i == 0 else (self.conv2, self.norm2)
        folded = self._folded[i].get(conv, norm)
        if folded is None:
            return norm(conv_parts(parts, conv.weight, conv.bias, conv, stride)).relu_()
        return conv_parts(parts, *folded, conv, stride).relu_()

    def _lean(self, parts: list[Tensor], stride) -> Tensor:
        y = self._conv_norm_relu(0, parts, stride)
        if self.conv2 is not None:
            y = self._conv_norm_relu(1, [y], 1)
        if self.proj is not None:
            y = self.proj(y)
        if not self.residual:
            return y
        if self.stride != 1:  # a strided block: the residual is the bilinearly resized input
            x = F.interpolate(cat_parts(parts), size=y.shape[-2:], mode="bilinear", align_corners=True)
            return add_residual(x, y, inplace=True)
        step = (stride, stride) if isinstance(stride, int) else tuple(stride)
        if step != (1, 1):  # evaluated on a subgrid: so is the residual
            parts = [p[:, :, :: step[0], :: step[1]] for p in parts]
        return add_residual(parts, y, inplace=True)


class BlockGroup(nn.Sequential):
    """A sequence of :class:`ConvBlock` s built from a :class:`BlockGroupConfig` (empty = identity).

    Like :class:`ConvBlock`, it accepts a list of tensors standing for their channel concatenation.
    """

    def __init__(self, in_channels: int, config: BlockGroupConfig) -> None:
        blocks = []
        convs = BLOCK_CONVS[config.block]
        if convs and config.widths:
            c = in_channels
            for width in config.widths:
                blocks.append(
                    ConvBlock(
                        c,
                        width,
                        convs=convs,
                        norm=NORMS[config.norm],
                        residual=config.residual,
                        stride=config.stride,
                        one_by=config.one_by,
                    )
                )
                c = width
        super().__init__(*blocks)
        self.out_channels = blocks[-1].conv1.out_channels if blocks else in_channels

    def reach(self) -> int:
        return sum(block.reach() for block in self)

    def forward(self, x: Parts, *, lean: bool = False) -> Tensor:
        if len(self) == 0:
            return cat_parts(as_parts(x))
        for block in self:
            x = block(x, lean=lean)
        return x


# -- resampling ops ----------------------------------------------------------------------------------


def _conv_down(channels: int, config: DownConfig) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, stride=config.stride), nn.BatchNorm2d(channels), nn.ReLU()
    )


def _max_down(channels: int, config: DownConfig) -> nn.Module:
    return nn.MaxPool2d(2, 2)


def _tconv_up(channels: int, config: UpConfig) -> nn.Module:
    return nn.ConvTranspose2d(channels, channels, config.factor, stride=config.factor)


# config ``op`` -> a factory (channels, config) -> module; None: the op is the identity
DOWN_OPS: dict[str, Callable[[int, DownConfig], nn.Module] | None] = {
    "none": None,
    "conv": _conv_down,
    "max": _max_down,
}
UP_OPS: dict[str, Callable[[int, UpConfig], nn.Module] | None] = {"tconv": _tconv_up, "none": None}
# config ``residual`` of an up or down op -> whether the bilinearly resized input is added
_BILINEAR_RESIDUAL = {"bilinear": True, "none": False}


def _resampling_op(table: dict, channels: int, config: DownConfig | UpConfig) -> tuple[nn.Module | None, bool]:
    """(the op's module or None for the identity, whether the bilinear residual is added)."""
    factory = table[config.op]
    op = None if factory is None else factory(channels, config)
    return op, op is not None and _BILINEAR_RESIDUAL[config.residual]


class DownBlock(nn.Module):
    """Optional encoder downsampling: strided conv + BatchNorm + ReLU, or 2x2 max pool (+ residual)."""

    def __init__(self, channels: int, config: DownConfig) -> None:
        super().__init__()
        self.op, self.residual = _resampling_op(DOWN_OPS, channels, config)

    def reach(self) -> int:
        if self.op is not None:
            raise UntileableError("an encoder down op")
        return 0

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
        self.up, self.residual = _resampling_op(UP_OPS, channels, config)

    @property
    def scale(self) -> int:
        return 1 if self.up is None else self.up.stride[0]

    def reach(self) -> int:
        """In input cells: the transposed conv's kernel equals its stride, so it mixes no neighbours; the
        bilinear residual reads one input cell on each side."""
        return 1 if self.residual else 0

    def forward(self, x: Tensor, region: Region | None = None, *, lean: bool = False) -> Tensor:
        """``region`` (tiled inference) places the crop ``x`` in its full grid for the residual."""
        if self.up is None:
            return x
        y = self.up(x)
        if self.residual:
            if region is None:
                residual = F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True)
            else:
                residual = corner_aligned_upsample(x, region, self.scale)
            y = y.add_(residual) if lean else y + residual
        return y
