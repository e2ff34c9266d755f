"""The Local Attender's weighted sum in standard tensor ops (``impl="portable"``), for graphs that leave
PyTorch (ONNX) or programs that must run without featlift.

:func:`portable_local_attend` computes exactly what :func:`featlift.ops.local_attend` computes (see that
module for the formula), written only with ops every exporter and runtime knows: softmax, an edge
(replicate) pad, static slices, stack, reshapes, transposes, one batched matrix product and a
depth-to-space. The only Python loop runs over the neighbourhood's offsets, a constant of the
architecture; the input sizes it reads are symbolic when traced, so the graph stays valid for every batch
and spatial size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._neighbourhood import Offsets
from ._fused import accumulation_dtype

__all__ = ["portable_local_attend"]


def portable_local_attend(logits: Tensor, values: Tensor, offsets: Offsets, scale: int) -> Tensor:
    """Softmax over ``logits`` [B, n, s*h, s*w] and weighted sum of the shifted ``values`` [B, C, h, w].

    The values are edge-padded by the neighbourhood's radius r and laid out channels-last; offset
    (dy, dx) is a static slice of that map (start and end counted from either border), and the n slices
    are stacked per coarse cell, [B, h, w, C, n]. The softmax weights, regrouped per coarse cell as
    [B, h, w, n, s*s], multiply them in one batched matrix product: each of the cell's s*s output pixels
    is the cell's n shifted value vectors weighted by its n weights. The result, [C, s*s] per cell, is
    turned into [B, C, s*h, s*w] by one transpose and a depth-to-space (pixel shuffle). Half-precision
    inputs accumulate in float32, as the library's paths do.

    The layouts are chosen for runtimes that materialise every op's output (ONNX Runtime): the stack
    joins whole C-vectors, every transpose moves a single axis, and the pixel shuffle is ONNX's
    DepthToSpace; about 1.8x faster there than stacking along the last axis and one 6-D transpose.
    Memory: n coarse copies of the values (n / s**2 times the output) plus the product and its transpose.
    """
    acc = accumulation_dtype(values.dtype)
    b, c, h, w = values.shape  # symbolic under torch.export: the graph stays valid for every size
    r = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    weights = torch.softmax(logits.to(acc), dim=1)  # [B, n, H, W]
    padded = F.pad(values.to(acc), (r, r, r, r), mode="replicate") if r else values.to(acc)
    padded = padded.permute(0, 2, 3, 1)  # [B, h + 2r, w + 2r, C]
    shifted = [padded[:, r + dy : (dy - r) or None, r + dx : (dx - r) or None] for dy, dx in offsets]
    stacked = torch.stack(shifted, dim=3).transpose(3, 4)  # [B, h, w, C, n]
    cells = weights.unflatten(2, (h, scale)).unflatten(4, (w, scale))  # [B, n, h, s, w, s]
    cells = cells.permute(0, 2, 4, 1, 3, 5).flatten(4)  # [B, h, w, n, s*s]
    out = torch.matmul(stacked, cells)  # [B, h, w, C, s*s]
    out = out.reshape(b, h * w, c * scale * scale).transpose(1, 2).reshape(b, c * scale * scale, h, w)
    return F.pixel_shuffle(out, scale).to(values.dtype)
