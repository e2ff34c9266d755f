"""The fused PyTorch implementation of the local attend: banded forward and an explicit backward.

Forward: the output is produced one band of coarse rows (and, for wide maps, one group of channels) at
a time. A band's softmax weights and its padded coarse rows are small; the band's output is accumulated
in a phase-major scratch buffer ``[B, C, s, s, R, w]`` that stays in cache, so every accumulation runs
along contiguous memory, and is then written once into the ``[B, C, H, W]`` output. Nothing image-sized
is built besides the output itself: no n-fold stack, no upsampled copy of the values, no padded copy of
the whole input. Works on every device: the default where neither the embedding-bag path (the CPU) nor
the Triton kernel (CUDA) applies, and the explicit ``impl="fused"``.

Backward: gradients for both inputs from the saved logits and values (the softmax is recomputed), so
training keeps no per-offset activations alive between forward and backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from .._neighbourhood import Offsets

__all__ = ["fused_backward", "fused_forward"]


# Scratch budget per band, in bytes: small enough to stay in a CPU core's L2/L3 working set.
_CPU_BAND_BYTES = 4 << 20
# On accelerators a band is one kernel launch per offset, so use few large bands.
_DEVICE_BAND_BYTES = 256 << 20
_MAX_CHANNEL_GROUP = 128


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision inputs, the input dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _radius(offsets: Offsets) -> int:
    return max(max(abs(dy), abs(dx)) for dy, dx in offsets)


def _padded_rows(values: Tensor, r0: int, r1: int, radius: int, dtype: torch.dtype) -> Tensor:
    """Coarse rows ``r0 - radius .. r1 + radius`` with replicate padding on every side: [B, C, R + 2r, w + 2r]."""
    h = values.shape[2]
    lo, hi = max(0, r0 - radius), min(h, r1 + radius)
    rows = values[:, :, lo:hi].to(dtype)
    if radius == 0:
        return rows
    pad = (radius, radius, radius - (r0 - lo), radius - (hi - r1))
    return F.pad(rows, pad, mode="replicate")


def _band_rows(values: Tensor, scale: int, channels: int) -> int:
    """Coarse rows per band so that a band's float accumulators for ``channels`` channels fit the
    device's scratch budget (at least one row)."""
    b, _, h, w = values.shape
    acc_bytes = torch.finfo(accumulation_dtype(values.dtype)).bits // 8
    budget = _CPU_BAND_BYTES if values.device.type == "cpu" else _DEVICE_BAND_BYTES
    per_row = max(1, b * channels * scale * scale * w * acc_bytes)
    return max(1, min(h, budget // per_row))


def fused_forward(logits: Tensor, values: Tensor, offsets: Offsets, scale: int, *, channels_last: bool) -> Tensor:
    """Banded softmax + weighted sum; inputs are assumed validated. Returns values.dtype.

    ``channels_last`` picks the output layout (the caller decides: the model's plan, see
    :mod:`featlift.modeling._inference`). Inputs of any layout are read correctly; the channels_last path
    is fastest for channels_last values (what the model's convs produce on CPU), the other for NCHW values.
    """
    if channels_last:
        return _fused_forward_channels_last(logits, values, offsets, scale)
    b, c, h, w = values.shape
    s = scale
    acc = accumulation_dtype(values.dtype)
    radius = _radius(offsets)
    out = torch.empty(b, c, h * s, w * s, dtype=values.dtype, device=values.device)
    group = c if values.device.type != "cpu" else min(c, _MAX_CHANNEL_GROUP)
    rows = _band_rows(values, s, group)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        band = r1 - r0
        src = _padded_rows(values, r0, r1, radius, acc)
        # Phase-major weights [B, n, s, s, R, w]: the rows of offset k broadcast over channels.
        lg = rearrange(logits[:, :, r0 * s : r1 * s].to(acc), "b n (r sy) (w sx) -> b n sy sx r w", sy=s, sx=s)
        weights = torch.softmax(lg, dim=1).contiguous()
        target = out[:, :, r0 * s : r1 * s].view(b, c, band, s, w, s)
        for c0 in range(0, c, group):
            c1 = min(c, c0 + group)
            scratch = torch.empty(b, c1 - c0, s, s, band, w, dtype=acc, device=values.device)
            for k, (dy, dx) in enumerate(offsets):
                shifted = src[:, c0:c1, radius + dy : radius + dy + band, radius + dx : radius + dx + w]
                shifted = shifted[:, :, None, None]
                if k == 0:
                    torch.mul(shifted, weights[:, k : k + 1], out=scratch)
                else:
                    scratch.addcmul_(shifted, weights[:, k : k + 1])
            target[:, c0:c1].copy_(rearrange(scratch, "b c sy sx r w -> b c r sy w sx"))
    return out


def _fused_forward_channels_last(logits: Tensor, values: Tensor, offsets: Offsets, scale: int) -> Tensor:
    """:func:`fused_forward` for [B, H, W, C]-ordered memory. Channels are the innermost dimension of the
    values and of the output, so each offset accumulates straight into the output band (a contiguous
    run of C per pixel, the weight broadcast over it) with no scratch buffer and no layout change."""
    b, c, h, w = values.shape
    s = scale
    acc = accumulation_dtype(values.dtype)
    radius = _radius(offsets)
    out = torch.empty(b, c, h * s, w * s, dtype=values.dtype, device=values.device, memory_format=torch.channels_last)
    out_nhwc = out.permute(0, 2, 3, 1)  # a contiguous view [B, H, W, C]
    direct = acc == values.dtype  # half precision accumulates in a float32 band, then rounds once
    rows = _band_rows(values, s, c)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        band = r1 - r0
        src = rearrange(_padded_rows(values, r0, r1, radius, acc), "b c h w -> b h w c")  # [B, R + 2r, w + 2r, C]
        lg = torch.softmax(logits[:, :, r0 * s : r1 * s].to(acc), dim=1)
        weights = rearrange(lg, "b n (r sy) (w sx) -> b r sy w sx n", sy=s, sx=s)
        # .view, not rearrange: the output is written through this, so it must be a view, never a copy
        target = out_nhwc[:, r0 * s : r1 * s].view(b, band, s, w, s, c)
        sums = target if direct else torch.empty(target.shape, dtype=acc, device=values.device)
        for k, (dy, dx) in enumerate(offsets):
            shifted = src[:, radius + dy : radius + dy + band, None, radius + dx : radius + dx + w, None]
            if k == 0:
                torch.mul(shifted, weights[..., k : k + 1], out=sums)
            else:
                sums.addcmul_(shifted, weights[..., k : k + 1])
        if not direct:
            target.copy_(sums)
    return out


def fused_backward(
    grad_out: Tensor, logits: Tensor, values: Tensor, offsets: Offsets, scale: int
) -> tuple[Tensor, Tensor]:
    """Gradients (d logits, d values) of :func:`fused_forward` for the output gradient ``grad_out``."""
    b, c, h, w = values.shape
    n, s = len(offsets), scale
    acc = accumulation_dtype(torch.promote_types(values.dtype, logits.dtype))
    radius = _radius(offsets)
    weights = torch.softmax(logits.to(acc), dim=1).view(b, n, h, s, w, s)
    g = grad_out.to(acc).view(b, c, h, s, w, s)
    src = _padded_rows(values, 0, h, radius, acc)
    d_weights = torch.empty_like(weights)
    d_src = torch.zeros_like(src)
    for k, (dy, dx) in enumerate(offsets):
        rows = slice(radius + dy, radius + dy + h)
        cols = slice(radius + dx, radius + dx + w)
        shifted = src[:, :, rows, cols][:, :, :, None, :, None]
        d_weights[:, k] = (g * shifted).sum(dim=1)
        d_src[:, :, rows, cols] += (g * weights[:, k : k + 1]).sum(dim=(3, 5))
    d_logits = weights * (d_weights - (weights * d_weights).sum(dim=1, keepdim=True))
    # Adjoint of replicate padding: every padded cell belongs to its clamped source cell.
    if radius:
        d_src[:, :, radius] += d_src[:, :, :radius].sum(dim=2)
        d_src[:, :, radius + h - 1] += d_src[:, :, radius + h :].sum(dim=2)
        d_src[:, :, :, radius] += d_src[:, :, :, :radius].sum(dim=3)
        d_src[:, :, :, radius + w - 1] += d_src[:, :, :, radius + w :].sum(dim=3)
    d_values = d_src[:, :, radius : radius + h, radius : radius + w]
    return d_logits.reshape(logits.shape).to(logits.dtype), d_values.to(values.dtype)
