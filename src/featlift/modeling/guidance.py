"""The guidance maps of one image, handed out at the grid each reader asks for."""

from __future__ import annotations

import torch
from torch import Tensor

from .blocks import ConvBlock, noise_part, resize_to
from .region import Region

__all__ = ["GuidanceMaps", "guidance_parts"]


class GuidanceMaps:
    """The guidance encoder's output for one image.

    Readers (decoder stages, refiner) ask for map ``index`` resampled to a grid with :meth:`at`. Maps
    nobody reads are not kept. The deepest map can be *deferred*: when its stage is a single 3x3 conv
    followed by per-pixel layers and it is only read through nearest resampling at integer ratios, it is
    computed directly on each requested subgrid (a strided conv on the map before it), which is exactly
    what nearest resampling of the full map would give, at a fraction of the cost and memory.

    It also behaves as the list of full-resolution maps (``len``, indexing, iteration), computing a
    deferred or dropped map on demand where it can.
    """

    def __init__(
        self,
        maps: list[Tensor | None],
        *,
        deferred: ConvBlock | None = None,
    ) -> None:
        self._maps = list(maps)
        self._deferred = deferred
        self._cache: dict[tuple[int, int], Tensor] = {}
        if deferred is not None and (len(maps) < 2 or maps[-2] is None or maps[-1] is not None):
            raise ValueError("a deferred last map needs the map before it and no computed last map")

    @classmethod
    def wrap(cls, guidance: GuidanceMaps | list[Tensor]) -> GuidanceMaps:
        """``guidance`` itself, or a list of full-resolution maps wrapped as one."""
        return guidance if isinstance(guidance, GuidanceMaps) else cls(list(guidance))

    @property
    def deferred(self) -> bool:
        """Whether the deepest map is computed per requested subgrid rather than held at full resolution."""
        return self._deferred is not None

    def __len__(self) -> int:
        return len(self._maps)

    def __getitem__(self, index: int) -> Tensor:
        i = index % len(self._maps)
        if i == len(self._maps) - 1 and self._deferred is not None:
            return self._subgrid((1, 1))
        if self._maps[i] is None:
            raise RuntimeError(f"guidance map {index} was not kept (nothing reads it) or has been released")
        return self._maps[i]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def at(self, index: int, size: tuple[int, int], mode: str) -> Tensor:
        """Map ``index`` resampled to ``size`` with ``mode`` ("nearest", "bilinear" or "none")."""
        i = index % len(self._maps)
        if i == len(self._maps) - 1 and self._deferred is not None:
            full = self._maps[-2].shape[-2:]
            if mode == "nearest" and full[0] % size[0] == 0 and full[1] % size[1] == 0:
                return self._subgrid((full[0] // size[0], full[1] // size[1]))
        return resize_to(self[i], tuple(size), mode)

    def _subgrid(self, step: tuple[int, int]) -> Tensor:
        if step not in self._cache:
            self._cache[step] = self._deferred.subsampled(self._maps[-2], step)
        return self._cache[step]

    def release(self) -> None:
        """Drop every map (frees their memory once no one else holds them)."""
        self._maps = [None] * len(self._maps)
        self._deferred = None
        self._cache.clear()


def guidance_parts(
    x: Tensor,
    guidance: GuidanceMaps,
    index: int,
    *,
    resample: str,
    noise_channels: int,
    noise_scale: float,
    generator: torch.Generator | None,
    region: Region | None,
    key: str,
) -> list[Tensor]:
    """The input of a decoder or refiner stage as concatenation parts: ``[x, guidance map ``index``
    resampled to x's grid, noise]`` (no noise part without noise channels). Blocks take the list as the
    channel concatenation without building it; ``key`` names the stage's full-grid noise when tiling."""
    parts = [x, guidance.at(index, tuple(x.shape[-2:]), resample)]
    noise = noise_part(x, noise_channels, noise_scale, generator, region, key)
    return parts if noise is None else [*parts, noise]
