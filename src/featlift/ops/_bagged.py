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

The bags come out as ``[B * H * W, C]``, a channels_last ``[B, C, H, W]`` as they stand. The work goes
in bands of output rows, each copied into place (transposed, for a plain NCHW output), so what is alive
at once besides the output stays cache-sized: the output is the only image-sized tensor. (One call for
the whole output would skip that copy, but its indices and weights, ``n * (4 + dtype size)`` bytes a
pixel, raised the model's peak memory by 9-13% for a gain under 1% of a 448 px call.) Forward only;
gradients come from :func:`featlift.ops._fused.fused_backward`.

The kernel takes its weights in the table's dtype. In half precision each float32 weight therefore goes
in as two entries on the same row, its rounding to that dtype and the remainder: about 16 bits of weight
instead of 8 (bfloat16) or 11 (float16), so the result differs from the exact sum by its final rounding
only, as with a float32 accumulator band, and constant features stay constant. Rounding the weights
alone left a third of bfloat16 outputs one unit off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._neighbourhood import Offsets

__all__ = ["BAGGED_DTYPES", "bagged_forward", "bagged_supported"]

# What the CPU embedding-bag kernels serve (FBGEMM: float32, and bfloat16/float16 read and written as
# such, summed in float32). float64 takes PyTorch's generic loop, slower than the fused path.
BAGGED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Output pixels per band: a band's indices, weights and softmax scratch (0.2-0.3 KB a pixel for 17
# offsets) stay cache-sized, its bags (C channels a pixel) a few MB at most before they are copied out.
_BAND_PIXELS = 4096
# Past this many table rows (or index entries in one call) the indices are int64.
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
    # The kernel takes its weights in the table's dtype. Half precision passes each float32 weight as two
    # terms, its rounding and the remainder (hi + lo, 16 bits of it), on the same row: the sum then misses
    # the exact one by its own final rounding only, as the float32 band of the fused path did.
    split = dtype != torch.float32
    m = 2 * n if split else n  # entries per bag
    total = b * hh  # output rows of the whole batch, image after image
    rows = max(1, min(total, _BAND_PIXELS // ww))  # output rows per band
    # int32 indices take FBGEMM's fastest kernels, where the table's rows and one call's entries fit them
    index = torch.int32 if max(b * h * w, rows * ww * m) < _INT32_LIMIT else torch.int64
    # [B * h * w, C] with contiguous rows: free for channels_last values, one coarse-sized copy otherwise
    # (a reshape could return a view with strided rows, which sends the op to a slow generic loop)
    table = values.detach().permute(0, 2, 3, 1).contiguous().view(b * h * w, c)
    dy = torch.tensor([o[0] for o in offsets] * (m // n), dtype=index)
    dx = torch.tensor([o[1] for o in offsets] * (m // n), dtype=index)
    row_start = _clamped_cells(h, s, dy, index).mul_(w)  # [H, m]: the first table row of each coarse row read
    col = _clamped_cells(w, s, dx, index)  # [W, m]

    def bags(g0: int, g1: int) -> Tensor:
        """The weighted sums of output rows ``g0 .. g1`` of the whole batch: [(g1 - g0) * W, C]."""
        cells = torch.empty((g1 - g0, ww, m), dtype=index)
        weights = torch.empty((g1 - g0, ww, m), dtype=dtype)
        r0 = g0
        while r0 < g1:  # image by image
            i, y0 = divmod(r0, hh)
            y1 = min(hh, y0 + g1 - r0)
            at = slice(r0 - g0, r0 - g0 + y1 - y0)
            r0 += y1 - y0
            torch.add(row_start[y0:y1, None, :], col[None, :, :], out=cells[at])
            if i:
                cells[at] += i * h * w
            # softmax over the offsets, laid out [rows, W, n] like the indices
            p = torch.softmax(logits[i, :, y0:y1].permute(1, 2, 0), dim=-1, dtype=torch.float32)
            weights[at, :, :n] = p
            if split:
                weights[at, :, n:] = p - weights[at, :, :n].float()
        return F.embedding_bag(cells.view(-1, m), table, mode="sum", per_sample_weights=weights.view(-1, m))

    layout = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((b, c, hh, ww), dtype=dtype, device=values.device, memory_format=layout)
    flat = out.permute(0, 2, 3, 1).view(total, ww, c) if channels_last else None
    for g0 in range(0, total, rows):
        g1 = min(total, g0 + rows)
        band = bags(g0, g1).view(g1 - g0, ww, c)
        if channels_last:
            flat[g0:g1].copy_(band)
            continue
        for i in range(g0 // hh, (g1 - 1) // hh + 1):  # NCHW: each image's rows transposed into place
            y0, y1 = max(g0, i * hh), min(g1, (i + 1) * hh)
            out[i, :, y0 - i * hh : y1 - i * hh].copy_(band[y0 - g0 : y1 - g0].permute(2, 0, 1))
    return out
