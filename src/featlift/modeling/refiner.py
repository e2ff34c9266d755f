"""Optional refiner after the attender (the VAE variant): guidance concat, conv blocks, 1x1 conv to C."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import RefinerConfig
from .blocks import BlockGroup
from .guidance import GuidanceMaps, guidance_parts
from .region import Region

__all__ = ["Refiner"]


class Refiner(nn.Module):
    """Shape: x [B, C, H, W] + guidance maps -> [B, C, H, W]. No residual around it."""

    def __init__(self, config: RefinerConfig, channels: int, guidance_channels: list[int], guidance_index: int) -> None:
        super().__init__()
        self.guidance_index = guidance_index
        self.resample = config.guidance_resample
        self.noise_channels = config.noise_channels
        self.noise_scale = config.noise_scale
        self.blocks = BlockGroup(channels + guidance_channels[guidance_index] + config.noise_channels, config.blocks)
        self.out_proj = nn.Conv2d(self.blocks.out_channels, channels, 1)

    def forward(
        self,
        x: Tensor,
        guidance: GuidanceMaps | list[Tensor],
        generator: torch.Generator | None = None,
        region: Region | None = None,
    ) -> Tensor:
        parts = guidance_parts(
            x,
            GuidanceMaps.wrap(guidance),
            self.guidance_index,
            resample=self.resample,
            noise_channels=self.noise_channels,
            noise_scale=self.noise_scale,
            generator=generator,
            region=region,
            key="refiner",
        )
        return self.out_proj(self.blocks(parts))
