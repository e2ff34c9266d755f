"""Exact tiled inference: run UPLiFT over crops of the coarse grid so that peak memory follows the tile.

Each tile is grown by a halo of coarse cells, upsampled on its own, and its interior written into the
output. A crop differs from the whole image only near its edges (zero padding of the convs, replicated
attender cells), so a halo at least as wide as the distance such a difference can travel makes every
tile's interior equal to the untiled result up to float rounding.

That distance is composed here from what each module reports about itself (``reach()`` on blocks, the
encoder, the decoder step, the attender and the refiner; see :mod:`featlift.modeling.blocks`), never from
config strings: paths that run side by side take the maximum, layers in sequence add up. A layer that is
not translation-equivariant raises :class:`~featlift.modeling._region.UntileableError`, and the config is
refused for tiling with a message.

:func:`tiled_forward` is the one function the model calls; :func:`halo` and :func:`check_tile` are public
for inspection and for the memory estimate.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ._inference import Plan
from ._noise import Noise
from ._region import Region, UntileableError
from .guidance import GuidanceInputs

if TYPE_CHECKING:
    from .uplift import UPLiFT

__all__ = ["apply_head", "check_tile", "halo", "tiled_forward"]

logger = logging.getLogger(__name__)

Tile = tuple[int, int]


def halo(model: UPLiFT, iters: int) -> int:
    """Halo, in coarse feature cells, that makes tiled inference exact for ``iters`` iterations.

    Every distance is tracked in coarse cells. Iteration ``i`` runs on a grid ``up_factor ** i`` times
    finer than the coarse one; the guidance encoder on ``guidance_patch`` pixels per coarse cell.

    Raises:
        ValueError: a layer of the model is not translation-equivariant (see :func:`check_tile`).
    """
    cfg = model.config
    guide_density = cfg.resolved_guidance_patch
    try:
        guide = model.guidance_encoder.reach() / guide_density
        radius = model.attender.reach()
        reach = 0.0  # how far a border difference has travelled into the current features
        for i in range(iters):
            density = cfg.up_factor**i
            out = model.decoder_step.reach(reach, guide, density, guide_density)
            out = max(reach + radius / density, out)  # the attender: values (its radius) beside logits (G)
            if model.refiner is not None:
                out = model.refiner.reach(out, guide, density * model.decoder_step.scale, guide_density)
            reach = out
    except UntileableError as err:
        raise ValueError(
            f"tiled inference needs a network whose layers are translation-equivariant, and this config has "
            f"{err} (no published config does); run it untiled (tile=None)"
        ) from None
    return math.ceil(reach - 1e-9)


def check_tile(model: UPLiFT, tile: int | Tile | None) -> Tile | None:
    """``tile`` as a ``(rows, cols)`` pair of coarse cells (None stays None), or a ValueError naming what
    is wrong: not positive integers, or a model that cannot be tiled exactly."""
    if tile is None:
        return None
    pair = (tile, tile) if isinstance(tile, int) and not isinstance(tile, bool) else tile
    if (
        not isinstance(pair, tuple | list)
        or len(pair) != 2
        or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in pair)
    ):
        raise ValueError(f"tile must be a positive number of coarse cells or a (rows, cols) pair, got {tile!r}")
    halo(model, 1)  # raises for a model that cannot be tiled
    return tuple(pair)


def apply_head(head: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``head(x)``, checked to map [B, C, H, W] to [B, K, H, W] per pixel."""
    y = head(x)
    if not isinstance(y, Tensor) or y.dim() != 4 or y.shape[0] != x.shape[0] or y.shape[-2:] != x.shape[-2:]:
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(
            f"head must map features [B, C, H, W] to [B, K, H, W] per pixel (same B, H, W); "
            f"it turned {tuple(x.shape)} into {got}"
        )
    return y


def _spans(n: int, step: int, halo_cells: int):
    """(start, stop, grown start, grown stop) of each tile along one axis of ``n`` cells."""
    for start in range(0, n, step):
        stop = min(n, start + step)
        yield start, stop, max(0, start - halo_cells), min(n, stop + halo_cells)


def tiled_forward(
    model: UPLiFT,
    inputs: GuidanceInputs,
    features: Tensor,
    iters: int,
    *,
    tile: Tile,
    noise: Noise,
    plan: Plan,
    head: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """:meth:`UPLiFT.iterate <featlift.modeling.uplift.UPLiFT.iterate>` over tiles of ``tile`` coarse cells.

    ``features`` [B, C, h, w] (checked by the caller) -> [B, C or K, h * f**iters, w * f**iters], laid out
    as ``plan.channels_last`` says. ``head`` runs on each tile's interior, so only its K channels are
    ever held for the whole image.
    """
    b, _, h, w = features.shape
    total = model.config.up_factor**iters
    cells = halo(model, iters)
    layout = torch.channels_last if plan.channels_last else torch.contiguous_format
    out = None
    for y0, y1, gy0, gy1 in _spans(h, tile[0], cells):
        for x0, x1, gx0, gx1 in _spans(w, tile[1], cells):
            region = Region((gy0, gx0), (gy1 - gy0, gx1 - gx0), (h, w))
            y = model.iterate(inputs, region.cut(features), iters, noise=noise, plan=plan, region=region)
            inner = Region((y0 - gy0, x0 - gx0), (y1 - y0, x1 - x0), region.size)
            y = inner.cut(y)
            if head is not None:
                y = apply_head(head, y)
            if out is None:
                shape = (b, y.shape[1], h * total, w * total)
                out = torch.empty(shape, dtype=y.dtype, device=y.device, memory_format=layout)
            Region((y0, x0), (y1 - y0, x1 - x0), (h, w)).cut(out).copy_(y)
            del y
            logger.debug("tile rows %d-%d cols %d-%d done (halo %d)", y0, y1, x0, x1, cells)
    return out
