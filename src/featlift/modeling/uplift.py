"""The UPLiFT upsampler: guidance encoder + weight-shared decoder step + Local Attender (+ refiner)."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from ..config import UpliftConfig
from ..errors import UntileableError
from ._inference import AUTOGRAD, Plan, fold_scope, plan
from ._noise import Noise
from ._region import Region
from ._tiling import Tile, apply_head, tile_pair, tiled
from .attender import LocalAttender
from .decoder import DecoderStep
from .encoder import GuidanceEncoder
from .guidance import GuidanceInputs, GuidanceMaps, guidance_image
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
        self.channels = config.channels  # feature channels C (the backbone's)
        self.patch = config.patch  # backbone pixels per feature cell
        self.default_iters = config.default_iters  # iterations that reach pixel density
        # Memory layout override for the inference path: None lets featlift.modeling._inference.plan decide.
        self.channels_last: bool | None = None

    # -- inspection --------------------------------------------------------------------------------

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- the forward pass --------------------------------------------------------------------------

    def guidance_image(self, image: Tensor) -> Tensor:
        """The image the guidance encoder sees: resized bilinearly (align_corners=False) to
        ``H * guidance_patch // patch`` when the guidance patch differs from the backbone patch (14 -> 16),
        otherwise ``image`` itself."""
        return guidance_image(image, self.config.patch, self.config.resolved_guidance_patch)

    def guidance_inputs(self, image: Tensor) -> GuidanceInputs:
        """The guidance encoder's input per iteration for ``image`` (see :class:`GuidanceInputs`)."""
        cfg = self.config
        return GuidanceInputs(
            image,
            patch=cfg.patch,
            guidance_patch=cfg.resolved_guidance_patch,
            up_factor=cfg.up_factor,
            shared=cfg.share_encoder,
        )

    @property
    def guidance_reads(self) -> set[int]:
        """Indices (non-negative) of the guidance maps that the decoder step and refiner read."""
        n = len(self.guidance_encoder.stages)
        reads = {i % n for i in self.decoder_step.guidance_reads}
        if self.refiner is not None:
            reads.add(self.refiner.guidance_index % n)
        return reads

    def encode_guidance(self, image: Tensor, *, lean: bool = False) -> GuidanceMaps:
        """Run the guidance encoder on a normalised image at backbone-input resolution.

        Returns the maps the decoder and refiner read (a list-like :class:`GuidanceMaps`); see
        :meth:`guidance_image` for the resize applied first.
        """
        return self.guidance_encoder(self.guidance_image(image), keep=self.guidance_reads, lean=lean)

    def step(
        self,
        features: Tensor,
        guidance: GuidanceMaps | list[Tensor],
        noise: Noise | torch.Generator | None = None,
        *,
        plan: Plan = AUTOGRAD,
        release_guidance: bool = False,
        region: Region | None = None,
    ) -> Tensor:
        """One upsampling iteration: [B, C, h, w] -> [B, C, h*up_factor, w*up_factor].

        ``noise`` feeds the noise channels (VAE layout): a :class:`Noise`, or a ``torch.Generator`` to draw
        from (default the global generator); ``plan`` is how to run
        (:mod:`featlift.modeling._inference`; default the autograd path); ``release_guidance`` frees the
        guidance maps as soon as this step has read them (lower peak memory on the last iteration);
        ``region`` places a crop in the full grid (tiled inference).
        """
        guidance = GuidanceMaps.wrap(guidance)
        noise = Noise.of(noise)
        logits = self.attender.logits(self.decoder_step(features, guidance, noise, region, lean=plan.lean))
        if release_guidance and self.refiner is None:
            guidance.release()
        out = self.attender.attend(logits, features, channels_last=plan.channels_last)
        del logits
        if self.refiner is not None:
            scale = out.shape[-2] // features.shape[-2]
            refined_region = None if region is None else region.scaled(scale)
            out = self.refiner(out, guidance, noise, refined_region, lean=plan.lean)
            if release_guidance:
                guidance.release()
        return out

    def iterate(
        self,
        inputs: GuidanceInputs,
        features: Tensor,
        iters: int,
        *,
        noise: Noise,
        plan: Plan,
        region: Region | None = None,
        return_steps: bool = False,
    ) -> Tensor | list[Tensor]:
        """``iters`` steps on ``features`` (the whole coarse grid, or the crop ``region`` of it), encoding
        the guidance once (shared encoder) or per iteration. :meth:`forward` checks the inputs first."""
        steps = []
        guidance = None
        shared = self.config.share_encoder
        factor = self.config.up_factor
        x = features
        for i in range(iters):
            if guidance is None or not shared:
                guidance = self.guidance_encoder(inputs.crop(i, region), keep=self.guidance_reads, lean=plan.lean)
            step_region = None if region is None else region.scaled(factor**i, iteration=i)
            last = i == iters - 1
            x = self.step(x, guidance, noise, plan=plan, release_guidance=last or not shared, region=step_region)
            if return_steps:
                steps.append(x)
        return steps if return_steps else x

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
                the untiled one up to float rounding (see :mod:`featlift.modeling._tiling`).
            head: optional per-pixel callable (linear probe, PCA projection, ...) mapping [B, C, H', W']
                to [B, K, H', W']; applied to each tile's features (or to the whole output when untiled),
                so only its K channels are ever held at full resolution.

        Returns:
            [B, C, h * f**iters, w * f**iters] with f = ``config.up_factor`` (K channels with ``head``), in
            the model's dtype. In eval mode without autograd the lean inference path runs
            (:mod:`featlift.modeling._inference`); on the CPU its tensors are laid out channels_last in
            memory (call ``.contiguous()`` if you need plain NCHW strides; ``model.channels_last = False``
            opts out, ``True`` opts in elsewhere).
        """
        iters = self.default_iters if iters is None else iters
        image, features = self._check_inputs(image, features, iters)
        tile = self.check_tile(tile)
        if tile is not None and return_steps:
            raise ValueError("return_steps needs every whole intermediate map; it cannot be combined with tile")
        run = plan(self, features, self.channels_last)
        # One fold per call on the lean path; compiled code folds in the graph, on each call.
        folding = run.lean and not torch.compiler.is_compiling()
        with fold_scope() if folding else contextlib.nullcontext():
            if run.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
                features = features.contiguous(memory_format=torch.channels_last)
            inputs = self.guidance_inputs(image)
            noise = Noise(generator)
            if tile is not None:

                def crop_iterate(crop: Tensor, region: Region) -> Tensor:
                    return self.iterate(inputs, crop, iters, noise=noise, plan=run, region=region)

                factor = self.config.up_factor**iters
                halo = self.tile_halo(iters)
                return tiled(
                    crop_iterate,
                    features,
                    tile=tile,
                    halo=halo,
                    factor=factor,
                    channels_last=run.channels_last,
                    head=head,
                )
            out = self.iterate(inputs, features, iters, noise=noise, plan=run, return_steps=return_steps)
            if head is None:
                return out
            if return_steps:
                return [apply_head(head, step) for step in out]
            return apply_head(head, out)

    # -- tiled inference ---------------------------------------------------------------------------

    def tile_halo(self, iters: int | None = None) -> int:
        """Halo, in coarse feature cells, that makes tiled inference exact for ``iters`` iterations.

        Composed from what each part reports about itself (``reach()`` on the blocks, the guidance
        encoder, the decoder step, the attender and the refiner; see :mod:`featlift.modeling.blocks`),
        never from config strings: paths that run side by side take the maximum, layers in sequence add
        up. Every distance is tracked in coarse cells: iteration ``i`` runs on a grid ``up_factor ** i``
        times finer, the guidance encoder on ``guidance_patch`` pixels per coarse cell.

        Raises:
            ValueError: a layer is not translation-equivariant
                (:class:`~featlift.errors.UntileableError`; no published config has one).
        """
        iters = self.default_iters if iters is None else iters
        cfg = self.config
        guide_density = cfg.resolved_guidance_patch
        try:
            guide = self.guidance_encoder.reach() / guide_density
            radius = self.attender.reach()
            reach = 0.0  # how far a border difference has travelled into the current features
            for i in range(iters):
                density = cfg.up_factor**i
                out = self.decoder_step.reach(reach, guide, density, guide_density)
                out = max(reach + radius / density, out)  # the attender: values (its radius) beside logits
                if self.refiner is not None:
                    out = self.refiner.reach(out, guide, density * self.decoder_step.scale, guide_density)
                reach = out
        except UntileableError as err:
            raise ValueError(
                f"tiled inference needs a network whose layers are translation-equivariant, and this config "
                f"has {err} (no published config does); run it untiled (tile=None)"
            ) from None
        return math.ceil(reach - 1e-9)

    def check_tile(self, tile: int | Tile | None) -> Tile | None:
        """``tile`` as a ``(rows, cols)`` pair of coarse cells (None stays None), or a ValueError naming
        what is wrong: not positive integers, or a model that cannot be tiled exactly."""
        pair = tile_pair(tile)
        if pair is not None:
            self.tile_halo(1)  # raises for a model that cannot be tiled
        return pair

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
