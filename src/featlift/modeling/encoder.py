"""The guidance encoder: runs once on the image and returns one feature map per stage."""

from __future__ import annotations

from torch import Tensor, nn

from ..config import EncoderConfig
from .blocks import BlockGroup, DownBlock

__all__ = ["GuidanceEncoder"]


class GuidanceEncoder(nn.Module):
    """Stack of (optional down op, block group) stages on the guidance image.

    Shape: image [B, 3, H, W] -> list of maps, map i is [B, out_channels[i], H_i, W_i] where H_i = H
    unless a stage downsamples (no published config does).
    """

    def __init__(self, config: EncoderConfig, in_channels: int = 3) -> None:
        super().__init__()
        stages = []
        c = in_channels
        for stage in config.stages:
            blocks = BlockGroup(c, stage.blocks)
            stages.append(nn.ModuleDict({"down": DownBlock(c, stage.down), "blocks": blocks}))
            c = blocks.out_channels
        self.stages = nn.ModuleList(stages)
        self.out_channels = config.out_channels(in_channels)

    def forward(self, image: Tensor) -> list[Tensor]:
        maps = []
        x = image
        for stage in self.stages:
            x = stage["blocks"](stage["down"](x))
            maps.append(x)
        return maps
