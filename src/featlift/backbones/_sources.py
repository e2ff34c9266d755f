"""The one dispatch on ``BackboneConfig.source``: which :class:`Backbone` class serves each source."""

from __future__ import annotations

from .base import Backbone
from .sd_vae import DiffusersVAE
from .timm_vit import TimmViT

__all__ = ["BACKBONE_CLASSES", "backbone_class"]

# source -> class (diffusers itself is imported only when a VAE is built)
BACKBONE_CLASSES: dict[str, type[Backbone]] = {cls.source: cls for cls in (TimmViT, DiffusersVAE)}


def backbone_class(source: str | None) -> type[Backbone]:
    """The class serving ``source``; a ValueError listing the known sources otherwise."""
    try:
        return BACKBONE_CLASSES[source]
    except KeyError:
        raise ValueError(
            f"unknown backbone source {source!r}; expected one of {', '.join(map(repr, BACKBONE_CLASSES))}"
        ) from None
