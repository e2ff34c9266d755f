"""Optional refiner after the attender (the VAE variant): guidance concat, conv blocks, 1x1 conv to C."""

from __future__ import annotations

from torch import Tensor, nn

from ..config import RefinerConfig
from ._noise import Noise
from ._region import Region
from .blocks import BlockGroup
from .guidance import GuidanceMaps, GuidanceReader, GuidedStage

__all__ = ["Refiner"]


class Refiner(GuidedStage):
    """Shape: x [B, C, H, W] + guidance maps -> [B, C, H, W]. No residual around it. The call's arguments
    are those of :class:`~featlift.modeling.guidance.GuidedStage`."""

    def __init__(self, config: RefinerConfig, channels: int, guidance_channels: list[int], guidance_index: int) -> None:
        super().__init__()
        self.guidance_index = guidance_index
        self.reader = GuidanceReader(config)
        self.blocks = BlockGroup(channels + guidance_channels[guidance_index] + config.noise_channels, config.blocks)
        self.out_proj = nn.Conv2d(self.blocks.out_channels, channels, 1)

    def reach(self, x_reach: float, guide_reach: float, density: int, guide_density: int) -> float:
        """Like :meth:`DecoderStep.reach <featlift.modeling.decoder.DecoderStep.reach>`, for an input of
        ``density`` cells per coarse cell (the 1x1 projection adds nothing)."""
        guide = guide_reach + self.reader.resample.reach(guide_density, density)
        return max(x_reach, guide) + self.blocks.reach() / density

    def run(self, x: Tensor, guidance: GuidanceMaps, noise: Noise, region: Region | None, lean: bool) -> Tensor:
        parts = self.reader.parts(x, guidance, self.guidance_index, noise, region, "refiner")
        return self.out_proj(self.blocks(parts, lean=lean))
