"""The guidance encoder: runs once on the image and returns one feature map per stage."""

from __future__ import annotations

from torch import Tensor, nn

from ..config import EncoderConfig
from .blocks import BlockGroup, DownBlock
from .guidance import GuidanceMaps

__all__ = ["GuidanceEncoder"]


class GuidanceEncoder(nn.Module):
    """Stack of (optional down op, block group) stages on the guidance image.

    Shape: image [B, 3, H, W] -> list-like :class:`GuidanceMaps`, map i is [B, out_channels[i], H_i, W_i]
    where H_i = H unless a stage downsamples (no published config does).
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

    @property
    def can_defer_last(self) -> bool:
        """Whether the deepest map can be computed on subgrids only, on the lean path (see
        :class:`GuidanceMaps`)."""
        last = self.stages[-1]
        blocks = last["blocks"]
        return (
            len(self.stages) >= 2
            and last["down"].op is None
            and len(blocks) == 1
            and blocks[0].pointwise_after_first_conv
        )

    def reach(self) -> int:
        """Guidance pixels a border difference of the image travels through the whole encoder."""
        return sum(stage["down"].reach() + stage["blocks"].reach() for stage in self.stages)

    def forward(self, image: Tensor, keep: set[int] | None = None, *, lean: bool = False) -> GuidanceMaps:
        """Run the encoder, keeping only the maps in ``keep`` (all when ``None``).

        On the lean path the deepest map is deferred when :attr:`can_defer_last` allows it; the map
        before it is then kept as its input.
        """
        n = len(self.stages)
        keep = set(range(n)) if keep is None else {i % n for i in keep}
        defer = lean and (n - 1) in keep and self.can_defer_last
        if defer:
            keep.add(n - 2)
        maps: list[Tensor | None] = []
        x = image
        for i, stage in enumerate(self.stages):
            if defer and i == n - 1:
                maps.append(None)
                break
            x = stage["blocks"](stage["down"](x), lean=lean)
            maps.append(x if i in keep else None)
        del x
        return GuidanceMaps(maps, deferred=self.stages[-1]["blocks"][0] if defer else None)
