"""Exact tiled inference as geometry: run a crop-wise ``iterate`` over tiles of the coarse grid so that
peak memory follows the tile.

Each tile is grown by a halo of coarse cells, upsampled on its own (by the ``iterate`` callable the model
passes in), and its interior written into the output. A crop differs from the whole image only near its
edges (zero padding of the convs, replicated attender cells), so a halo at least as wide as the distance
such a difference can travel makes every tile's interior equal to the untiled result up to float
rounding. The model computes that distance from its own parts (:meth:`featlift.UPLiFT.tile_halo`); this
module knows nothing of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

from ._region import Region

__all__ = ["Tile", "apply_head", "tile_pair", "tiled"]

logger = logging.getLogger(__name__)

Tile = tuple[int, int]


def tile_pair(tile: int | Tile | None) -> Tile | None:
    """``tile`` as a ``(rows, cols)`` pair of coarse cells (None stays None), or a ValueError naming what
    is wrong."""
    if tile is None:
        return None
    pair = (tile, tile) if isinstance(tile, int) and not isinstance(tile, bool) else tile
    if (
        not isinstance(pair, tuple | list)
        or len(pair) != 2
        or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in pair)
    ):
        raise ValueError(f"tile must be a positive number of coarse cells or a (rows, cols) pair, got {tile!r}")
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


def tiled(
    iterate: Callable[[Tensor, Region], Tensor],
    features: Tensor,
    *,
    tile: Tile,
    halo: int,
    factor: int,
    channels_last: bool,
    head: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """``iterate`` over tiles of ``tile`` coarse cells, each grown by ``halo`` cells.

    ``iterate(crop, region)`` upsamples ``crop`` (``features`` cut to ``region``) by ``factor`` per side.
    ``features`` [B, C, h, w] -> [B, C or K, h * factor, w * factor], laid out channels-last when
    ``channels_last``. ``head`` runs on each tile's interior, so only its K channels are ever held for the
    whole image.
    """
    b, _, h, w = features.shape
    layout = torch.channels_last if channels_last else torch.contiguous_format
    out = None
    for y0, y1, gy0, gy1 in _spans(h, tile[0], halo):
        for x0, x1, gx0, gx1 in _spans(w, tile[1], halo):
            region = Region((gy0, gx0), (gy1 - gy0, gx1 - gx0), (h, w))
            y = iterate(region.cut(features), region)
            inner = Region((y0 - gy0, x0 - gx0), (y1 - y0, x1 - x0), region.size)
            y = inner.cut(y)
            if head is not None:
                y = apply_head(head, y)
            if out is None:
                shape = (b, y.shape[1], h * factor, w * factor)
                out = torch.empty(shape, dtype=y.dtype, device=y.device, memory_format=layout)
            Region((y0, x0), (y1 - y0, x1 - x0), (h, w)).cut(out).copy_(y)
            del y
            logger.debug("tile rows %d-%d cols %d-%d done (halo %d)", y0, y1, x0, x1, halo)
    return out
