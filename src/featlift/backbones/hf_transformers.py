"""Hugging Face transformers vision models as backbones, loaded with ``AutoModel``: DINOv2 (with or without
registers), DINOv3, SigLIP and SigLIP2 vision towers, CLIP vision towers, ViT, SAM's vision encoder.
Patch tokens of the last layer after the final norm, prefix tokens dropped, reshaped to the grid;
statistics from the model's image processor config. transformers is imported only when such a backbone is
built (``featlift[transformers]``)."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import ConfigError, DownloadError, FeatliftError, UnknownModelError, require
from ._normalisation import IDENTITY, Stats
from .base import Backbone, BuildOptions, tokens_to_grid

__all__ = ["TOWERS", "Tower", "TransformersBackbone"]

logger = logging.getLogger(__name__)

_FIX = (
    "Fixes: run once with network access to fill the Hugging Face cache, then set HF_HUB_OFFLINE=1; or pass "
    "a local folder with the model's config.json and model.safetensors (backbone_weights=DIR, "
    "--backbone-weights DIR, or the folder itself as the name)"
)


def _transformers():
    return require("transformers", feature="the transformers backbones", extra="transformers")


@dataclass(frozen=True)
class Tower:
    """How featlift reads one kind of transformers vision model (keyed by its config's ``model_type``)."""

    prefix: Callable | None = None  # config -> leading non-patch tokens (CLS, registers); None: N - h * w
    kwargs: dict = field(default_factory=dict)  # extra forward keywords (interpolate_pos_encoding)
    norm: str | None = None  # a final norm the model leaves off last_hidden_state (CLIP's post_layernorm)
    forward: Callable | None = None  # (tower, image) -> features [B, C, h, w], for models read another way


def _interpolated_pos_embed(pos_embed: Tensor, size: tuple[int, int]) -> Tensor:
    """An NHWC absolute position embedding [1, H0, W0, C] resized to ``size`` (bicubic, as timm's)."""
    from timm.layers import resample_abs_pos_embed_nhwc

    return resample_abs_pos_embed_nhwc(pos_embed, list(size))


def _sam(tower: nn.Module, image: Tensor) -> Tensor:
    """SAM's ViT encoder and neck, with its absolute position embedding interpolated to the image's grid
    (the model's own forward accepts 1024 px only; its relative position tables interpolate themselves)."""
    x = tower.patch_embed.projection(image).permute(0, 2, 3, 1)
    if tower.pos_embed is not None:
        x = x + _interpolated_pos_embed(tower.pos_embed, tuple(x.shape[1:3])).to(x.dtype)
    for layer in tower.layers:
        x = layer(x)
        x = x[0] if isinstance(x, tuple) else x
    return tower.neck(x)


def _siglip2(tower: nn.Module, image: Tensor) -> Tensor:
    """SigLIP2 (NaFlex) takes patches: the image cut into its grid of patches (the image processor's
    layout), every patch valid, with the grid's shape."""
    p = tower.config.patch_size
    b, c, height, width = image.shape
    h, w = height // p, width // p
    patches = image.reshape(b, c, h, p, w, p).permute(0, 2, 4, 3, 5, 1).reshape(b, h * w, p * p * c)
    mask = torch.ones(b, h * w, dtype=torch.int32, device=image.device)
    shapes = torch.tensor([[h, w]] * b, dtype=torch.long, device=image.device)
    out = tower(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes).last_hidden_state
    return tokens_to_grid(out, (h, w), 0, what="SigLIP2")


def _one(config) -> int:
    return 1


def _cls_and_registers(config) -> int:
    return 1 + int(config.num_register_tokens)


def _none(config) -> int:
    return 0


_INTERPOLATE = {"interpolate_pos_encoding": True}

# model_type of the vision tower -> how to read it. Other model types are read the generic way (their
# last_hidden_state, prefix = tokens - patches), with a warning that featlift has not checked them.
TOWERS: dict[str, Tower] = {
    "dinov2": Tower(prefix=_one),
    "dinov2_with_registers": Tower(prefix=_cls_and_registers),
    "dinov3_vit": Tower(prefix=_cls_and_registers),  # RoPE: any grid
    "vit": Tower(prefix=_one, kwargs=_INTERPOLATE),
    "clip_vision_model": Tower(prefix=_one, kwargs=_INTERPOLATE, norm="post_layernorm"),
    "siglip_vision_model": Tower(prefix=_none, kwargs=_INTERPOLATE),
    "siglip2_vision_model": Tower(forward=_siglip2),
    "sam_vision_model": Tower(forward=_sam),
}


def _vision_tower(model: nn.Module) -> nn.Module:
    """The vision part of a loaded model: ``vision_model`` (CLIP, SigLIP), ``vision_encoder`` (SAM), or the
    model itself (DINOv2, DINOv3, ViT)."""
    for attr in ("vision_model", "vision_encoder"):
        tower = getattr(model, attr, None)
        if isinstance(tower, nn.Module):
            return tower
    return model


def _patch_size(config) -> int:
    p = config.patch_size
    return int(p[0] if isinstance(p, (list, tuple)) else p)


class TransformersBackbone(Backbone):
    """A transformers vision model loaded with ``AutoModel``.

    The features are the last layer's patch tokens after the model's final norm (``last_hidden_state``,
    plus CLIP's ``post_layernorm``), prefix tokens (CLS, registers) dropped, reshaped to the grid; for SAM,
    the vision encoder's output after its neck (256 channels). Position embeddings are interpolated to
    each image's grid (``interpolate_pos_encoding``, or featlift's bicubic resize for SAM), so any multiple
    of the patch works. :data:`TOWERS` lists the model types read and checked; others are read the same
    generic way, with a warning.

    Args:
        name: a Hugging Face Hub repo id (``"facebook/dinov2-small"``, ``"google/siglip-base-patch16-224"``,
            ``"facebook/sam-vit-base"``) or a local folder saved with ``save_pretrained``.
        weights: a local folder (``config.json`` + ``model.safetensors``) to load instead of ``name``.
        pretrained: load the weights (through transformers' own Hugging Face download, safetensors only);
            False: ``AutoConfig`` + ``AutoModel.from_config``, random weights.
        cache_dir: the Hugging Face cache directory.

    :attr:`normalisation` comes from the model's image processor config (``preprocessor_config.json``:
    ``image_mean``/``image_std``, none when ``do_normalize`` is false), in the ``weights`` folder or else
    the name's; None when there is none.

    Raises:
        MissingDependencyError: transformers is not installed (``pip install "featlift[transformers]"``).
        DownloadError: the model can be neither downloaded nor found in the cache.
        UnknownModelError: transformers cannot build a model from the name's config.
    """

    source = "transformers"
    example = "transformers:facebook/dinov2-small"

    def __init__(
        self,
        name: str,
        weights: str | os.PathLike | None = None,
        *,
        pretrained: bool = False,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        tf = _transformers()
        where = os.fspath(weights) if weights is not None else name
        try:
            if weights is not None or pretrained:
                model = tf.AutoModel.from_pretrained(where, cache_dir=cache_dir, use_safetensors=True)
            else:
                model = tf.AutoModel.from_config(tf.AutoConfig.from_pretrained(where, cache_dir=cache_dir))
        except FeatliftError:
            raise
        except OSError as err:  # missing files, no network in offline mode, no safetensors weights
            detail = " ".join(str(err).split())[:600] or "no details"
            raise DownloadError(
                f"transformers could not load {where!r} ({type(err).__name__}: {detail}). {_FIX}"
            ) from None
        except (ValueError, KeyError) as err:  # an unknown model type or a config AutoModel cannot map
            detail = " ".join(str(err).split())[:600] or "no details"
            raise UnknownModelError(
                f"transformers cannot build a vision model from {where!r} ({type(err).__name__}: {detail}); name "
                "a vision model repo such as 'facebook/dinov2-small'"
            ) from None
        tower = _vision_tower(model)
        del model  # a text tower or mask decoder is not kept
        config = tower.config
        self.model_type = config.model_type
        self.reader = TOWERS.get(self.model_type)
        if self.reader is None:
            logger.warning(
                "transformers model type %r is not among the ones featlift checks (%s); reading its "
                "last_hidden_state as patch tokens after any prefix tokens",
                self.model_type,
                ", ".join(TOWERS),
            )
            accepts = "interpolate_pos_encoding" in inspect.signature(tower.forward).parameters
            self.reader = Tower(kwargs=_INTERPOLATE if accepts else {})
        self.tower = tower
        self.name = name
        self.patch = _patch_size(config)
        self.channels = int(config.output_channels if self.model_type == "sam_vision_model" else config.hidden_size)
        stats = _processor_stats(where, cache_dir)
        if stats is None and where != name:  # a weights folder without the processor config: the name's
            stats = _processor_stats(name, cache_dir)
        self.normalisation = stats
        self.freeze()

    @classmethod
    def build(cls, name: str, options: BuildOptions) -> TransformersBackbone:
        """The weights come through transformers' own Hugging Face download (see :meth:`Backbone.build`)."""
        return cls(name, options.weights, pretrained=options.pretrained, cache_dir=options.cache_dir)

    @classmethod
    def published_normalisation(cls, name: str) -> Stats | None:
        """The ``image_mean``/``image_std`` of the model's image processor config; None when it has none."""
        return _processor_stats(name, None)

    @property
    def prefix_tokens(self) -> int | None:
        """Leading non-patch tokens this model type returns (None: counted per call)."""
        return None if self.reader.prefix is None else self.reader.prefix(self.tower.config)

    def forward(self, image: Tensor) -> Tensor:
        if self.reader.forward is not None:
            return self.reader.forward(self.tower, image)
        size = (image.shape[-2] // self.patch, image.shape[-1] // self.patch)
        tokens = self.tower(pixel_values=image, **self.reader.kwargs).last_hidden_state
        if self.reader.norm is not None:
            tokens = getattr(self.tower, self.reader.norm)(tokens)
        return tokens_to_grid(tokens, size, self.prefix_tokens, what=f"transformers model {self.name!r}")


def _processor_stats(where: str, cache_dir: str | os.PathLike | None) -> Stats | None:
    """``(mean, std)`` from the image processor config of ``where`` (a repo id or a folder)."""
    tf = _transformers()
    try:
        config, _ = tf.ImageProcessingMixin.get_image_processor_dict(where, cache_dir=cache_dir)
    except Exception as err:  # no preprocessor_config.json, or offline without it in the cache
        logger.info("no image processor config for %s (%s: %s)", where, type(err).__name__, err)
        return None
    if config.get("do_normalize") is False:
        return IDENTITY
    mean, std = config.get("image_mean"), config.get("image_std")
    if mean is None or std is None:
        return None
    if isinstance(mean, (int, float)):
        mean, std = [mean] * 3, [std] * 3
    if len(mean) != 3 or len(std) != 3:
        raise ConfigError(f"{Path(where) / 'preprocessor_config.json'}: image_mean/image_std need 3 values (RGB)")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
