"""The paper's self-supervised multi-depth reconstruction objective.

For an image I and depth d, the backbone features of I downsampled by 2**d are upsampled d times. Step j
(1..d) is compared with the backbone features of I downsampled by 2**(d - j); the last step with the
features of I itself. No labels: the frozen backbone provides every target.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._images import resize_image

if TYPE_CHECKING:
    from .._feature_cache import FeatureCache

__all__ = ["LOSSES", "depth_targets", "downsample", "feature_distance", "multi_depth_loss"]

LOSSES = ("l2", "l1", "cosine")


def feature_distance(pred: Tensor, target: Tensor, kind: str = "l2") -> Tensor:
    """Mean distance between feature maps [B, C, H, W]: squared error, absolute error or 1 - cosine."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    pred, target = pred.float(), target.float()
    if kind == "l2":
        return F.mse_loss(pred, target)
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "cosine":
        return (1 - F.cosine_similarity(pred, target, dim=1)).mean()
    raise ValueError(f"unknown loss {kind!r}; choose one of {LOSSES}")


def downsample(images: Tensor, factor: int) -> Tensor:
    """Antialiased bilinear downsampling by an integer ``factor`` (sizes must divide)."""
    if factor == 1:
        return images
    h, w = images.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"images of {h}x{w} cannot be downsampled by {factor}; use sizes divisible by it")
    return resize_image(images, (h // factor, w // factor))


@torch.no_grad()
def depth_targets(
    backbone: nn.Module, images: Tensor, depth: int, cache: FeatureCache | None = None, variant: str = ""
) -> list[Tensor]:
    """Backbone features of ``images`` downsampled by 2**depth, 2**(depth-1), ..., 1 (coarsest first).

    ``cache`` (a :class:`featlift._feature_cache.FeatureCache`) reads each level's features from disk
    where it holds them and stores the others; ``variant`` keeps apart the entries of a backbone run under
    autocast (``"bf16-autocast"``)."""
    inputs = [downsample(images, 2**k) for k in range(depth, -1, -1)]
    if cache is None:
        return [backbone(x) for x in inputs]
    return [cache.lowres(backbone, x, variant=variant) for x in inputs]


def multi_depth_loss(
    model: nn.Module,
    targets: list[Tensor],
    images: Tensor,
    *,
    kind: str = "l2",
    noise_std: float = 0.0,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """Loss of one depth (``len(targets) - 1``), averaged over its steps, and each step's loss.

    Args:
        model: the UPLiFT network being trained.
        targets: :func:`depth_targets` for ``images``.
        images: normalised full-size images [B, 3, H, W].
        kind: ``"l2"`` (default), ``"l1"`` or ``"cosine"``.
        noise_std: standard deviation of the Gaussian noise added to the input features (the VAE recipe).
        noise: unit-variance noise shaped like ``targets[0]``, scaled by ``noise_std``, instead of a draw
            from ``generator`` (the trainer passes its process's rows of one draw for the global batch).
        generator: random generator for the feature noise (when ``noise`` is not given) and for the
            model's own noise channels: it is passed on as ``model(..., generator=generator)``.
    """
    depth = len(targets) - 1
    if depth < 1:
        raise ValueError("the objective needs depth >= 1")
    x = targets[0]
    if noise_std:
        if noise is None:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        elif noise.shape != x.shape:
            raise ValueError(f"noise {tuple(noise.shape)} must have the input features' shape {tuple(x.shape)}")
        x = x + noise_std * noise.to(x.dtype)
    steps = model(downsample(images, 2**depth), x, iters=depth, return_steps=True, generator=generator)
    losses = [feature_distance(step, target, kind) for step, target in zip(steps, targets[1:], strict=True)]
    return torch.stack(losses).mean(), losses
