"""The decoder step: one set of weights, applied once per iteration, that produces the guide map G."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import DecoderConfig
from .blocks import BlockGroup, UpBlock
from .guidance import GuidanceMaps, guidance_parts
from .region import Region

__all__ = ["DecoderStep"]


class DecoderStep(nn.Module):
    """Features + guidance maps -> guide G at ``scale`` times the features' resolution.

    Stage 0 concatenates the deepest guidance map (resampled to the features' grid) and runs
    ``input_blocks``; every further stage upsamples (transposed conv + bilinear residual), concatenates
    the next-deepest guidance map and runs its block group.

    Shape: x [B, C, h, w], guidance maps [B, C_i, *, *] -> G [B, out_channels, h*scale, w*scale].
    """

    def __init__(self, config: DecoderConfig, channels: int, guidance_channels: list[int]) -> None:
        super().__init__()
        self.resample = config.guidance_resample
        self.noise_channels = config.noise_channels
        self.noise_scale = config.noise_scale
        noise = config.noise_channels
        self.input_blocks = BlockGroup(channels + guidance_channels[-1] + noise, config.input_blocks)
        c = self.input_blocks.out_channels
        stages = []
        for k, stage in enumerate(config.stages, start=2):
            blocks = BlockGroup(c + guidance_channels[-k] + noise, stage.blocks)
            stages.append(nn.ModuleDict({"up": UpBlock(c, stage.up), "blocks": blocks}))
            c = blocks.out_channels
        self.stages = nn.ModuleList(stages)
        self.out_channels = c
        self.scale = config.scale

    @property
    def guidance_reads(self) -> list[int]:
        """The guidance-map indices this step reads (negative, deepest first)."""
        return [-k for k in range(1, len(self.stages) + 2)]

    def _parts(self, x: Tensor, guidance: GuidanceMaps, index: int, generator, region) -> list[Tensor]:
        return guidance_parts(
            x,
            guidance,
            index,
            resample=self.resample,
            noise_channels=self.noise_channels,
            noise_scale=self.noise_scale,
            generator=generator,
            region=region,
            key=f"decoder{-index}",
        )

    def forward(
        self,
        x: Tensor,
        guidance: GuidanceMaps | list[Tensor],
        generator: torch.Generator | None = None,
        region: Region | None = None,
    ) -> Tensor:
        """``region`` places the crop ``x`` in its full grid (tiled inference); ``None`` for whole images."""
        guidance = GuidanceMaps.wrap(guidance)
        x = self.input_blocks(self._parts(x, guidance, -1, generator, region))
        for k, stage in enumerate(self.stages, start=2):
            up = stage["up"](x, region)
            if region is not None:
                region = region.scaled(up.shape[-2] // x.shape[-2])
            x = stage["blocks"](self._parts(up, guidance, -k, generator, region))
        return x
