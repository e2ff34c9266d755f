"""timm models as backbones: Vision Transformers (DINOv2, DINOv3, CLIP, SigLIP, ...) by their last block's
normed patch tokens, and convolutional or hierarchical models (ResNet, ConvNeXt, Swin, EfficientNet, ...)
by one feature stage at a stated output stride, through ``features_only``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import Tensor

from ..errors import CheckpointError, ConfigError, FeatliftError, UnknownModelError
from ..weights import read_state_dict
from ._normalisation import Stats, timm_normalisation
from .base import Backbone, BuildOptions

__all__ = ["TimmBackbone", "TimmViT", "dynamic_sizes", "is_token_model"]

logger = logging.getLogger(__name__)


def _layout(name: str):
    """The model ``name`` built on the meta device (no memory, no weights): what kind it is and its
    feature stages, before the real build."""
    import timm

    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False)
    except Exception as err:  # an architecture whose init reads tensor values: build it on the CPU
        logger.debug("timm model %r does not build on the meta device (%s); building it on the CPU", name, err)
        return timm.create_model(name, pretrained=False)


def is_token_model(model) -> bool:
    """A ViT-like model: patch tokens with prefix tokens, read through ``forward_intermediates``."""
    return all(hasattr(model, attr) for attr in ("patch_embed", "num_prefix_tokens", "forward_intermediates"))


def dynamic_sizes(vit) -> None:
    """Switch a timm ViT built for one image size (``dynamic_img_size=False``) to any size, in place: what
    ``dynamic_img_size=True`` sets at construction (position embeddings interpolated to each grid, NHWC
    patch maps, no size assertion)."""
    from timm.layers import Format

    vit.dynamic_img_size = True
    vit.patch_embed.strict_img_size = False
    if getattr(vit.patch_embed, "flatten", False):
        vit.patch_embed.flatten = False
        vit.patch_embed.output_fmt = Format.NHWC


def _stage(name: str, stages: list[tuple[int, int]], stride: int | None) -> int:
    """Index of the feature stage at ``stride`` (None: the deepest), the last of equal strides."""
    strides = [reduction for _, reduction in stages]
    wanted = max(strides) if stride is None else stride
    matches = [i for i, reduction in enumerate(strides) if reduction == wanted]
    if not matches:
        raise ConfigError(
            f"backbone.patch: timm model {name!r} has no feature stage at stride {stride}; its stages have strides "
            f"{sorted(set(strides))}. Fix: ask for one of those (--backbone-stride)"
        )
    return matches[-1]


def _size_keyword(err: TypeError) -> bool:
    """Whether timm refused the keyword that lets a model take other image sizes."""
    return any(key in str(err) for key in ("dynamic_img_size", "strict_img_size"))


def _with_weights(name: str, path: Path, kwargs: dict):
    """timm model ``name`` with the state dict in ``path`` (read by featlift), loaded by timm strictly."""
    import timm

    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    state_dict = read_state_dict(path, prefer_ema=True)
    try:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"state_dict": state_dict}, **kwargs)
    except FeatliftError:
        raise
    except Exception as err:  # strict-load mismatch, or timm's key filter choking on a foreign layout
        if isinstance(err, TypeError) and _size_keyword(err):
            raise
        detail = " ".join(str(err).split())[:2000] or "no details"
        raise CheckpointError(
            f"backbone weights {path} do not fit timm model {name!r} ({type(err).__name__}: {detail}); "
            "pass the weights of this model, or the model name these weights belong to"
        ) from None
    # timm keeps its pretrained config on the model; drop the state dict it holds there.
    for cfg in (getattr(model, "pretrained_cfg", None), getattr(model, "default_cfg", None)):
        if isinstance(cfg, dict):
            cfg.pop("state_dict", None)
    return model


class TimmBackbone(Backbone):
    """A timm model as a backbone.

    - **ViTs** (models with patch tokens: DINOv2, DINOv3, CLIP, SigLIP, EVA, ...): the last block's patch
      tokens after the final norm, prefix tokens (CLS, registers) dropped; built with
      ``dynamic_img_size=True``, so any image size that is a multiple of the patch works (position
      embeddings interpolated). The stride is the patch.
    - **Convolutional and hierarchical models** (ResNet, ConvNeXt, Swin, EfficientNet, RegNet, ...): one
      feature stage through ``features_only`` at the output stride ``stride`` (8, 16 or 32; default the
      deepest stage's). Models that fix their input size (Swin) are built with ``strict_img_size=False``.

    Args:
        name: timm model name with its pretrained tag, e.g. ``"vit_small_patch14_dinov2.lvd142m"`` or
            ``"resnet50.a1_in1k"``.
        weights: local weights file for the backbone (``.safetensors``, or ``.pth``/``.pt`` read with
            ``weights_only=True``); None keeps timm's random initialisation. Use
            :func:`featlift.hub.download` to fetch timm's published file.
        stride: the output stride of a convolutional or hierarchical model (None: its deepest stage's).

    The file is read by featlift (:func:`featlift.weights.read_state_dict`), never unpickled by timm, and
    the state dict is handed to timm, which still applies its model's key filter (foreign layouts,
    position-embedding resizing) and loads strictly.

    :attr:`normalisation` starts as timm's pretrained config for ``name`` (None when timm has none);
    :func:`featlift.backbones.load_backbone` replaces it with the config's statistics.

    Raises:
        UnknownModelError: timm has no model ``name``.
        ConfigError: no feature stage at ``stride``, or a ViT that cannot take other image sizes.
        FileNotFoundError: ``weights`` does not exist.
        CheckpointError: ``weights`` is unreadable, would run code when unpickled, or does not fit the model.
    """

    source = "timm"
    example = "timm:resnet50.a1_in1k"

    def __init__(self, name: str, weights: str | os.PathLike | None = None, *, stride: int | None = None) -> None:
        super().__init__()
        import timm

        if not timm.is_model(name):
            raise UnknownModelError(
                f"timm has no model named {name!r}; see timm.list_models() for the names, e.g. "
                "'vit_small_patch14_dinov2.lvd142m', 'resnet50.a1_in1k' or 'convnext_tiny.fb_in1k'"
            )
        layout = _layout(name)
        self.tokens = is_token_model(layout)
        kwargs: dict = {}
        self.stages: list[tuple[int, int]] = []
        if self.tokens:
            kwargs["dynamic_img_size"] = True
        else:
            info = getattr(layout, "feature_info", None)
            if not info:
                raise ConfigError(
                    f"backbone.name: timm model {name!r} lists no feature stages (feature_info), so featlift "
                    "cannot take features from it; choose a ViT or a model that supports features_only"
                )
            self.stages = [(int(f["num_chs"]), int(f["reduction"])) for f in info]
            index = _stage(name, self.stages, stride)
            kwargs.update(features_only=True, out_indices=(index,))
            if getattr(getattr(layout, "patch_embed", None), "strict_img_size", False):
                kwargs["strict_img_size"] = False  # Swin & co.: any multiple of the stride
        del layout
        model = self._create(name, weights, kwargs)
        if self.tokens:
            self.patch = int(model.patch_embed.patch_size[0])
            self.channels = int(model.embed_dim)
        else:
            self.patch = int(model.feature_info.reduction()[0])
            self.channels = int(model.feature_info.channels()[0])
        self.channels_last_output = str(getattr(model, "output_fmt", "NCHW")).endswith("NHWC")
        self.model = model
        self.name = name
        self.normalisation = self.published_normalisation(name)
        self.check_stride(stride)
        self.freeze()

    @staticmethod
    def _create(name: str, weights: str | os.PathLike | None, kwargs: dict):
        import timm

        try:
            if weights is None:
                return timm.create_model(name, pretrained=False, **kwargs)
            return _with_weights(name, Path(weights), kwargs)
        except TypeError as err:
            if not _size_keyword(err):
                raise
            raise ConfigError(
                f"backbone.name: timm model {name!r} cannot take images of other sizes than its own "
                f"({type(err).__name__}: {err}); featlift feeds each picture at its own size. Choose a model "
                "whose timm class supports dynamic_img_size (ViTs) or any input size (convolutional networks)"
            ) from None

    @classmethod
    def build(cls, name: str, options: BuildOptions) -> TimmBackbone:
        """``options.stride`` picks a convolutional model's feature stage (see :meth:`Backbone.build`)."""
        return cls(name, options.local_weights(cls, name), stride=options.stride)

    @classmethod
    def published_normalisation(cls, name: str) -> Stats | None:
        """timm's pretrained config for ``name`` (what timm's own transforms use); None when it has none."""
        return timm_normalisation(name)

    @classmethod
    def published_weights(cls, name: str, *, cache_dir: str | os.PathLike | None = None) -> Path:
        """timm's published weights for ``name`` (its ``hf_hub_id``'s ``model.safetensors``), downloaded
        or found in the Hugging Face cache.

        Raises:
            ValueError: timm publishes no Hub weights for the name (pass ``weights``).
            DownloadError: the published file is neither downloadable nor in the cache.
        """
        import timm

        from .. import hub

        pcfg = timm.models.get_pretrained_cfg(name)
        if pcfg is None or not pcfg.hf_hub_id:
            raise ValueError(f"timm has no Hub weights for {name!r}; pass backbone_weights=PATH")
        return hub.download(pcfg.hf_hub_id, "model.safetensors", cache_dir=cache_dir, local_arg="backbone_weights")

    def activation_bytes(self, batch: int, size: tuple[int, int], itemsize: int) -> int:
        """ViTs: :meth:`Backbone.activation_bytes`. Stage models: about 4 maps of each stage's width at its
        resolution, summed over the stages run (a rough figure for the memory guard)."""
        if self.tokens:
            return super().activation_bytes(batch, size, itemsize)
        pixels = size[0] * size[1]
        total = sum(
            4 * channels * pixels // reduction**2 for channels, reduction in self.stages if reduction <= self.patch
        )
        return batch * total * itemsize

    def forward(self, image: Tensor) -> Tensor:
        if self.tokens:
            return self.model.forward_intermediates(
                image, indices=1, norm=True, output_fmt="NCHW", intermediates_only=True
            )[0]
        features = self.model(image)[0]
        if self.channels_last_output:  # Swin & co. give NHWC maps
            features = features.permute(0, 3, 1, 2)
        return features


TimmViT = TimmBackbone  # the name of featlift 0.x, when timm backbones were ViTs only
