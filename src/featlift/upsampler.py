"""``Upsampler``: a frozen backbone + UPLiFT with the image pre- and post-processing users need.

The model code never sees a PIL image: this wrapper turns PIL images, numpy arrays and tensors into
normalised batches, runs the backbone and the upsampler, and resizes the result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from .backbones.base import Backbone
from .modeling.uplift import UPLiFT

__all__ = ["Upsampler"]

logger = logging.getLogger(__name__)

OutputSize = None | str | tuple[int, int]


def _uint8_to_tensor(array: np.ndarray) -> Tensor:
    """HxWx3 uint8 -> float [3, H, W] in [0, 1]."""
    return torch.from_numpy(np.array(array, dtype=np.uint8)).permute(2, 0, 1).float() / 255


def _to_float_image(image: Any) -> tuple[Tensor, Any]:
    """One image as a float tensor [3, H, W] in [0, 1] (or a PIL image kept for PIL resizing)."""
    if isinstance(image, Image.Image):
        return None, image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"numpy images must be HxWx3, got shape {image.shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"numpy images must be uint8 (0-255), got {image.dtype}; pass floats as a tensor [3,H,W]")
        return _uint8_to_tensor(image), None
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image tensors must be [3, H, W] or [B, 3, H, W], got shape {tuple(image.shape)}")
        if not image.is_floating_point():
            raise ValueError(f"image tensors must be float in [0, 1], got {image.dtype}")
        return image, None
    raise TypeError(
        f"unsupported image type {type(image).__name__}; pass a PIL image, an HxWx3 uint8 numpy array, "
        "a float tensor [3,H,W] or [B,3,H,W] in [0,1], or a list of these"
    )


class Upsampler(nn.Module):
    """Pixel-dense features from images: backbone -> UPLiFT -> resize. Frozen, eval mode.

    Build with :func:`featlift.load_upsampler`. Call it on images::

        feats = up(image)                          # [1, C, H, W] at the image's own size
        feats = up(image, output_size="native")    # the upsampler's own grid, e.g. 512x512 for 448 px
        feats, lowres = up(image, return_lowres=True)
        labels = up(big_image, tile=64, head=probe)  # exact tiled inference, per-tile head

    ``tile`` (here or per call) runs UPLiFT over tiles of that many backbone cells with an exact halo
    (see :meth:`featlift.UPLiFT.forward`): the backbone still sees the whole image once, peak memory
    follows the tile size.
    """

    def __init__(
        self,
        backbone: Backbone,
        uplift: UPLiFT,
        iters: int | None = None,
        name: str | None = None,
        tile: int | tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if backbone.patch != uplift.patch or backbone.channels != uplift.channels:
            raise ValueError(
                f"backbone gives {backbone.channels} channels at patch {backbone.patch} but the upsampler "
                f"expects {uplift.channels} channels at patch {uplift.patch}"
            )
        self.backbone = backbone
        self.uplift = uplift
        self.iters = uplift.default_iters if iters is None else iters
        self.name = name
        self.tile = tile
        cfg = uplift.config.backbone
        mean = torch.tensor(cfg.mean if cfg.mean is not None else (0.0, 0.0, 0.0)).view(1, 3, 1, 1)
        std = torch.tensor(cfg.std if cfg.std is not None else (1.0, 1.0, 1.0)).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    @property
    def patch(self) -> int:
        return self.uplift.patch

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.uplift.parameters()).dtype

    def train(self, mode: bool = True) -> Upsampler:
        # Frozen: the backbone and upsampler always run with running statistics.
        return super().train(False)

    # -- pre-processing ----------------------------------------------------------------------------

    def _snap(self, size: tuple[int, int]) -> tuple[int, int]:
        """Nearest multiple of the patch (at least one patch)."""
        p = self.patch
        return tuple(max(p, round(d / p) * p) for d in size)

    def prepare(self, images: Any) -> list[tuple[Tensor, tuple[int, int]]]:
        """Each image as (tensor [1, 3, H', W'] in [0, 1] resized to patch multiples, original (H, W))."""
        if isinstance(images, Tensor) and images.dim() == 4:
            items = list(images.unbind(0))
        elif isinstance(images, (list, tuple)):
            items = list(images)
            if not items:
                raise ValueError("got an empty list of images")
        else:
            items = [images]
        prepared = []
        for item in items:
            tensor, pil = _to_float_image(item)
            if pil is not None:
                original = (pil.height, pil.width)
                h, w = self._snap(original)
                if (h, w) != original:
                    pil = pil.resize((w, h), resample=Image.BILINEAR)
                tensor = _uint8_to_tensor(np.asarray(pil, dtype=np.uint8))
            else:
                original = tuple(tensor.shape[-2:])
                size = self._snap(original)
                if size != original:
                    tensor = F.interpolate(
                        tensor[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False
                    )[0]
            prepared.append((tensor[None], original))
        return prepared

    def normalize(self, image: Tensor) -> Tensor:
        """[B, 3, H, W] in [0, 1] -> the backbone's normalisation, on the model's device and dtype."""
        image = image.to(self.device, torch.float32)
        return ((image - self.mean.float()) / self.std.float()).to(self.dtype)

    # -- the call ----------------------------------------------------------------------------------

    @torch.inference_mode()
    def forward(
        self,
        images: Any,
        output_size: OutputSize = None,
        return_lowres: bool = False,
        *,
        tile: int | tuple[int, int] | str | None = "default",
        head: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor | list[Tensor] | tuple[Any, Any]:
        """Pixel-dense features for ``images``.

        Args:
            images: a PIL image (any mode; converted to RGB), an HxWx3 uint8 numpy array, a float tensor
                [3, H, W] or [B, 3, H, W] in [0, 1], or a list of these. Each is resized to the nearest
                multiple of the patch before the backbone.
            output_size: None (default) gives each image's own size; ``"native"`` the upsampler's grid
                (h * 2**iters); ``(H, W)`` that size for every image.
            return_lowres: also return the backbone features.
            tile: tile size in backbone cells for exact tiled upsampling (``None``: whole image); by
                default ``self.tile``.
            head: per-pixel callable [B, C, H, W] -> [B, K, H, W] (linear probe, PCA, ...) applied to each
                tile at the upsampler's native resolution; the K-channel result is then resized to
                ``output_size``. Pixel-dense C-channel features are never held for the whole image.

        Returns:
            [B, C, H, W] when all images share a size, else a list of [1, C, H, W] tensors; with
            ``return_lowres`` a tuple (features, lowres) of matching structure.
        """
        native = output_size == "native"
        if not (output_size is None or native or _is_size(output_size)):
            raise ValueError(f"output_size must be None, 'native' or (height, width), got {output_size!r}")
        tile = self.tile if tile == "default" else tile
        prepared = self.prepare(images)
        same = len({(t.shape, orig) for t, orig in prepared}) == 1
        groups = [prepared] if same else [[p] for p in prepared]
        feats, lows = [], []
        for group in groups:
            batch = torch.cat([t for t, _ in group])
            original = group[0][1]
            image = self.normalize(batch)
            lowres = self.backbone(image)
            out = self.uplift(image, lowres, iters=self.iters, tile=tile, head=head)
            if not native:
                size = tuple(output_size) if output_size is not None else original
                if tuple(out.shape[-2:]) != size:
                    out = F.interpolate(
                        out.float(), size=size, mode="bilinear", align_corners=False, antialias=True
                    ).to(out.dtype)
            feats.append(out)
            lows.append(lowres)
        result = feats[0] if same else feats
        if return_lowres:
            return result, (lows[0] if same else lows)
        return result

    @torch.inference_mode()
    def decode(self, latents: Tensor) -> Tensor:
        """VAE variants only: (upsampled) latents [B, 4, h, w] -> images [B, 3, 8h, 8w] in [0, 1]."""
        decode = getattr(self.backbone, "decode", None)
        if decode is None:
            raise TypeError(
                f"decode() needs a VAE backbone; this upsampler's backbone is {type(self.backbone).__name__}"
            )
        return decode(latents.to(self.device, self.dtype))


def _is_size(value: Any) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 2
        and all(isinstance(v, int) and v > 0 for v in value)
    )
