"""The protocols' image transforms.

- :func:`resize_and_crop`: the shorter side resized to ``S`` (bilinear, antialiased; labels and depth
  nearest at pixel centres, as PIL's ``NEAREST``), then the centre ``S x S`` crop with torchvision's
  ``CenterCrop`` rounding. JAFAR and NAF evaluate at ``S = 448``.
- :func:`flip_batch`: the probe's training augmentation (JAFAR, NAF): with probability ``p`` the whole
  batch is flipped left-right, image and target alike, before any feature is computed, so the backbone
  and the upsampler's guidance see the flipped image.
"""

from __future__ import annotations

import torch
from torch import Tensor

from featlift._images import resize_and_crop

__all__ = ["flip_batch", "resize_and_crop"]


def flip_batch(images: Tensor, target: Tensor, p: float, generator: torch.Generator) -> tuple[Tensor, Tensor, bool]:
    """``(images, target, flipped)``: both flipped along their last axis when one draw from ``generator``
    falls below ``p`` (one draw per batch, so the data order and the flips follow the seed alone)."""
    if not 0 <= p <= 1:
        raise ValueError(f"flip probability must lie in [0, 1], got {p!r}")
    flipped = bool(torch.rand((), generator=generator) < p)
    if flipped:
        return images.flip(-1), target.flip(-1), True
    return images, target, False
