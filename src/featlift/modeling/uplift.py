"""The UPLiFT upsampler: guidance encoder + weight-shared decoder step + Local Attender (+ refiner)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import UpliftConfig
from .attender import LocalAttender
from .decoder import DecoderStep
from .encoder import GuidanceEncoder
from .guidance import GuidanceMaps
from .refiner import Refiner

__all__ = ["UPLiFT"]

logger = logging.getLogger(__name__)


class UPLiFT(nn.Module):
    """Iterative feature upsampler (Walmer et al., CVPR 2026).

    Each iteration multiplies the feature map's height and width by ``config.up_factor`` (2 for every
    published model). The guidance encoder runs once on the image (``share_encoder``); the decoder step,
    attender and refiner share their weights across iterations.

    Build from a config with ``UPLiFT(config)``, or load weights with :func:`featlift.build_upsampler`.
    """

    def __init__(self, config: UpliftConfig) -> None:
        super().__init__()
        if not isinstance(config, UpliftConfig):
            raise TypeError(f"UPLiFT needs an UpliftConfig, got {type(config).__name__}")
        self.config = config
        self.guidance_encoder = GuidanceEncoder(config.encoder, in_channels=3)
        guidance_channels = self.guidance_encoder.out_channels
        self.decoder_step = DecoderStep(config.decoder, config.channels, guidance_channels)
        self.attender = LocalAttender(self.decoder_step.out_channels, config.attender, config.attender_residual)
        self.refiner = (
            Refiner(config.refiner, config.channels, guidance_channels, config.refiner_guidance_index)
            if config.refiner is not None
            else None
        )
        self.channels_last: bool | None = None

    # -- inspection --------------------------------------------------------------------------------

    @property
    def channels(self) -> int:
        return self.config.channels

    @property
    def patch(self) -> int:
        return self.config.patch

    @property
    def default_iters(self) -> int:
        return self.config.default_iters

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- the forward pass --------------------------------------------------------------------------

    def guidance_image(self, image: Tensor) -> Tensor:
        """The image the guidance encoder sees.

        When the guidance patch differs from the backbone patch (patch 14 -> 16), the image is resized
        bilinearly (align_corners=False) to ``H * guidance_patch // patch``; otherwise it is returned as is.
        """
        patch, guide_patch = self.config.patch, self.config.resolved_guidance_patch
        if guide_patch == patch:
            return image
        size = (image.shape[-2] * guide_patch // patch, image.shape[-1] * guide_patch // patch)
        return F.interpolate(image, size=size, mode="bilinear", align_corners=False)

    @property
    def guidance_reads(self) -> set[int]:
        """Indices (non-negative) of the guidance maps that the decoder step and refiner read."""
        n = len(self.guidance_encoder.stages)
        reads = {i % n for i in self.decoder_step.guidance_reads}
        if self.refiner is not None:
            reads.add(self.refiner.guidance_index % n)
        return reads

    def encode_guidance(self, image: Tensor) -> GuidanceMaps:
        """Run the guidance encoder on a normalised image at backbone-input resolution.

        Returns the maps the decoder and refiner read (a list-like :class:`GuidanceMaps`); see
        :meth:`guidance_image` for the resize applied first.
        """
        return self.guidance_encoder(self.guidance_image(image), keep=self.guidance_reads)

    def step(
        self,
        features: Tensor,
        guidance: GuidanceMaps | list[Tensor],
        generator: torch.Generator | None = None,
        *,
        release_guidance: bool = False,
    ) -> Tensor:
        """One upsampling iteration: [B, C, h, w] -> [B, C, h*up_factor, w*up_factor].

        ``release_guidance`` frees the guidance maps as soon as this step has read them (used by
        :meth:`forward` on its last iteration to lower peak memory).
        """
        if not isinstance(guidance, GuidanceMaps):
            guidance = GuidanceMaps(list(guidance))
        logits = self.attender.logits(self.decoder_step(features, guidance, generator))
        if release_guidance and self.refiner is None:
            guidance.release()
        out = self.attender.attend(logits, features)
        del logits
        if self.refiner is not None:
            out = self.refiner(out, guidance, generator)
            if release_guidance:
                guidance.release()
        return out

    def forward(
        self,
        image: Tensor,
        features: Tensor,
        iters: int | None = None,
        *,
        generator: torch.Generator | None = None,
        return_steps: bool = False,
    ) -> Tensor | list[Tensor]:
        """Upsample ``features`` ``iters`` times, guided by ``image``.

        Args:
            image: [B, 3, H, W] float, normalised as the backbone expects, at the backbone's input
                resolution: H = h * patch and W = w * patch.
            features: [B, C, h, w] float backbone features.
            iters: number of 2x iterations; default ``config.default_iters`` (pixel density: 4 for
                patch 14 and 16, 3 for patch 8).
            generator: random generator for the noise channels (VAE variant), for reproducible output.
            return_steps: return the list of every iteration's output instead of the last one.

        Returns:
            [B, C, h * f**iters, w * f**iters] with f = ``config.up_factor``, in the model's dtype. On the
            CPU inference path the tensor is laid out channels_last in memory (call ``.contiguous()`` if
            you need plain NCHW strides); set ``model.channels_last = False`` to opt out.
        """
        iters = self.default_iters if iters is None else iters
        image, features = self._check_inputs(image, features, iters)
        if self._use_channels_last(features):
            image = image.contiguous(memory_format=torch.channels_last)
            features = features.contiguous(memory_format=torch.channels_last)
        steps = []
        x = features
        guidance = None
        shared = self.config.share_encoder
        for i in range(iters):
            if guidance is None or not shared:
                guidance = self.encode_guidance(image if i == 0 else self._grow(image, i))
            x = self.step(x, guidance, generator, release_guidance=i == iters - 1 or not shared)
            if return_steps:
                steps.append(x)
        return steps if return_steps else x

    def _use_channels_last(self, features: Tensor) -> bool:
        """channels_last on the CPU inference path: oneDNN convolves [B, H, W, C] memory without layout
        reorders (measured 1.6x faster and leaner at 448 px, see benchmarks/); the fused attender then
        writes channels_last output directly. ``self.channels_last`` (True/False) overrides."""
        if self.channels_last is not None:
            return self.channels_last
        return features.device.type == "cpu" and not self.training and not torch.is_grad_enabled()

    def _grow(self, image: Tensor, i: int) -> Tensor:
        """The image scaled by up_factor**i, for configs that re-run the encoder each iteration."""
        factor = self.config.up_factor**i
        size = (int(image.shape[-2] * factor), int(image.shape[-1] * factor))
        return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)

    def _check_inputs(self, image: Tensor, features: Tensor, iters: int) -> tuple[Tensor, Tensor]:
        if not isinstance(iters, int) or isinstance(iters, bool) or iters < 0:
            raise ValueError(f"iters must be a non-negative integer, got {iters!r}")
        for name, t in (("image", image), ("features", features)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 4:
                expected = "[B, 3, H, W]" if name == "image" else f"[B, {self.channels}, h, w]"
                raise ValueError(f"{name} must be a 4-D tensor {expected}, got shape {tuple(t.shape)}")
            if not t.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if image.shape[1] != 3:
            raise ValueError(f"image must have 3 channels (RGB) in dim 1, got shape {tuple(image.shape)}")
        if features.shape[1] != self.channels:
            raise ValueError(
                f"features have {features.shape[1]} channels but this upsampler expects {self.channels} "
                f"(shape {tuple(features.shape)}); is it the right model for this backbone?"
            )
        if image.shape[0] != features.shape[0]:
            raise ValueError(f"batch mismatch: image has {image.shape[0]} items, features {features.shape[0]}")
        h, w = features.shape[-2:]
        p = self.patch
        if tuple(image.shape[-2:]) != (h * p, w * p):
            raise ValueError(
                f"image is {image.shape[-2]}x{image.shape[-1]} but features of {h}x{w} cells with patch {p} "
                f"need an image of {h * p}x{w * p}; resize the image to the backbone's input size"
            )
        param = next(self.parameters())
        for name, t in (("image", image), ("features", features)):
            if t.device != param.device:
                raise ValueError(f"{name} is on {t.device} but the model is on {param.device}; move one of them")
        return image.to(param.dtype), features.to(param.dtype)

    # -- featlift's own format ---------------------------------------------------------------------

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` to ``directory``; see :func:`featlift.build_upsampler`."""
        from ..weights import save_pretrained

        return save_pretrained(self, directory)
