"""The noise channels (the VAE layout): ``scale * N(0, 1)`` channels concatenated to a stage's input."""

from __future__ import annotations

import torch
from torch import Tensor

from ._region import Region

__all__ = ["Noise"]


class Noise:
    """Where one forward call's noise channels come from.

    On a whole image each stage draws its channels shaped like its input, in call order, from
    ``generator`` (the global generator when None). A tile instead cuts its crop out of one draw over the
    full grid per (iteration, stage), made when the first tile asks for it; the draws then happen in the
    untiled order, so tiled inference reproduces the untiled result. One instance serves one call.
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator
        self._full: dict[tuple[int, str], Tensor] = {}

    @classmethod
    def of(cls, source: Noise | torch.Generator | None) -> Noise:
        """``source`` itself, or a new :class:`Noise` drawing from the generator ``source`` (or the global one)."""
        return source if isinstance(source, Noise) else cls(source)

    def draw(self, like: Tensor, channels: int, scale: float, key: str, region: Region | None = None) -> Tensor | None:
        """``scale * N(0, 1)`` channels [B, channels, h, w] for ``like`` [B, *, h, w]; None without channels.

        ``key`` names the stage, ``region`` places ``like`` in its full grid (tiled inference).
        """
        if not channels:
            return None
        b, _, h, w = like.shape
        if scale == 0:
            return like.new_zeros((b, channels, h, w))
        if region is None:
            return self._normal((b, channels, h, w), like).mul_(scale)
        full = self._full.get((region.iteration, key))
        if full is None:
            full = self._normal((b, channels, *region.full), like).mul_(scale)
            self._full[(region.iteration, key)] = full
        y, x = region.origin
        return full[:, :, y : y + h, x : x + w]

    def _normal(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        return torch.randn(shape, generator=self.generator, device=like.device, dtype=like.dtype)
