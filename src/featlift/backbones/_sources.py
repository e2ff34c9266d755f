"""The one table of backbone sources (which :class:`Backbone` class serves each ``source``), the ways in
(:func:`create_backbone` for a name such as ``SOURCE:NAME``, :func:`load_backbone` for a saved config),
and beside them the one rule for how images are normalised before a backbone (and the guidance encoder)
sees them.

Names read ``SOURCE:NAME`` (``open_clip:ViT-B-16/openai``, ``transformers:facebook/dinov2-small``,
``timm:resnet50.a1_in1k``, ``hub:NVlabs/RADIO:radio_model``); a name without a known source prefix is a
timm name, as before sources existed (timm's own ``hf-hub:`` names stay timm's).

For a config (:func:`image_normalisation`):

1. A config that states ``mean`` and ``std`` is followed as written.
2. Otherwise the backbone class of the config's ``source`` gives its published statistics
   (:meth:`Backbone.published_normalisation`): timm's pretrained config for a timm model name (ImageNet
   statistics for DINOv2/DINOv3, OpenAI's for CLIP, 0.5/0.5 for SigLIP, ...), exactly what timm's own
   transforms use; open_clip's preprocessing config; a transformers model's image processor config.
3. Otherwise (the diffusers VAE, a torch.hub model, or user-supplied features) images stay in [0, 1].

A :class:`~featlift.backbones.Backbone` carries its own statistics (:attr:`Backbone.normalisation`):
:func:`~featlift.backbones.load_backbone` gives it the config's, by the rule above; a backbone built by
:func:`create_backbone` or directly takes its library's for its name, a ``DiffusersVAE`` or torch.hub
model [0, 1], a :class:`~featlift.backbones.UserModule` the statistics it states, a user's subclass none
unless it sets them. When a backbone meets an UPLiFT config (:func:`agreed_normalisation`, used by the
Upsampler and the trainer, which keep the result themselves), the two must agree where both state
statistics, otherwise a ``ValueError`` names both and the fix; where only one states them, that one is
used. Trained models write their statistics into ``config.json``; the authors' YAML states none, so
configs read from it take rule 2 or 3: the same model name can never be normalised two ways.
"""

from __future__ import annotations

import os

from ..config import BackboneConfig
from ..errors import ConfigError
from ._normalisation import IDENTITY, Stats, same_stats
from .base import Backbone, BuildOptions
from .custom import ModuleBackbone, UserModule
from .hf_transformers import TransformersBackbone
from .openclip import OpenClipBackbone
from .sd_vae import DiffusersVAE
from .timm_models import TimmBackbone
from .torch_hub import HubBackbone

__all__ = [
    "BACKBONE_CLASSES",
    "agreed_normalisation",
    "backbone_class",
    "create_backbone",
    "image_normalisation",
    "load_backbone",
    "parse_backbone",
]

# source -> class; each library (diffusers, open_clip, transformers) is imported only when its backbone is built
BACKBONE_CLASSES: dict[str, type[Backbone]] = {
    cls.source: cls
    for cls in (TimmBackbone, DiffusersVAE, OpenClipBackbone, TransformersBackbone, HubBackbone, ModuleBackbone)
}

BackboneLike = str | UserModule | Backbone


def backbone_class(source: str | None) -> type[Backbone]:
    """The class serving ``source``; a ValueError listing the known sources otherwise."""
    try:
        return BACKBONE_CLASSES[source]
    except KeyError:
        raise ValueError(
            f"unknown backbone source {source!r}; expected one of {', '.join(map(repr, BACKBONE_CLASSES))}"
        ) from None


