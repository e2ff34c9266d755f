"""Where a crop sits in the full image, for exact tiled inference.

Almost every layer of UPLiFT is translation-equivariant, so a crop with a wide enough halo computes the
same interior as the full image. Three things are not, and consult a :class:`Region`:

- the bilinear residual of the transposed conv uses ``align_corners=True``, whose sample positions
  depend on the full grid's size (:func:`corner_aligned_upsample`);
- the noise channels (VAE variant) are drawn for the full grid, in the untiled order, and sliced
  (:class:`~featlift.modeling._noise.Noise`);
- nearest resampling of guidance maps is equivariant only for crops aligned to the ratio, which tiles on
  the coarse grid always are (bilinear resampling is equivariant up to its one-cell reach).

Layers that are not translation-equivariant at all (strided blocks, encoder down ops) raise
:class:`UntileableError` when asked for their reach.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Region", "corner_aligned_upsample"]


@dataclass(frozen=True)
class Region:
    """A crop of the grid at one resolution: its top-left ``origin``, its ``size``, the ``full`` grid
    size, and the upsampling ``iteration`` it belongs to (which names its noise draws). Immutable."""

    origin: tuple[int, int]
    size: tuple[int, int]
    full: tuple[int, int]
    iteration: int = 0

    def scaled(self, factor: int, iteration: int | None = None) -> Region:
        """The same crop on a grid ``factor`` times finer (at ``iteration``, if given)."""
        return Region(
            (self.origin[0] * factor, self.origin[1] * factor),
            (self.size[0] * factor, self.size[1] * factor),
            (self.full[0] * factor, self.full[1] * factor),
            self.iteration if iteration is None else iteration,
        )

    def cut(self, full: Tensor) -> Tensor:
        """This crop of a tensor ``[..., H, W]`` laid out on the full grid (or a multiple of it)."""
        py, px = full.shape[-2] // self.full[0], full.shape[-1] // self.full[1]
        (y0, x0), (rows, cols) = self.origin, self.size
        return full[..., y0 * py : (y0 + rows) * py, x0 * px : (x0 + cols) * px]


def _corner_aligned_taps(n_in: int, n_out: int, out_start: int, out_len: int, in_start: int, in_len: int, device):
    """Source taps of ``align_corners=True`` linear resampling for output rows ``out_start ..`` of a
    full ``n_in -> n_out`` resize, as indices into a crop that starts at ``in_start``."""
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    dst = torch.arange(out_start, out_start + out_len, device=device, dtype=torch.float32)
    src = dst * torch.tensor(scale, dtype=torch.float32, device=device)
    lo = src.floor().long()
    frac = src - lo
    hi = torch.clamp(lo + 1, max=n_in - 1)
    lo = (lo - in_start).clamp(0, in_len - 1)
    hi = (hi - in_start).clamp(0, in_len - 1)
    return lo, hi, frac


def corner_aligned_upsample(x: Tensor, region: Region, factor: int) -> Tensor:
    """Bilinear ``align_corners=True`` upsampling by ``factor`` of the crop ``x`` of ``region``'s grid,
    equal (up to rounding) to cropping the upsampled full grid. Output rows whose taps fall outside the
    crop use its edge (they lie in the halo and are discarded)."""
    h, w = x.shape[-2:]
    (y0, x0), (full_h, full_w) = region.origin, region.full
    ry0, ry1, fy = _corner_aligned_taps(full_h, full_h * factor, y0 * factor, h * factor, y0, h, x.device)
    rx0, rx1, fx = _corner_aligned_taps(full_w, full_w * factor, x0 * factor, w * factor, x0, w, x.device)
    fy = fy.to(x.dtype).view(-1, 1)
    fx = fx.to(x.dtype)
    rows = x[:, :, ry0] * (1 - fy) + x[:, :, ry1] * fy
    return rows[:, :, :, rx0] * (1 - fx) + rows[:, :, :, rx1] * fx
