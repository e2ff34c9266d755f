"""The local attend as an embedding bag: the CPU's fastest path.

Each output pixel is a weighted sum of n rows of one table, the coarse feature vectors
(``[B * h * w, C]``, which channels_last values already are in memory), picked by n indices (its cell
shifted by each offset, clamped at the edges: replicate padding without a padded copy) and weighted by
its n softmax weights. That is exactly what ``torch.nn.functional.embedding_bag(mode="sum",
per_sample_weights=...)`` computes, and on the CPU PyTorch runs it through FBGEMM's embedding kernels,
generated at run time for the host's vector units (AVX2, AVX-512): per output pixel they load the n
rows, accumulate in float32 registers and write the C channels once, in the table's dtype. So one pass
over the output, no float32 scratch, and a bfloat16 table is read and written as bfloat16 while summing
in float32. Nothing is compiled at install time.

The bags come out as ``[B * H * W, C]``: channels_last ``[B, C, H, W]``. They are produced one band of
output rows at a time, written in place through the op's ``out=`` overload, so the indices and weights
alive at once stay cache-sized; a plain NCHW output gets each band through a band-sized scratch. Forward only (inference); gradients come from
:func:`featlift.ops._fused.fused_backward`.

The weights are rounded to the values' dtype (the kernel takes one dtype for both), so a bfloat16 call
carries bfloat16 weights as well as bfloat16 features; ``tests/test_bf16.py`` shows the answer keeps
float32's within bfloat16's tolerance.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._neighbourhood import Offsets

__all__ = ["BAGGED_DTYPES", "bagged_forward", "bagged_supported"]

# What the CPU embedding-bag kernels serve (FBGEMM: float32, and bfloat16/float16 read and written as
# such, summed in float32). float64 takes PyTorch's generic loop, slower than the fused path.
BAGGED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Output pixels per band: the band's indices, weights and softmax scratch (about 200 bytes a pixel for
# 17 offsets) stay within a core's L2 cache.
_BAND_PIXELS = 4096
# Past this many table rows (or index entries in a band) the indices are int64.
_INT32_LIMIT = 2**31


def bagged_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether :func:`bagged_forward` serves values on ``device`` in ``dtype``: the CPU, in one of
    :data:`BAGGED_DTYPES`."""
    return torch.device(device).type == "cpu" and dtype in BAGGED_DTYPES


def _clamped_cells(size: int, scale: int, shifts: Tensor, index: torch.dtype) -> Tensor:
    """``[size * scale, n]``: for every fine row (or column) and offset, the coarse row (column) it reads,
    clamped to the map."""
    fine = torch.arange(size * scale, dtype=index) // scale
    return (fine[:, None] + shifts[None, :]).clamp_(0, size - 1)


def bagged_forward(logits: Tensor, values: Tensor, offsets: Offsets, scale: int, *, channels_last: bool) -> Tensor:
    """Softmax + weighted sum as one embedding bag per output pixel; inputs are assumed validated (see
    :func:`featlift.ops.local_attend`) and :func:`bagged_supported`. Returns ``values.dtype``, laid out
    channels_last, or plain NCHW when ``channels_last`` is False."""
    b, c, h, w = values.shape
    s, n = scale, len(offsets)
    hh, ww = h * s, w * s
    dtype = values.dtype
    rows = max(1, min(hh, _BAND_PIXELS // ww))  # output rows per band
    # int32 indices take FBGEMM's fastest kernels, where the table's rows and a band's entries fit them
    index = torch.int32 if max(b * h * w, rows * ww * n) < _INT32_LIMIT else torch.int64
    # [B * h * w, C] with contiguous rows: free for channels_last values, one coarse-sized copy otherwise
    # (a reshape could return a view whose rows are strided, which the kernel reads slowly)
    table = values.permute(0, 2, 3, 1).contiguous().view(b * h * w, c)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((b, c, hh, ww), dtype=dtype, device=values.device, memory_format=layout)
    # channels_last: each band's bags are written straight into the output; NCHW: into a band-sized
    # scratch, then transposed into place (never an image-sized second copy)
    rows_out = out.permute(0, 2, 3, 1).view(b, hh * ww, c) if channels_last else None
    dy = torch.tensor([o[0] for o in offsets], dtype=index)
    dx = torch.tensor([o[1] for o in offsets], dtype=index)
    row_start = _clamped_cells(h, s, dy, index).mul_(w)  # [H, n]: first table row of each coarse row read
    col = _clamped_cells(w, s, dx, index)  # [W, n]
    bag_starts = torch.arange(0, rows * ww * n, n, dtype=index)
    scratch = None if channels_last else torch.empty(rows * ww, c, dtype=dtype)
    # The op's other outputs (bag bookkeeping for a backward this path never takes), sized once.
    offset2bag = torch.empty(0, dtype=index)
    bag_size = torch.empty(rows * ww, dtype=index)
    max_indices = torch.empty(rows * ww, dtype=index)
    for i in range(b):
        for y0 in range(0, hh, rows):
            y1 = min(hh, y0 + rows)
            bags = (y1 - y0) * ww
            cells = row_start[y0:y1, None, :] + col[None, :, :]  # [R, W, n]
            if i:
                cells += i * h * w
            # softmax over the offsets, laid out [R, W, n] like the indices, in the table's dtype
            band = logits[i, :, y0:y1].permute(1, 2, 0)
            weights = torch.softmax(band, dim=-1, dtype=torch.float32).to(dtype, memory_format=torch.contiguous_format)
            torch.ops.aten._embedding_bag_forward_only.out(
                table,
                cells.view(-1),
                bag_starts[:bags],
                False,  # scale_grad_by_freq
                0,  # mode: sum
                False,  # sparse
                weights.view(-1),
                False,  # include_last_offset
                -1,  # padding_idx: none
                out0=rows_out[i, y0 * ww : y1 * ww] if channels_last else scratch[:bags],
                out1=offset2bag,
                out2=bag_size[:bags],
                out3=max_indices[:bags],
            )
            if not channels_last:
                out[i, :, y0:y1].copy_(scratch[:bags].view(y1 - y0, ww, c).permute(2, 0, 1))
    return out
