"""Triton kernel for the local attend: one launch, softmax and weighted sum fused.

Each program owns ``BLOCK_P`` consecutive output pixels (row-major over H*W) of one image and
``BLOCK_C`` channels. It first walks the n logits of its pixels once for the online-softmax statistics
(running max and sum), then walks the offsets again, gathering each pixel's shifted coarse cell for its
channels and accumulating ``softmax weight * value`` in float32. Every output element is written once;
the coarse values a program reads are shared by ``scale**2`` neighbouring pixels and by neighbouring
offsets, so they come from cache. Offsets are read from a small int32 tensor, so one compiled kernel
serves every neighbourhood; tensors past 2**31 elements switch to 64-bit index arithmetic.

The kernel is compiled on first use. With ``TRITON_INTERPRET=1`` in the environment at that moment it
runs in Triton's interpreter on CPU tensors, which is how CI checks it without a GPU.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

from .._neighbourhood import Offsets

try:  # Triton ships with PyTorch's CUDA wheels on Linux; it is optional everywhere else.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the platform
    triton = None
    tl = None

__all__ = ["interpreting", "triton_available", "triton_forward"]


BLOCK_P = 64
BLOCK_C = 64
NUM_WARPS = 4
INT32_LIMIT = 2**31


def interpreting() -> bool:
    """Whether Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def triton_available(device: torch.device | None = None) -> bool:
    """Whether the Triton kernel can run on ``device`` (CUDA, or any device under the interpreter)."""
    if triton is None:
        return False
    if interpreting():
        return True
    return device is not None and device.type == "cuda"


if triton is not None:

    def _local_attend_kernel(
        logits_ptr,
        values_ptr,
        out_ptr,
        dy_ptr,
        dx_ptr,
        channels,
        h,
        w,
        out_w,
        out_hw,
        n,
        scale,
        BLOCK_P: tl.constexpr,
        BLOCK_C: tl.constexpr,
        WIDE: tl.constexpr,
        ACC: tl.constexpr,
    ):
        # Only core builtins (tl.full, not tl.zeros): triton.language's own @jit helpers are bound to
        # compiled or interpreted mode when triton is imported, which would tie TRITON_INTERPRET to import order.
        pid_p = tl.program_id(0)
        pid_c = tl.program_id(1)
        pid_b = tl.program_id(2)
        pix = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        chan = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        batch = pid_b
        if WIDE:
            pix = pix.to(tl.int64)
            chan = chan.to(tl.int64)
            batch = batch.to(tl.int64)
            out_hw = out_hw.to(tl.int64)
            h = h.to(tl.int64)
            w = w.to(tl.int64)
        pix_mask = pix < out_hw
        chan_mask = chan < channels
        cell_y = (pix // out_w) // scale
        cell_x = (pix % out_w) // scale

        logit_ptrs = logits_ptr + batch * n * out_hw + pix
        running_max = tl.full([BLOCK_P], float("-inf"), ACC)
        running_sum = tl.full([BLOCK_P], 0.0, ACC)
        for k in range(n):
            z = tl.load(logit_ptrs + k * out_hw, mask=pix_mask, other=0.0).to(ACC)
            new_max = tl.maximum(running_max, z)
            running_sum = running_sum * tl.exp(running_max - new_max) + tl.exp(z - new_max)
            running_max = new_max
        inv_sum = 1.0 / running_sum

        value_rows = values_ptr + batch * channels * h * w + chan[:, None] * (h * w)
        mask = chan_mask[:, None] & pix_mask[None, :]
        acc = tl.full([BLOCK_C, BLOCK_P], 0.0, ACC)
        for k in range(n):
            dy = tl.load(dy_ptr + k)
            dx = tl.load(dx_ptr + k)
            z = tl.load(logit_ptrs + k * out_hw, mask=pix_mask, other=0.0).to(ACC)
            weight = tl.exp(z - running_max) * inv_sum
            src_y = tl.minimum(tl.maximum(cell_y + dy, 0), h - 1)
            src_x = tl.minimum(tl.maximum(cell_x + dx, 0), w - 1)
            v = tl.load(value_rows + (src_y * w + src_x)[None, :], mask=mask, other=0.0).to(ACC)
            acc += v * weight[None, :]

        out_ptrs = out_ptr + batch * channels * out_hw + chan[:, None] * out_hw + pix[None, :]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@functools.cache
def _kernel(interpret: bool):
    # Decorated on first use (not at import) so that TRITON_INTERPRET is read when the kernel is needed;
    # the cache key keeps an interpreted and a compiled kernel apart.
    del interpret
    return triton.jit(_local_attend_kernel)


@functools.cache
def _offset_table(offsets: Offsets, device: torch.device) -> tuple[Tensor, Tensor]:
    table = torch.tensor(offsets, dtype=torch.int32, device=device)
    return table[:, 0].contiguous(), table[:, 1].contiguous()


def triton_forward(logits: Tensor, values: Tensor, offsets: Offsets, scale: int) -> Tensor:
    """Run the kernel; inputs are assumed validated. Returns ``values.dtype``; accumulates in float32
    (float64 for float64 values)."""
    if triton is None:
        raise RuntimeError("Triton is not installed; use impl='fused' or install triton")
    b, c, h, w = values.shape
    out_h, out_w = h * scale, w * scale
    logits = logits.contiguous()
    values = values.contiguous()
    out = torch.empty(b, c, out_h, out_w, dtype=values.dtype, device=values.device)
    if out.numel() == 0:
        return out
    dy, dx = _offset_table(tuple(offsets), values.device)
    wide = max(out.numel(), logits.numel(), values.numel()) >= INT32_LIMIT
    grid = (triton.cdiv(out_h * out_w, BLOCK_P), triton.cdiv(c, BLOCK_C), b)
    _kernel(interpreting())[grid](
        logits,
        values,
        out,
        dy,
        dx,
        c,
        h,
        w,
        out_w,
        out_h * out_w,
        len(offsets),
        scale,
        BLOCK_P=BLOCK_P,
        BLOCK_C=BLOCK_C,
        WIDE=wide,
        ACC=tl.float64 if values.dtype == torch.float64 else tl.float32,
        num_warps=NUM_WARPS,
    )
    return out
