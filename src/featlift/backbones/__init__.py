"""Frozen feature backbones behind one small interface (:class:`Backbone`)."""

from .base import Backbone
from .timm_vit import TimmViT

__all__ = ["Backbone", "TimmViT", "create_backbone"]


def create_backbone(source: str, name: str, **kwargs) -> Backbone:
    """A backbone by source (``"timm"`` or ``"diffusers"``) and model name; see each class for kwargs."""
    if source == "timm":
        return TimmViT(name, **kwargs)
    if source == "diffusers":
        from .sd_vae import DiffusersVAE

        return DiffusersVAE(name, **kwargs)
    raise ValueError(f"unknown backbone source {source!r}; expected 'timm' or 'diffusers'")
