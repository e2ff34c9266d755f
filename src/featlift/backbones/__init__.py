"""Frozen feature backbones behind one small interface (:class:`Backbone`).

:func:`load_backbone` builds the backbone a :class:`~featlift.config.BackboneConfig` names; the table
:data:`BACKBONE_CLASSES` maps each ``source`` to the class that builds (and fetches the weights of) it.
"""

from __future__ import annotations

import os

from ..config import BackboneConfig
from ._sources import BACKBONE_CLASSES, agreed_normalisation, backbone_class, image_normalisation
from .base import Backbone
from .sd_vae import DiffusersVAE
from .timm_vit import TimmViT

__all__ = [
    "BACKBONE_CLASSES",
    "Backbone",
    "DiffusersVAE",
    "TimmViT",
    "agreed_normalisation",
    "image_normalisation",
    "load_backbone",
]


def load_backbone(
    config: BackboneConfig,
    *,
    pretrained: bool = True,
    weights: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Backbone:
    """The frozen backbone ``config`` names (``source`` + ``name``), normalising as ``config`` says.

    Args:
        config: the backbone section of an UPLiFT config.
        pretrained: fetch the published weights (timm's ``model.safetensors``; the diffusers pipeline's
            ``vae`` folder) when ``weights`` is not given; False gives random weights.
        weights: local weights: a timm ``.safetensors``/``.pth`` file (read with ``weights_only=True``),
            or for the VAE a folder with ``config.json`` and ``diffusion_pytorch_model.safetensors``.
        cache_dir: Hugging Face cache directory (default: the standard cache).

    The result's :attr:`Backbone.normalisation` is
    :func:`~featlift.backbones.image_normalisation` of ``config``.

    Raises:
        ValueError: ``config`` names no backbone, or an unknown source.
        UnknownModelError: timm has no model of that name.
        ConfigError: timm's name has no known normalisation and ``config`` states none.
        CheckpointError, DownloadError, MissingDependencyError: see the backbone classes.
    """
    if config.source is None or config.name is None:
        raise ValueError(
            "this upsampler's config names no backbone (backbone.source / backbone.name); run your backbone "
            "yourself and call featlift.build_upsampler(...)(image, features)"
        )
    cls = backbone_class(config.source)
    backbone = cls.from_config(config, pretrained=pretrained, weights=weights, cache_dir=cache_dir)
    backbone.normalisation = image_normalisation(config)
    return backbone
