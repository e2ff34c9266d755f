"""The Local Attender's weighted sum in standard tensor ops, for graphs that leave PyTorch (ONNX).

:func:`portable_local_attend` computes exactly what :func:`featlift.ops.local_attend` computes (see that
module for the formula), written only with ops every exporter and runtime knows: softmax, an edge
(replicate) pad, static slices, stack, reshapes, transposes, one batched matrix product and a
depth-to-space. The only Python loop runs over the neighbourhood's offsets, a constant of the
architecture; the input sizes it reads are symbolic when traced, so the graph stays valid for every batch
and spatial size.

:class:`ExportAttender` is a :class:`~featlift.modeling.attender.LocalAttender` that uses it (or the
library's custom op, for ``torch.export``) with a scale fixed in advance; the exporters swap it into a
copy of the model (:func:`with_export_attenders`), leaving the original alone.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._neighbourhood import Offsets
from ..modeling.attender import LocalAttender
from ..ops._fused import accumulation_dtype
from ..ops.local_attend import local_attend

__all__ = ["ExportAttender", "portable_local_attend", "with_export_attenders"]


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


class ExportAttender(LocalAttender):
    """A :class:`LocalAttender` for export: the scale is fixed at construction (the decoder step's factor)
    instead of divided out of the input shapes, so a tracer with symbolic sizes sees a plain integer.

    ``portable=True`` computes the weighted sum with :func:`portable_local_attend` (standard ops, for
    ONNX); ``False`` keeps the library's custom op ``featlift::local_attend`` (its fake kernel lets
    ``torch.export`` trace it), with the implementation :func:`featlift.ops.local_attend` picks for the
    device the model is on.
    """

    def __init__(
        self,
        guide_channels: int,
        size: int = 17,
        residual: bool = True,
        impl: str = "auto",
        *,
        scale: int = 2,
        portable: bool = True,
    ) -> None:
        super().__init__(guide_channels, size, residual, impl)
        self.scale = int(scale)
        self.portable = bool(portable)

    @classmethod
    def like(cls, attender: LocalAttender, scale: int, *, portable: bool) -> ExportAttender:
        """An export attender with ``attender``'s configuration and (a copy of) its weights."""
        out = cls(
            attender.to_logits.in_channels,
            attender.size,
            attender.residual,
            attender.impl,
            scale=scale,
            portable=portable,
        )
        out.offsets = attender.offsets
        out.load_state_dict(attender.state_dict())
        weight = attender.to_logits.weight
        return out.to(device=weight.device, dtype=weight.dtype).train(attender.training)

    def attend(self, logits: Tensor, values: Tensor, *, channels_last: bool = False) -> Tensor:
        if self.portable:
            return portable_local_attend(logits, values, self.offsets, self.scale)
        return local_attend(logits, values, self.offsets, self.scale, impl=self.impl, channels_last=channels_last)


def with_export_attenders(model: nn.Module, *, portable: bool) -> nn.Module:
    """A deep copy of ``model`` (an :class:`~featlift.UPLiFT`, or a module holding one) whose Local
    Attenders are :class:`ExportAttender` (``portable`` as there); ``model`` itself is not changed."""
    from ..modeling.uplift import UPLiFT

    model = copy.deepcopy(model)
    for module in list(model.modules()):
        if isinstance(module, UPLiFT):
            module.attender = ExportAttender.like(module.attender, module.config.decoder.scale, portable=portable)
    return model
