"""The UPLiFT upsampler: guidance encoder + weight-shared decoder step + Local Attender (+ refiner)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import UpliftConfig
from ..ops.fused import is_channels_last
from .attender import LocalAttender
from .decoder import DecoderStep
from .encoder import GuidanceEncoder
from .guidance import GuidanceMaps
from .refiner import Refiner
from .region import Region

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
        region: Region | None = None,
    ) -> Tensor:
        """One upsampling iteration: [B, C, h, w] -> [B, C, h*up_factor, w*up_factor].

        ``release_guidance`` frees the guidance maps as soon as this step has read them (used by
        :meth:`forward` on its last iteration to lower peak memory). ``region`` places a crop in the
        full grid (tiled inference).
        """
        guidance = GuidanceMaps.wrap(guidance)
        logits = self.attender.logits(self.decoder_step(features, guidance, generator, region))
        if release_guidance and self.refiner is None:
            guidance.release()
        out = self.attender.attend(logits, features)
        del logits
        if self.refiner is not None:
            scale = out.shape[-2] // features.shape[-2]
            out = self.refiner(out, guidance, generator, None if region is None else region.scaled(scale))
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
        tile: int | tuple[int, int] | None = None,
        head: Callable[[Tensor], Tensor] | None = None,
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
            tile: run over tiles of ``tile`` (or ``(rows, cols)``) coarse feature cells, each with a halo of
                :meth:`tile_halo` cells, so peak memory follows the tile, not the image. The result equals
                the untiled one up to float rounding.
            head: optional per-pixel callable (linear probe, PCA projection, ...) mapping [B, C, H', W']
                to [B, K, H', W']; applied to each tile's features (or to the whole output when untiled),
                so only its K channels are ever held at full resolution.

        Returns:
            [B, C, h * f**iters, w * f**iters] with f = ``config.up_factor`` (K channels with ``head``), in
            the model's dtype. On the CPU inference path the tensor is laid out channels_last in memory
            (call ``.contiguous()`` if you need plain NCHW strides); set ``model.channels_last = False`` to
            opt out.
        """
        iters = self.default_iters if iters is None else iters
        image, features = self._check_inputs(image, features, iters)
        tile = self.check_tile(tile)
        if tile is not None and return_steps:
            raise ValueError("return_steps needs every whole intermediate map; it cannot be combined with tile")
        if self._use_channels_last(features):
            image = image.contiguous(memory_format=torch.channels_last)
            features = features.contiguous(memory_format=torch.channels_last)
        if tile is not None:
            return self._tiled(image, features, iters, generator, tile, head)
        guide_images = _GuideImages(self, image)
        out = self._iterate(guide_images, features, iters, generator, return_steps, None)
        if head is None:
            return out
        if return_steps:
            return [_apply_head(head, step) for step in out]
        return _apply_head(head, out)

    def _iterate(self, guide_images, x, iters, generator, return_steps, region) -> Tensor | list[Tensor]:
        steps = []
        guidance = None
        shared = self.config.share_encoder
        factor = self.config.up_factor
        for i in range(iters):
            if guidance is None or not shared:
                guidance = self.guidance_encoder(guide_images.crop(i, region), keep=self.guidance_reads)
            step_region = None if region is None else region.scaled(factor**i, iteration=i)
            x = self.step(x, guidance, generator, release_guidance=i == iters - 1 or not shared, region=step_region)
            if return_steps:
                steps.append(x)
        return steps if return_steps else x

    # -- tiled inference ---------------------------------------------------------------------------

    def tile_halo(self, iters: int | None = None) -> int:
        """Halo, in coarse feature cells, that makes tiled inference exact for ``iters`` iterations.

        A crop differs from the full image only near its edges (zero padding, replicated attender
        cells). This bounds how far inward that error can travel: each 3x3 conv moves it one cell of
        the grid it runs on, the bilinear residual of an up step one cell of its input grid, the
        attender its neighbourhood radius (applied to its values; its logits come from the decoder
        path), and the guidance encoder its conv count in guidance pixels. Paths that run side by side
        take the maximum, layers in sequence add up.
        """
        iters = self.default_iters if iters is None else iters
        cfg = self.config

        def convs(group) -> int:
            if group.is_identity:
                return 0
            return len(group.widths) * (2 if group.block == "DoubleConv" else 1)

        radius = max(max(abs(dy), abs(dx)) for dy, dx in self.attender.offsets)
        encoder = sum(convs(stage.blocks) for stage in cfg.encoder.stages) / cfg.resolved_guidance_patch
        reach = 0.0  # how far the error has travelled into the current features, in coarse cells
        for i in range(iters):
            cells = cfg.up_factor**i  # cells of this iteration's input grid per coarse cell
            x_err = reach * cells
            guide_err = encoder * cells + (1 if cfg.decoder.guidance_resample == "bilinear" else 0)
            err = max(x_err, guide_err) + convs(cfg.decoder.input_blocks)
            scale = 1
            for stage in cfg.decoder.stages:
                if stage.up.op == "tconv":
                    err += 1 / scale if stage.up.residual == "bilinear" else 0
                    scale *= stage.up.factor
                err = max(err, guide_err) + convs(stage.blocks) / scale
            err = max(x_err + radius, err)
            if cfg.refiner is not None:
                err = max(err, guide_err) + convs(cfg.refiner.blocks) / scale
            reach = err / cells
        return math.ceil(reach - 1e-9)

    def check_tile(self, tile: int | tuple[int, int] | None) -> tuple[int, int] | None:
        """``tile`` as a ``(rows, cols)`` pair of coarse cells (None stays None), or a ValueError naming
        what is wrong: not positive integers, or a config that cannot be tiled exactly."""
        if tile is None:
            return None
        pair = (tile, tile) if isinstance(tile, int) and not isinstance(tile, bool) else tile
        if (
            not isinstance(pair, tuple | list)
            or len(pair) != 2
            or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in pair)
        ):
            raise ValueError(f"tile must be a positive number of coarse cells or a (rows, cols) pair, got {tile!r}")
        cfg = self.config
        groups = [stage.blocks for stage in cfg.encoder.stages] + [cfg.decoder.input_blocks]
        groups += [stage.blocks for stage in cfg.decoder.stages]
        groups += [cfg.refiner.blocks] if cfg.refiner is not None else []
        if any(stage.down.op != "none" for stage in cfg.encoder.stages) or any(g.stride != 1 for g in groups):
            raise ValueError(
                "tiled inference needs a network that keeps full resolution in its encoder and blocks "
                "(no down ops or strided blocks, true of every published config); run this config untiled"
            )
        return tuple(pair)

    def _tiled(self, image, features, iters, generator, tile, head) -> Tensor:
        b, _, h, w = features.shape
        total = self.config.up_factor**iters
        halo = self.tile_halo(iters)
        guide_images = _GuideImages(self, image)
        noise_cache: dict = {}
        out = None
        for y0 in range(0, h, tile[0]):
            for x0 in range(0, w, tile[1]):
                y1, x1 = min(h, y0 + tile[0]), min(w, x0 + tile[1])
                ey0, ey1, ex0, ex1 = max(0, y0 - halo), min(h, y1 + halo), max(0, x0 - halo), min(w, x1 + halo)
                region = Region((ey0, ex0), (ey1 - ey0, ex1 - ex0), (h, w), 0, noise_cache)
                crop = features[:, :, ey0:ey1, ex0:ex1]
                y = self._iterate(guide_images, crop, iters, generator, False, region)
                channels_last = is_channels_last(y)
                y = y[:, :, (y0 - ey0) * total : (y1 - ey0) * total, (x0 - ex0) * total : (x1 - ex0) * total]
                if head is not None:
                    y = _apply_head(head, y)
                    channels_last = is_channels_last(y)
                if out is None:
                    layout = torch.channels_last if channels_last else torch.contiguous_format
                    shape = (b, y.shape[1], h * total, w * total)
                    out = torch.empty(shape, dtype=y.dtype, device=y.device, memory_format=layout)
                out[:, :, y0 * total : y1 * total, x0 * total : x1 * total] = y
                del y
                logger.debug("tile rows %d-%d cols %d-%d done (halo %d)", y0, y1, x0, x1, halo)
        return out

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


