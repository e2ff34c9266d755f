"""timm Vision Transformers (DINOv2, DINOv3, CLIP, SigLIP, ...): last block's normed patch tokens."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from torch import Tensor

from ..errors import CheckpointError, UnknownModelError
from .base import Backbone

logger = logging.getLogger(__name__)


class TimmViT(Backbone):
    """A timm ViT returning its last block's patch tokens after the final norm, prefix tokens dropped.

    Args:
        name: timm model name with its pretrained tag, e.g. ``"vit_small_patch14_dinov2.lvd142m"``.
        weights: local weights file for the backbone (``.safetensors`` or ``.pth``); None keeps timm's
            random initialisation. Use :func:`featlift.hub.download` to fetch timm's published file.
    """

    def __init__(self, name: str, weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        import timm

        if not timm.is_model(name):
            raise UnknownModelError(
                f"timm has no model named {name!r}; see timm.list_models('vit_*') for ViT names, "
                "e.g. 'vit_small_patch14_dinov2.lvd142m' or 'vit_base_patch16_clip_224.openai'"
            )
        try:
            if weights is None:
                model = timm.create_model(name, pretrained=False, dynamic_img_size=True)
            else:
                path = Path(weights)
                if not path.is_file():
                    raise FileNotFoundError(f"backbone weights file not found: {path}")
                model = timm.create_model(
                    name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, dynamic_img_size=True
                )
        except RuntimeError as err:  # timm's load_state_dict mismatch
            raise CheckpointError(f"backbone weights {weights} do not fit timm model {name!r}: {err}") from None
        if not hasattr(model, "forward_intermediates"):
            raise ValueError(f"timm model {name!r} has no forward_intermediates(); featlift needs a timm ViT")
        self.model = model
        self.name = name
        self.patch = int(model.patch_embed.patch_size[0])
        self.channels = int(model.embed_dim)
        self.freeze()

    def forward(self, image: Tensor) -> Tensor:
        return self.model.forward_intermediates(
            image, indices=1, norm=True, output_fmt="NCHW", intermediates_only=True
        )[0]
