"""timm Vision Transformers (DINOv2, DINOv3, CLIP, SigLIP, ...): last block's normed patch tokens."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from torch import Tensor

from ..errors import CheckpointError, FeatliftError, UnknownModelError
from ..weights import read_state_dict
from ._normalisation import Stats, timm_normalisation
from .base import Backbone

__all__ = ["TimmViT"]

logger = logging.getLogger(__name__)


class TimmViT(Backbone):
    """A timm ViT returning its last block's patch tokens after the final norm, prefix tokens dropped.

    Args:
        name: timm model name with its pretrained tag, e.g. ``"vit_small_patch14_dinov2.lvd142m"``.
        weights: local weights file for the backbone (``.safetensors``, or ``.pth``/``.pt`` read with
            ``weights_only=True``); None keeps timm's random initialisation. Use
            :func:`featlift.hub.download` to fetch timm's published file.

    The file is read by featlift (:func:`featlift.weights.read_state_dict`), never unpickled by timm, and
    the state dict is handed to timm, which still applies its model's key filter (foreign layouts,
    position-embedding resizing) and loads strictly.

    :attr:`normalisation` starts as timm's pretrained config for ``name`` (None when timm has none);
    :func:`featlift.backbones.load_backbone` replaces it with the config's statistics.

    Raises:
        UnknownModelError: timm has no model ``name``.
        FileNotFoundError: ``weights`` does not exist.
        CheckpointError: ``weights`` is unreadable, would run code when unpickled, or does not fit the model.
    """

    source = "timm"

    def __init__(self, name: str, weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        import timm

        if not timm.is_model(name):
            raise UnknownModelError(
                f"timm has no model named {name!r}; see timm.list_models('vit_*') for ViT names, "
                "e.g. 'vit_small_patch14_dinov2.lvd142m' or 'vit_base_patch16_clip_224.openai'"
            )
        if weights is None:
            model = timm.create_model(name, pretrained=False, dynamic_img_size=True)
        else:
            path = Path(weights)
            if not path.is_file():
                raise FileNotFoundError(f"backbone weights file not found: {path}")
            state_dict = read_state_dict(path, prefer_ema=True)
            try:
                model = timm.create_model(
                    name, pretrained=True, pretrained_cfg_overlay={"state_dict": state_dict}, dynamic_img_size=True
                )
            except FeatliftError:
                raise
            except Exception as err:  # strict-load mismatch, or timm's key filter choking on a foreign layout
                detail = " ".join(str(err).split())[:2000] or "no details"
                raise CheckpointError(
                    f"backbone weights {path} do not fit timm model {name!r} ({type(err).__name__}: {detail}); "
                    "pass the weights of this model, or the model name these weights belong to"
                ) from None
            # timm keeps its pretrained config on the model; drop the state dict it holds there.
            for cfg in (getattr(model, "pretrained_cfg", None), getattr(model, "default_cfg", None)):
                if isinstance(cfg, dict):
                    cfg.pop("state_dict", None)
            del state_dict
        if not hasattr(model, "forward_intermediates"):
            raise ValueError(f"timm model {name!r} has no forward_intermediates(); featlift needs a timm ViT")
        self.model = model
        self.name = name
        self.patch = int(model.patch_embed.patch_size[0])
        self.channels = int(model.embed_dim)
        self.normalisation = self.published_normalisation(name)
        self.freeze()

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

    def forward(self, image: Tensor) -> Tensor:
        return self.model.forward_intermediates(
            image, indices=1, norm=True, output_fmt="NCHW", intermediates_only=True
        )[0]
