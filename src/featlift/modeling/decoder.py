"""The decoder step: one set of weights, applied once per iteration, that produces the guide map G."""

from __future__ import annotations

from torch import Tensor, nn

from ..config import DecoderConfig
from ._noise import Noise
from ._region import Region
from .blocks import BlockGroup, UpBlock
from .guidance import GuidanceMaps, GuidanceReader, GuidedStage

__all__ = ["DecoderStep"]


class DecoderStep(GuidedStage):
    """Features + guidance maps -> guide G at ``scale`` times the features' resolution.

    Stage 0 concatenates the deepest guidance map (resampled to the features' grid) and runs
    ``input_blocks``; every further stage upsamples (transposed conv + bilinear residual), concatenates
    the next-deepest guidance map and runs its block group.

    Shape: x [B, C, h, w], guidance maps [B, C_i, *, *] -> G [B, out_channels, h*scale, w*scale]; the
    call's arguments are those of :class:`GuidedStage`.
    """

    def __init__(self, config: DecoderConfig, channels: int, guidance_channels: list[int]) -> None:
        super().__init__()
        self.reader = GuidanceReader(config)
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

    def reach(self, x_reach: float, guide_reach: float, density: int, guide_density: int) -> float:
        """How far a border difference reaches into G, in coarse cells, given how far it has reached into
        the input features (``x_reach``) and into the guidance maps (``guide_reach``), for input features
        of ``density`` cells and guidance maps of ``guide_density`` pixels per coarse cell (tiled
        inference). Side-by-side paths take the maximum, layers in sequence add up."""
        reach = x_reach
        groups = [(None, self.input_blocks)] + [(stage["up"], stage["blocks"]) for stage in self.stages]
        for up, blocks in groups:
            if up is not None:
                reach += up.reach() / density
                density *= up.scale
            guide = guide_reach + self.reader.resample.reach(guide_density, density)
            reach = max(reach, guide) + blocks.reach() / density
        return reach

    def run(self, x: Tensor, guidance: GuidanceMaps, noise: Noise, region: Region | None, lean: bool) -> Tensor:
        x = self.input_blocks(self.reader.parts(x, guidance, -1, noise, region, "decoder1"), lean=lean)
        for k, stage in enumerate(self.stages, start=2):
            up = stage["up"](x, region, lean=lean)
            if region is not None:
                region = region.scaled(up.shape[-2] // x.shape[-2])
            x = stage["blocks"](self.reader.parts(up, guidance, -k, noise, region, f"decoder{k}"), lean=lean)
        return x
