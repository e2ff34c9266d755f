"""The interface every backbone implements."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn

from .._tensors import freeze
from ..config import BackboneConfig
from ._normalisation import Stats, normalise

__all__ = ["Backbone"]


class Backbone(nn.Module):
    """A frozen feature extractor.

    ``forward(image)`` takes an image [B, 3, H, W] normalised by :meth:`normalise` (ImageNet mean/std for
    DINO; [0, 1] for the SD VAE) with H and W multiples of ``patch``, and returns features
    [B, channels, H / patch, W / patch].

    :attr:`normalisation` holds the backbone's own ``(mean, std)`` per RGB channel for images in [0, 1]:
    set by :func:`featlift.backbones.load_backbone` from the config, by the built-in classes from what
    they know (timm's pretrained config; [0, 1] for the VAE), None (unstated) for a subclass that does not
    set it. An :class:`~featlift.Upsampler` checks it against its UPLiFT config (see
    :func:`featlift.backbones.agreed_normalisation`) and uses the config's when it is unstated, keeping the
    result itself: the backbone object is never changed.

    Subclasses that featlift can build from a :class:`~featlift.config.BackboneConfig` set :attr:`source`
    and implement :meth:`from_config`.
    """

    patch: int
    channels: int
    source: ClassVar[str | None] = None  # the BackboneConfig.source this class serves ("timm", "diffusers")
    normalisation: Stats | None = None

    @classmethod
    def from_config(
        cls,
        config: BackboneConfig,
        *,
        pretrained: bool = True,
        weights: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> Backbone:
        """The backbone ``config`` names: ``weights`` when given, else (``pretrained``) its published
        weights (:meth:`published_weights`, from the Hub or the Hugging Face cache), else a random
        initialisation. Built as ``cls(config.name, weights)``."""
        if weights is None and pretrained:
            weights = cls.published_weights(config.name, cache_dir=cache_dir)
        return cls(config.name, weights)

    @classmethod
    def published_normalisation(cls, name: str) -> Stats | None:
        """The ``(mean, std)`` the published model ``name`` was trained with; None when unknown."""
        return None

    @classmethod
    def published_weights(cls, name: str, *, cache_dir: str | os.PathLike | None = None) -> Path:
        """The local path of the published weights of model ``name``, downloaded if needed."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from a config")

    def freeze(self) -> Backbone:
        """This backbone in eval mode with gradients off (in place)."""
        return freeze(self)

    def normalise(self, images: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """Images [B, 3, H, W] in [0, 1] -> ``(images - mean) / std`` with :attr:`normalisation` (none when
        unstated), computed in float32 on the images' device, returned in ``dtype`` (default float32)."""
        return normalise(images, self.normalisation, dtype)

    def activation_bytes(self, batch: int, size: tuple[int, int], itemsize: int) -> int:
        """Rough peak bytes of one forward pass on ``batch`` images of ``size`` (H, W) pixels, beyond the
        input and output, for featlift's memory guard. The default fits a ViT with a memory-efficient
        attention kernel: about 12 token maps of ``channels`` wide (11 measured for timm's ViT-S/14 on
        the CPU, linear in the token count). Backbones of other shapes override it."""
        tokens = (size[0] // self.patch) * (size[1] // self.patch)
        return 12 * batch * tokens * self.channels * itemsize

    def forward(self, image: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError
