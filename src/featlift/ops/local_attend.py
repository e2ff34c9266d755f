"""The Local Attender's core operation, behind one seam.

Given attention logits at the fine resolution and values (features) at the coarse resolution,
the output pixel ``(y, x)`` is the softmax-weighted sum of the values at the coarse cell
``(y // scale, x // scale)`` shifted by each neighbourhood offset, with edge cells repeated
(replicate padding)::

    out[b, c, y, x] = sum_k softmax_k(logits[b, :, y, x]) * values[b, c, clamp(y // s + dy_k), clamp(x // s + dx_k)]

Every output vector is therefore a convex combination of input feature vectors.

:func:`local_attend` is the entry point the model uses. :func:`local_attend_reference` is the plain,
obviously correct formulation (it stacks all shifted copies) and serves as the test oracle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ATTENDER_SIZES

__all__ = ["local_attend", "local_attend_reference", "neighbourhood_offsets"]

Offsets = tuple[tuple[int, int], ...]

_RULES = {
    5: lambda dy, dx: abs(dy) + abs(dx) <= 1,  # plus of radius 1
    9: lambda dy, dx: max(abs(dy), abs(dx)) <= 1,  # 3x3 square
    13: lambda dy, dx: abs(dy) + abs(dx) <= 2,  # diamond of radius 2
    17: lambda dy, dx: max(abs(dy), abs(dx)) <= 1 or (dy % 2 == 0 and dx % 2 == 0),  # 3x3 + the 8 points at +-2
    25: lambda dy, dx: True,  # 5x5 square
}


def neighbourhood_offsets(size: int) -> Offsets:
    """The ``(dy, dx)`` offsets of a neighbourhood, row-major (sorted by dy, then dx).

    Offset ``k`` is weighted by channel ``k`` of the attender's logits, so the order is part of the
    checkpoint format.
    """
    if size not in _RULES:
        raise ValueError(f"neighbourhood size must be one of {ATTENDER_SIZES}, got {size!r}")
    rule = _RULES[size]
    return tuple((dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if rule(dy, dx))


def _check_inputs(logits: Tensor, values: Tensor, offsets: Offsets, scale: int) -> None:
    if logits.dim() != 4 or values.dim() != 4:
        raise ValueError(
            f"local_attend expects logits [B, n, H, W] and values [B, C, h, w], "
            f"got shapes {tuple(logits.shape)} and {tuple(values.shape)}"
        )
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    b, n, hh, ww = logits.shape
    vb, _, h, w = values.shape
    if n != len(offsets):
        raise ValueError(f"logits have {n} channels but the neighbourhood has {len(offsets)} offsets")
    if b != vb:
        raise ValueError(f"batch mismatch: logits have {b} items, values {vb}")
    if (hh, ww) != (h * scale, w * scale):
        raise ValueError(
            f"logits are {hh}x{ww} but values {h}x{w} at scale {scale} need logits of {h * scale}x{w * scale}"
        )


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def local_attend(logits: Tensor, values: Tensor, offsets: Offsets, scale: int) -> Tensor:
    """Softmax over ``logits`` and weighted sum of shifted ``values``; see the module docstring.

    Args:
        logits: [B, n, h*scale, w*scale], one channel per offset.
        values: [B, C, h, w] coarse features.
        offsets: the n ``(dy, dx)`` offsets, from :func:`neighbourhood_offsets`.
        scale: integer upsampling factor.

    Returns:
        [B, C, h*scale, w*scale] in ``values.dtype``; half-precision inputs accumulate in float32.

    Memory: the output plus the softmax weights. Neither the n-fold stack of shifted copies nor an
    upsampled copy of ``values`` is ever built: each offset adds its broadcast product in place.
    """
    _check_inputs(logits, values, offsets, scale)
    b, c, h, w = values.shape
    acc = _accumulation_dtype(values.dtype)
    weights = torch.softmax(logits.to(acc), dim=1).view(b, len(offsets), h, scale, w, scale)
    radius = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded = F.pad(values.to(acc), (radius,) * 4, mode="replicate") if radius else values.to(acc)
    out = torch.zeros(b, c, h, scale, w, scale, dtype=acc, device=values.device)
    for k, (dy, dx) in enumerate(offsets):
        shifted = padded[:, :, radius + dy : radius + dy + h, radius + dx : radius + dx + w]
        out.addcmul_(shifted[:, :, :, None, :, None], weights[:, k : k + 1])
    return out.view(b, c, h * scale, w * scale).to(values.dtype)


def local_attend_reference(logits: Tensor, values: Tensor, offsets: Offsets, scale: int) -> Tensor:
    """The plain formulation: stack every shifted, upsampled copy and take the weighted sum.

    Uses n times the output's memory; it exists as the oracle that faster paths are tested against.
    """
    _check_inputs(logits, values, offsets, scale)
    _, _, h, w = values.shape
    acc = _accumulation_dtype(values.dtype)
    weights = torch.softmax(logits.to(acc), dim=1)  # [B, n, H, W]
    rows = torch.arange(h, device=values.device)
    cols = torch.arange(w, device=values.device)
    copies = []
    for dy, dx in offsets:
        shifted = values.to(acc)[:, :, (rows + dy).clamp(0, h - 1)][:, :, :, (cols + dx).clamp(0, w - 1)]
        copies.append(shifted.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3))
    stacked = torch.stack(copies, dim=1)  # [B, n, C, H, W]
    return (stacked * weights[:, :, None]).sum(dim=1).to(values.dtype)
