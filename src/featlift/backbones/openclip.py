"""open_clip visual towers (CLIP, SigLIP, DFN, MetaCLIP, EVA-CLIP, ...) as backbones: the patch tokens of
the last block after the tower's final norm, prefix tokens dropped, normalised with open_clip's own image
statistics. open_clip itself is imported only when such a backbone is built (``featlift[open_clip]``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ConfigError, DownloadError, FeatliftError, UnknownModelError, require
from ._normalisation import Stats
from .base import Backbone, BuildOptions, load_weights, tokens_to_grid
from .timm_models import dynamic_sizes, is_token_model

__all__ = ["OpenClipBackbone", "split_name"]

logger = logging.getLogger(__name__)

_SCHEMAS = ("hf-hub:", "local-dir:")
_FIX = (
    "Fixes: run once with network access to fill the Hugging Face cache, then set HF_HUB_OFFLINE=1; or pass "
    "the tower's weights as a local file (backbone_weights=PATH, --backbone-weights)"
)


def _open_clip():
    return require("open_clip", feature="the open_clip backbones", extra="open_clip")


def split_name(name: str) -> tuple[str, str | None]:
    """``"ARCH/TAG"`` -> ``(ARCH, TAG)``; ``"hf-hub:ORG/REPO"``, ``"local-dir:PATH"`` and a bare ``ARCH``
    -> ``(name, None)`` (the weights come with the name, or there are none)."""
    if name.startswith(_SCHEMAS) or "/" not in name:
        return name, None
    arch, tag = name.rsplit("/", 1)
    return arch, (tag or None)


def _tag_config(arch: str, tag: str | None) -> dict:
    """open_clip's pretrained config of ``arch`` with ``tag`` ({} without a tag)."""
    if tag is None:
        return {}
    oc = _open_clip()
    cfg = oc.get_pretrained_cfg(arch, tag)
    if not cfg:
        known = ", ".join(oc.list_pretrained_tags_by_model(arch)) or "none"
        raise UnknownModelError(
            f"open_clip has no pretrained tag {tag!r} for {arch!r} (its tags: {known}); name the model as "
            "ARCH/TAG, e.g. 'ViT-B-16/openai', see open_clip.list_pretrained()"
        )
    return cfg


@dataclass(frozen=True)
class _Tower:
    """How featlift reads one kind of open_clip visual tower."""

    geometry: Callable[[nn.Module], tuple[int, int]]  # tower -> (stride, channels)
    read: Callable[[nn.Module, Tensor], Tensor]  # (tower, normalised images) -> features [B, C, h, w]


def _vit_tokens(visual: nn.Module, image: Tensor) -> Tensor:
    """open_clip's ViT forward up to ``ln_post`` with the position embedding resized to the grid."""
    from timm.layers import resample_abs_pos_embed

    x = visual.conv1(image)
    size = tuple(x.shape[-2:])
    x = x.flatten(2).transpose(1, 2)
    cls_token = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
    x = torch.cat([cls_token, x], dim=1)
    pos = resample_abs_pos_embed(
        visual.positional_embedding[None], new_size=size, old_size=visual.grid_size, num_prefix_tokens=1
    )
    x = visual.ln_pre(visual.patch_dropout(x + pos.to(x.dtype)))
    x = visual.ln_post(visual.transformer(x))
    return tokens_to_grid(x, size, 1, what="an open_clip ViT tower")


def _resnet_stage(visual: nn.Module, image: Tensor) -> Tensor:
    x = visual.stem(image)
    for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
        x = layer(x)
    return x


# tower kind -> how to read it: open_clip's own ViT, a timm ViT trunk (SigLIP), a timm stage model, a
# modified ResNet
_TOWERS: dict[str, _Tower] = {
    "vit": _Tower(lambda v: (int(v.patch_size[0]), int(v.conv1.out_channels)), _vit_tokens),
    "timm_vit": _Tower(
        lambda v: (int(v.trunk.patch_embed.patch_size[0]), int(v.trunk.embed_dim)),
        lambda v, image: v.trunk.forward_intermediates(
            image, indices=1, norm=True, output_fmt="NCHW", intermediates_only=True
        )[0],
    ),
    "timm_stages": _Tower(
        lambda v: (int(v.trunk.feature_info[-1]["reduction"]), int(v.trunk.feature_info[-1]["num_chs"])),
        lambda v, image: v.trunk.forward_intermediates(image, indices=1, intermediates_only=True)[0],
    ),
    "resnet": _Tower(lambda v: (32, int(v.layer4[-1].bn3.num_features)), _resnet_stage),
}