def parse_backbone(name: str) -> tuple[str, str]:
    """``"SOURCE:NAME"`` -> ``(SOURCE, NAME)`` for a source in :data:`BACKBONE_CLASSES`; any other text is a
    timm name: ``("timm", name)``.

    Raises:
        ConfigError: an empty name, or the ``module`` source (a user's module is Python-only).
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"backbone.name: expected SOURCE:NAME or a timm model name, got {name!r}")
    source, sep, rest = name.partition(":")
    if not sep or source not in BACKBONE_CLASSES:
        return "timm", name
    if source == ModuleBackbone.source:
        raise ConfigError(
            f"backbone.source: {name!r}: your own module is given in Python, as featlift.backbones.UserModule(...) "
            "(training: TrainConfig(backbone=...); loading: load_upsampler(dir, backbone=...)), not by name"
        )
    if not rest:
        raise ConfigError(
            f"backbone.name: {name!r} names no model after {source}:, e.g. {BACKBONE_CLASSES[source].example}"
        )
    return source, rest


def _finish(backbone: Backbone) -> Backbone:
    """The stated stride and channels checked against one small call (:meth:`Backbone.verify`)."""
    return backbone.verify()


def create_backbone(
    backbone: BackboneLike,
    *,
    stride: int | None = None,
    pretrained: bool = True,
    weights: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    trust_repo: bool = False,
) -> Backbone:
    """A frozen backbone from a name (``SOURCE:NAME``, or a bare timm name), a
    :class:`~featlift.backbones.UserModule`, or a :class:`Backbone` (returned as it is), with its stride
    and channels checked against one small call.

    Args:
        backbone: what to build (see :func:`parse_backbone` for names).
        stride: the output stride asked for (timm's convolutional and hierarchical models pick their
            feature stage by it; None: the model's own or deepest).
        pretrained: the published weights (through each library's own Hugging Face download); False:
            random weights where the source allows it.
        weights: local weights: a timm or open_clip state-dict file, a transformers or diffusers folder,
            a torch.hub module's state dict.
        cache_dir: the Hugging Face cache directory (default: the standard one).
        trust_repo: let a torch.hub entry from GitHub run its code without asking.

    The result's :attr:`Backbone.normalisation` is what its library publishes for the name (the
    statistics stated in a ``UserModule``).

    Raises:
        ConfigError: a bad name or stride, or output of another shape than the stride and channels imply.
        UnknownModelError, DownloadError, CheckpointError, MissingDependencyError: from the source.
    """
    if isinstance(backbone, Backbone):
        return backbone
    if isinstance(backbone, UserModule):
        if weights is not None:
            raise ConfigError("backbone_weights: your own module brings its weights; load them into it yourself")
        result = ModuleBackbone(backbone)
        result.check_stride(stride)
        return _finish(result)
    source, name = parse_backbone(backbone)
    options = BuildOptions(stride, pretrained, weights, cache_dir, trust_repo)
    return _finish(backbone_class(source).create(name, options))


def load_backbone(
    config: BackboneConfig,
    *,
    pretrained: bool = True,
    weights: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    trust_repo: bool = False,
) -> Backbone:
    """The frozen backbone ``config`` names (``source`` + ``name``) at its stride (``patch``), normalising
    as ``config`` says.

    Args:
        config: the backbone section of an UPLiFT config.
        pretrained: fetch the published weights (timm's ``model.safetensors``; the diffusers pipeline's
            ``vae`` folder; open_clip's and transformers' own downloads) when ``weights`` is not given;
            False gives random weights.
        weights: local weights (see :func:`create_backbone`).
        cache_dir: Hugging Face cache directory (default: the standard cache).
        trust_repo: let a torch.hub entry from GitHub run its code without asking.

    The result's :attr:`Backbone.normalisation` is
    :func:`~featlift.backbones.image_normalisation` of ``config``.

    Raises:
        ValueError: ``config`` names no backbone, or an unknown source.
        ConfigError: the model gives another stride or channel count than ``config`` records, or a name
            with no known normalisation and none in ``config``; a user's own module (source ``module``),
            which must be passed in: the message asks for it by name.
        UnknownModelError, CheckpointError, DownloadError, MissingDependencyError: see the backbone classes.
    """
    if config.source is None or config.name is None:
        raise ValueError(
            "this upsampler's config names no backbone (backbone.source / backbone.name); run your backbone "
            "yourself and call featlift.build_upsampler(...)(image, features)"
        )
    options = BuildOptions(pretrained=pretrained, weights=weights, cache_dir=cache_dir, trust_repo=trust_repo)
    backbone = backbone_class(config.source).from_config(config, options)
    backbone.normalisation = image_normalisation(config)
    return _finish(backbone)


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
