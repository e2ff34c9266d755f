"""The one dispatch on ``BackboneConfig.source`` (which :class:`Backbone` class serves each source), and
beside it the one rule for how images are normalised before a backbone (and the guidance encoder) sees
them.

For a config (:func:`image_normalisation`):

1. A config that states ``mean`` and ``std`` is followed as written.
2. Otherwise the backbone class of the config's ``source`` gives its published statistics
   (:meth:`Backbone.published_normalisation`): timm's pretrained config for a timm model name (ImageNet
   statistics for DINOv2/DINOv3, OpenAI's for CLIP, 0.5/0.5 for SigLIP, ...), exactly what timm's own
   transforms use.
3. Otherwise (the diffusers VAE, or user-supplied features) images stay in [0, 1].

A :class:`~featlift.backbones.Backbone` carries its own statistics (:attr:`Backbone.normalisation`):
:func:`~featlift.backbones.load_backbone` gives it the config's, by the rule above; a ``TimmViT`` built
directly takes timm's for its name, a ``DiffusersVAE`` [0, 1], a user's subclass none unless it sets
them. When a backbone meets an UPLiFT config (:func:`agreed_normalisation`, used by the Upsampler and the
trainer, which keep the result themselves), the two must agree where both state statistics, otherwise a
``ValueError`` names both and the fix; where only one states them, that one is used. The authors' YAML
states no statistics, so configs read from it take rule 2 or 3: the same model name can never be
normalised two ways.
"""

from __future__ import annotations

from ..config import BackboneConfig
from ..errors import ConfigError
from ._normalisation import IDENTITY, Stats, same_stats
from .base import Backbone
from .sd_vae import DiffusersVAE
from .timm_vit import TimmViT

__all__ = ["BACKBONE_CLASSES", "agreed_normalisation", "backbone_class", "image_normalisation"]

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


def _stated(backbone: BackboneConfig) -> Stats | None:
    """The statistics ``backbone`` implies (rules 1-3), or None for a config that names no backbone and
    states no mean/std (features supplied by the user: nothing is said)."""
    if backbone.mean is None and backbone.source is None:
        return None
    return image_normalisation(backbone)


def image_normalisation(backbone: BackboneConfig) -> Stats:
    """``(mean, std)`` per RGB channel for images in [0, 1], by the rule in this module's docstring.

    Raises:
        ConfigError: a timm backbone whose name timm does not know, with no mean/std in the config.
    """
    if backbone.mean is not None:
        return backbone.mean, backbone.std
    if backbone.source is None:
        return IDENTITY
    stats = backbone_class(backbone.source).published_normalisation(backbone.name)
    if stats is None:
        raise ConfigError(
            f"backbone.mean: no image normalisation is published for the {backbone.source} model "
            f"{backbone.name!r} (for timm: it has no pretrained config for that name), so it is unknown; state "
            "backbone.mean and backbone.std in the config"
        )
    return stats


def agreed_normalisation(own: Stats | None, config: BackboneConfig, *, what: str = "the backbone") -> Stats:
    """The statistics to use when a backbone stating ``own`` (None: unstated) runs with ``config``.

    Where both state statistics they must agree; where one does, it is used; where neither does, images
    stay in [0, 1].

    Raises:
        ValueError: both state statistics and they differ (the message gives both and the fixes).
        ConfigError: ``config`` names a timm backbone timm does not know and states no mean/std.
    """
    stated = _stated(config)
    if own is None:
        return stated if stated is not None else IDENTITY
    if stated is None or same_stats(own, stated):
        return own
    raise ValueError(
        f"{what} normalises images with mean {list(own[0])} and std {list(own[1])}, but the upsampler's config "
        f"(backbone {config.name!r}) implies mean {list(stated[0])} and std {list(stated[1])}; the upsampler "
        "was trained with the config's. Fix: use the backbone the config names (featlift.backbones.load_backbone"
        "(config.backbone)), set backbone.normalisation to the config's statistics, or state the backbone's "
        "statistics as backbone.mean/std in the config"
    )