class OpenClipBackbone(Backbone):
    """An open_clip model's visual tower.

    - open_clip's own ViT towers (CLIP, DFN, MetaCLIP, ...): the last block's tokens after ``ln_post``,
      the class token dropped; position embeddings are interpolated to each image's grid (bicubic, as
      timm's ``dynamic_img_size`` does).
    - timm towers (SigLIP, SigLIP2, ...): the timm ViT's last block after its final norm, prefix tokens
      dropped, with ``dynamic_img_size`` switched on; a convolutional timm tower (ConvNeXt) gives its
      deepest stage.
    - modified ResNets (RN50, ...): the last stage (stride 32), before the attention pool.

    Args:
        name: ``"ARCH/TAG"`` (``"ViT-B-16/openai"``, ``"ViT-B-16-SigLIP/webli"``), ``"hf-hub:ORG/REPO"``, or
            a bare ``"ARCH"`` (random weights unless ``weights`` is given).
        weights: a local file with the tower's state dict (or a whole CLIP model's, whose ``visual.`` keys
            are taken), read by featlift (safetensors, or ``weights_only``); None: ``pretrained`` decides.
        pretrained: download (or find in the Hugging Face cache) the weights the name's tag or repo
            publishes, through open_clip's own download; False: random weights.
        cache_dir: the cache directory open_clip downloads to.

    :attr:`normalisation` is open_clip's preprocessing config for the name (the tag's statistics where
    it states them, OpenAI's otherwise).

    Raises:
        MissingDependencyError: open_clip is not installed (``pip install "featlift[open_clip]"``).
        UnknownModelError: open_clip has no such architecture or tag.
        DownloadError: the weights can be neither downloaded nor found in the cache.
        ConfigError: a tower featlift cannot read (attentional pooling, as CoCa's).
    """

    source = "open_clip"
    example = "open_clip:ViT-B-16/openai"

    def __init__(
        self,
        name: str,
        weights: str | os.PathLike | None = None,
        *,
        pretrained: bool = False,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        oc = _open_clip()
        arch, tag = split_name(name)
        tag_cfg = _tag_config(arch, tag)
        if not arch.startswith(_SCHEMAS) and oc.get_model_config(arch) is None:
            raise UnknownModelError(
                f"open_clip has no architecture {arch!r}; see open_clip.list_models(), e.g. 'ViT-B-16', or name "
                "a Hub repo as 'hf-hub:ORG/REPO'"
            )
        fetch = pretrained and weights is None and (tag is not None or arch.startswith(_SCHEMAS))
        if pretrained and weights is None and not fetch:
            raise ConfigError(
                f"backbone.name: open_clip name {name!r} has no pretrained tag, so there are no weights to "
                "download; name it ARCH/TAG (e.g. 'ViT-B-16/openai'), pass weights, or pretrained=False"
            )
        options: dict = {"cache_dir": cache_dir}
        if tag_cfg.get("quick_gelu"):
            options["force_quick_gelu"] = True  # the activation the tag was trained with
        if fetch and tag is not None:
            options["pretrained"] = tag
        elif not fetch and arch.startswith(_SCHEMAS):
            options["load_weights"] = False
        try:
            if fetch and arch.startswith(_SCHEMAS[0]):  # open_clip would go on with random weights if this failed
                from open_clip.pretrained import download_pretrained_from_hf

                download_pretrained_from_hf(arch[len(_SCHEMAS[0]) :], cache_dir=cache_dir)
            model = oc.create_model(arch, **options)
        except FeatliftError:
            raise
        except Exception as err:  # open_clip raises RuntimeError / OSError for failed downloads
            detail = " ".join(str(err).split())[:600] or "no details"
            raise DownloadError(
                f"open_clip could not build {name!r} ({type(err).__name__}: {detail}). {_FIX}"
            ) from None
        visual = model.visual
        cfg = oc.get_model_preprocess_cfg(model)
        mean, std = tag_cfg.get("mean") or cfg["mean"], tag_cfg.get("std") or cfg["std"]
        del model  # the text tower is not kept
        self.kind = self._kind(visual, name)
        if self.kind == "timm_vit":
            dynamic_sizes(visual.trunk)  # SigLIP & co. are built for one size
        if weights is not None:
            load_weights(visual, weights, what=f"the visual tower of open_clip model {name!r}", prefix="visual.")
        self.visual = visual
        self.name = name
        self.patch, self.channels = _TOWERS[self.kind].geometry(visual)
        self.normalisation = (tuple(float(v) for v in mean), tuple(float(v) for v in std))
        self.freeze()

    @staticmethod
    def _kind(visual: nn.Module, name: str) -> str:
        kind = type(visual).__name__
        if kind == "VisionTransformer":
            if getattr(visual, "attn_pool", None) is not None:
                raise ConfigError(
                    f"backbone.name: open_clip model {name!r} pools its tokens with attention (CoCa), so its final "
                    "norm is not per token; featlift reads ViT towers without attentional pooling"
                )
            return "vit"
        if kind == "TimmModel":
            return "timm_vit" if is_token_model(visual.trunk) else "timm_stages"
        if kind == "ModifiedResNet":
            return "resnet"
        raise ConfigError(
            f"backbone.name: open_clip model {name!r} has a {kind} visual tower, which featlift does not read; "
            "it reads open_clip ViTs, timm towers and modified ResNets"
        )

    @classmethod
    def build(cls, name: str, options: BuildOptions) -> OpenClipBackbone:
        """The weights come through open_clip's own Hugging Face download (see :meth:`Backbone.build`)."""
        return cls(name, options.weights, pretrained=options.pretrained, cache_dir=options.cache_dir)

    @classmethod
    def published_normalisation(cls, name: str) -> Stats | None:
        """The tag's statistics, else the architecture config's, else OpenAI's (open_clip's default); None
        for ``hf-hub:``/``local-dir:`` names (their config is not read here)."""
        oc = _open_clip()
        arch, tag = split_name(name)
        if arch.startswith(_SCHEMAS):
            return None
        from open_clip.transform import PreprocessCfg, merge_preprocess_dict

        cfg = merge_preprocess_dict(PreprocessCfg(), (oc.get_model_config(arch) or {}).get("preprocess_cfg", {}))
        cfg = merge_preprocess_dict(cfg, _tag_config(arch, tag))
        return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])

    def forward(self, image: Tensor) -> Tensor:
        return _TOWERS[self.kind].read(self.visual, image)
