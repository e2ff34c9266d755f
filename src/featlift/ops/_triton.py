"""Triton kernel for the local attend: one launch, softmax and weighted sum fused.

Each program owns ``BLOCK_P`` consecutive output pixels (row-major over H*W) of one image and
``BLOCK_C`` channels. It first walks the n logits of its pixels once for the online-softmax statistics
(running max and sum), then walks the offsets again, gathering each pixel's shifted coarse cell for its
channels and accumulating ``softmax weight * value`` in float32. Every output element is written once;
the coarse values a program reads are shared by ``scale**2`` neighbouring pixels and by neighbouring
offsets, so they come from cache. Offsets are read from a small int32 tensor, so one compiled kernel
serves every neighbourhood.

What changes between launches, and so between compiled variants (:func:`launch_plan`):

* the dtype (the accumulator is float32, float64 for float64 values);
* 32- or 64-bit index arithmetic: tensors past 2**31 elements need 64-bit offsets (:func:`needs_wide`);
* the block shape: ``BLOCK_C`` is the channel count rounded up to a power of two, at most 64, and
  ``BLOCK_P`` grows as it shrinks, so a 4-channel map (the SD VAE) does not leave most of each block idle;
* what Triton specialises at a launch: an integer argument equal to 1 becomes a compile-time constant
  (a map with a side of 1, batch 1, one channel), and multiples of 16 are marked as such.

The grid is (pixel blocks, channel blocks, images). CUDA caps the grid's second and third axes at 65,535,
so larger batches launch in chunks of at most :data:`MAX_GRID_YZ` images.

The kernel is compiled on first use. With ``TRITON_INTERPRET=1`` in the environment at that moment it
runs in Triton's interpreter on CPU tensors, which is how CI checks it without a GPU;
``tests/test_triton_compile.py`` compiles every variant for sm_80 and sm_90 without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from .._neighbourhood import Offsets

try:  # Triton ships with PyTorch's CUDA wheels on Linux; it is optional everywhere else.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the platform
    triton = None
    tl = None

__all__ = [
    "LaunchPlan",
    "accumulator",
    "interpreting",
    "kernel_launches",
    "launch_plan",
    "needs_wide",
    "triton_available",
    "triton_forward",
]


BLOCK_ELEMENTS = 4096  # channels x pixels one program holds in its accumulator
MAX_BLOCK_C = 64
MAX_BLOCK_P = 1024
NUM_WARPS = 4
INT32_LIMIT = 2**31
MAX_GRID_YZ = 65_535  # CUDA's limit on a grid's y and z dimensions


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


def needs_wide(logits: Tensor, values: Tensor, scale: int) -> bool:
    """Whether a call needs the kernel's 64-bit index arithmetic: some tensor it touches (logits, values
    or the output) has 2**31 elements or more."""
    b, c, h, w = values.shape
    return max(logits.numel(), values.numel(), b * c * h * w * scale * scale) >= INT32_LIMIT


@dataclass(frozen=True)
class LaunchPlan:
    """How one call is launched: the block shape (``block_c`` channels x ``block_p`` pixels per
    program), the index width and the grid of each launch (batch chunks of at most :data:`MAX_GRID_YZ`)."""

    block_c: int
    block_p: int
    wide: bool
    pixel_blocks: int
    channel_blocks: int
    batch_chunk: int


def _next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def launch_plan(batch: int, channels: int, out_pixels: int, *, wide: bool) -> LaunchPlan:
    """The :class:`LaunchPlan` for ``batch`` images of ``channels`` x ``out_pixels`` output elements.

    Raises:
        ValueError: more channels than one grid axis can hold (over four million).
    """
    block_c = min(MAX_BLOCK_C, _next_power_of_2(channels))
    block_p = min(MAX_BLOCK_P, BLOCK_ELEMENTS // block_c)
    channel_blocks = -(-channels // block_c)
    if channel_blocks > MAX_GRID_YZ:
        raise ValueError(
            f"the Triton local-attend kernel handles at most {MAX_GRID_YZ * MAX_BLOCK_C} channels, got "
            f"{channels}; use impl='fused'"
        )
    return LaunchPlan(
        block_c=block_c,
        block_p=block_p,
        wide=wide,
        pixel_blocks=-(-out_pixels // block_p),
        channel_blocks=channel_blocks,
        batch_chunk=min(batch, MAX_GRID_YZ),
    )


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
        # Scalar arguments are never cast: Triton turns an integer argument equal to 1 into a Python
        # constant at a launch, which has no .to(). Index tensors are widened instead, and every product
        # below has one of them (or a value derived from one) on its left, so it is computed in 64 bits.
        pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        chan = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        batch = tl.program_id(2)
        if WIDE:
            pix = pix.to(tl.int64)
            chan = chan.to(tl.int64)
            batch = batch.to(tl.int64)
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
            # While every logit so far is -inf the shift is 0, not -inf: exp(-inf - -inf) would be NaN.
            shift = tl.where(new_max == float("-inf"), 0.0, new_max)
            running_sum = running_sum * tl.exp(running_max - shift) + tl.exp(z - shift)
            running_max = new_max
        inv_sum = 1.0 / running_sum

        value_rows = values_ptr + batch * channels * h * w + chan[:, None] * h * w
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


def accumulator(dtype: torch.dtype):
    """The kernel's accumulation type for values of ``dtype``: float64 for float64, else float32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def triton_forward(logits: Tensor, values: Tensor, offsets: Offsets, scale: int, *, wide: bool | None = None) -> Tensor:
    """Run the kernel; inputs are assumed validated. Returns ``values.dtype``; accumulates in float32
    (float64 for float64 values). ``wide`` forces the 64-bit (True) or 32-bit (False) index arithmetic;
    None (default) takes 64 bits exactly when :func:`needs_wide` says so. The launch runs on the tensors'
    device, whatever the current one."""
    if triton is None:
        raise RuntimeError("Triton is not installed; use impl='fused' or install triton")
    b, c, h, w = values.shape
    out_h, out_w = h * scale, w * scale
    logits = logits.contiguous()
    values = values.contiguous()
    out = torch.empty(b, c, out_h, out_w, dtype=values.dtype, device=values.device)
    if out.numel() == 0:
        return out
    if wide is None:
        wide = needs_wide(logits, values, scale)
    elif not wide and needs_wide(logits, values, scale):
        raise ValueError("these tensors have 2**31 elements or more: the kernel needs wide=True (or None)")
    kernel = _kernel(interpreting())
    on_device = torch.cuda.device(values.device) if values.device.type == "cuda" else contextlib.nullcontext()
    with on_device:
        for grid, args, meta in kernel_launches(logits, values, out, offsets, scale, wide=wide):
            kernel[grid](*args, **meta)
    return out


def kernel_launches(
    logits: Tensor, values: Tensor, out: Tensor, offsets: Offsets, scale: int, *, wide: bool
) -> Iterator[tuple[tuple[int, int, int], tuple, dict]]:
    """``(grid, arguments, meta-parameters)`` of each launch that fills ``out`` (contiguous tensors, one
    launch per batch chunk): what :func:`triton_forward` launches, and what the compile test compiles."""
    b, c, h, w = values.shape
    out_h, out_w = out.shape[-2:]
    launch = launch_plan(b, c, out_h * out_w, wide=wide)
    dy, dx = _offset_table(tuple(offsets), values.device)
    meta = {
        "BLOCK_P": launch.block_p,
        "BLOCK_C": launch.block_c,
        "WIDE": launch.wide,
        "ACC": accumulator(values.dtype),
        "num_warps": NUM_WARPS,
    }
    for start in range(0, b, launch.batch_chunk):
        stop = min(b, start + launch.batch_chunk)
        grid = (launch.pixel_blocks, launch.channel_blocks, stop - start)
        args = (logits[start:stop], values[start:stop], out[start:stop], dy, dx, c, h, w, out_w, out_h * out_w)
        yield grid, (*args, len(offsets), scale), meta
