"""Image statistics: the ``(mean, std)`` type, the identity, timm's published statistics, and applying
them. The rule that decides which statistics a config implies lives beside the backbone table
(:mod:`featlift.backbones._sources`), which asks each backbone class for what it publishes."""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from torch import Tensor

__all__ = ["IDENTITY", "Stats", "normalise", "same_stats", "timm_normalisation"]

Stats = tuple[tuple[float, float, float], tuple[float, float, float]]

IDENTITY: Stats = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


@functools.cache
def timm_normalisation(name: str) -> Stats | None:
    """``(mean, std)`` from timm's pretrained config for the model ``name``; None when timm has none."""
    import timm

    pcfg = timm.models.get_pretrained_cfg(name)
    if pcfg is None or pcfg.mean is None or pcfg.std is None:
        return None
    return tuple(float(v) for v in pcfg.mean), tuple(float(v) for v in pcfg.std)


def same_stats(a: Stats, b: Stats) -> bool:
    """Whether two ``(mean, std)`` agree to float32 rounding."""
    return all(
        math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-7)
        for u, v in zip(a, b, strict=True)
        for x, y in zip(u, v, strict=True)
    )


def normalise(images: Tensor, stats: Stats | None, dtype: torch.dtype | None = None) -> Tensor:
    """Images [B, 3, H, W] in [0, 1] -> ``(images - mean) / std`` (none for ``stats`` None or the
    identity), computed in float32 on the images' device, returned in ``dtype`` (default float32)."""
    images = images.float()
    mean, std = stats if stats is not None else IDENTITY
    if (mean, std) != IDENTITY:
        images = (images - images.new_tensor(mean).view(1, 3, 1, 1)) / images.new_tensor(std).view(1, 3, 1, 1)
    return images if dtype is None else images.to(dtype)