class _GuideImages:
    """The guidance encoder's input per iteration, made once for the whole image and cut per tile."""

    def __init__(self, model: UPLiFT, image: Tensor) -> None:
        self.model = model
        self.image = image
        self.cache: dict[int, Tensor] = {}

    def full(self, i: int) -> Tensor:
        key = 0 if self.model.config.share_encoder else i
        if key not in self.cache:
            source = self.image if key == 0 else self.model._grow(self.image, key)
            self.cache[key] = self.model.guidance_image(source)
        return self.cache[key]

    def crop(self, i: int, region: Region | None) -> Tensor:
        """Iteration ``i``'s guidance input for the coarse-grid crop ``region`` (all of it for ``None``)."""
        full = self.full(i)
        if region is None:
            return full
        (y0, x0), (rows, cols), (h, w) = region.origin, region.size, region.full
        py, px = full.shape[-2] // h, full.shape[-1] // w
        return full[:, :, y0 * py : (y0 + rows) * py, x0 * px : (x0 + cols) * px]


def _apply_head(head: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    y = head(x)
    if not isinstance(y, Tensor) or y.dim() != 4 or y.shape[0] != x.shape[0] or y.shape[-2:] != x.shape[-2:]:
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(
            f"head must map features [B, C, H, W] to [B, K, H, W] per pixel (same B, H, W); "
            f"it turned {tuple(x.shape)} into {got}"
        )
    return y
