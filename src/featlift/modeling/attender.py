"""The Local Attender: a guided, softmax-weighted sum over a fixed neighbourhood of coarse features."""

from __future__ import annotations

from torch import Tensor, nn

from .._neighbourhood import neighbourhood_offsets
from ..ops.local_attend import check_impl, local_attend
from .blocks import add_residual

__all__ = ["LocalAttender"]


class LocalAttender(nn.Module):
    """Upsample ``values`` with attention weights predicted from the fine-resolution ``guide``.

    logits = 1x1 conv(guide) (+ guide[:, :n] when ``residual``); softmax over the n offsets at each
    output pixel; output = weighted sum of the coarse values at the pixel's cell shifted by each offset.

    Shape: guide [B, G, H, W], values [B, C, h, w] with H = s*h, W = s*w -> [B, C, H, W].
    Every output vector is a convex combination of input vectors.

    ``impl`` chooses the implementation of the core op (see :func:`featlift.ops.local_attend`):
    ``"auto"`` (default: Triton on CUDA, embedding bags on the CPU, fused PyTorch elsewhere), ``"bagged"``,
    ``"fused"``, ``"triton"``, ``"portable"`` or ``"reference"``.
    """

    def __init__(self, guide_channels: int, size: int = 17, residual: bool = True, impl: str = "auto") -> None:
        super().__init__()
        self.offsets = neighbourhood_offsets(size)
        self.to_logits = nn.Conv2d(guide_channels, size, 1)
        self.residual = residual
        self.impl = check_impl(impl)

    @property
    def size(self) -> int:
        return len(self.offsets)

    def reach(self) -> int:
        """Coarse cells a border difference of the values travels: the neighbourhood's radius."""
        return max(max(abs(dy), abs(dx)) for dy, dx in self.offsets)

    def logits(self, guide: Tensor) -> Tensor:
        logits = self.to_logits(guide)
        return add_residual(guide, logits) if self.residual else logits

    def forward(self, guide: Tensor, values: Tensor, *, channels_last: bool = False) -> Tensor:
        return self.attend(self.logits(guide), values, channels_last=channels_last)

    def attend(self, logits: Tensor, values: Tensor, *, channels_last: bool = False) -> Tensor:
        """The weighted sum for precomputed :meth:`logits` (lets callers free the guide first);
        ``channels_last`` lays the output out [B, H, W, C] in memory."""
        scale = logits.shape[-2] // max(values.shape[-2], 1)
        if scale < 1 or logits.shape[-2] != scale * values.shape[-2] or logits.shape[-1] != scale * values.shape[-1]:
            raise ValueError(
                f"guide {tuple(logits.shape[-2:])} must be an integer multiple of values {tuple(values.shape[-2:])}"
            )
        return local_attend(logits, values, self.offsets, scale, impl=self.impl, channels_last=channels_last)
