"""The one rule for how images are normalised before a backbone (and the guidance encoder) sees them.

1. A config that states ``mean`` and ``std`` is followed as written.
2. Otherwise a timm backbone uses timm's pretrained config for its model name (ImageNet statistics for
   DINOv2/DINOv3, OpenAI's for CLIP, 0.5/0.5 for SigLIP, ...), exactly what timm's own transforms use.
3. Otherwise (the diffusers VAE, or user-supplied features) images stay in [0, 1].

The Upsampler, the trainer and the authors'-YAML reader all go through :func:`image_normalisation`, so
the same model name can never be normalised two ways.
"""

from __future__ import annotations

import functools

from ..config import BackboneConfig
from ..errors import ConfigError

__all__ = ["IDENTITY", "image_normalisation"]

Stats = tuple[tuple[float, float, float], tuple[float, float, float]]

IDENTITY: Stats = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


@functools.cache
def _timm_stats(name: str) -> Stats | None:
    import timm

    pcfg = timm.models.get_pretrained_cfg(name)
    if pcfg is None or pcfg.mean is None or pcfg.std is None:
        return None
    return tuple(float(v) for v in pcfg.mean), tuple(float(v) for v in pcfg.std)


def image_normalisation(backbone: BackboneConfig) -> Stats:
    """``(mean, std)`` per RGB channel for images in [0, 1], by the rule in this module's docstring.

    Raises:
        ConfigError: a timm backbone whose name timm does not know, with no mean/std in the config.
    """
    if backbone.mean is not None:
        return backbone.mean, backbone.std
    if backbone.source == "timm":
        stats = _timm_stats(backbone.name)
        if stats is None:
            raise ConfigError(
                f"backbone.mean: timm has no pretrained config for {backbone.name!r}, so its image "
                "normalisation is unknown; state backbone.mean and backbone.std in the config"
            )
        return stats
    return IDENTITY
