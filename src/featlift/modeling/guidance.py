"""The guidance maps of one image, handed out at the grid each reader asks for.

- :class:`GuidanceInputs`: the image the guidance encoder sees at each iteration (pre-resized for
  patch-14 backbones, grown per iteration when the encoder is not shared), cut per tile.
- :class:`GuidanceMaps`: the encoder's output, resampled on request (:data:`RESAMPLES`).
- :class:`GuidanceReader`: how a decoder stage or the refiner reads a map: resampled to its grid, plus
  its noise channels, as the parts of a channel concatenation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._noise import Noise
from ._region import Region
from .blocks import ConvBlock

__all__ = [
    "RESAMPLES",
    "GuidanceInputs",
    "GuidanceMaps",
    "GuidanceReader",
    "GuidedStage",
    "Resample",
    "guidance_image",
]


def _nearest(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="nearest")


def _bilinear(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Antialiased bilinear (align_corners=False), returned in ``x``'s dtype. PyTorch's CPU kernel takes
    no half precision: there a half-precision map (a guidance map or image, a few channels wide) is
    resampled in float32 and rounded once."""
    if x.device.type == "cpu" and x.dtype in (torch.float16, torch.bfloat16):
        return _bilinear(x.float(), size).to(x.dtype)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def _exact(x: Tensor, size: tuple[int, int]) -> Tensor:
    raise ValueError(
        f"guidance map is {tuple(x.shape[-2:])} but {tuple(size)} is needed and the resample mode is 'none'; "
        "set guidance_resample to 'nearest' or 'bilinear'"
    )


@dataclass(frozen=True)
class Resample:
    """A way of bringing a guidance map to a reader's grid (called only when the sizes differ)."""

    name: str
    resize: Callable[[Tensor, tuple[int, int]], Tensor]
    mixes: bool  # whether an output cell mixes neighbouring source cells (reach; tiled inference)
    subgrid: bool  # at an integer ratio the result is a subgrid of the map (PyTorch's legacy nearest)

    def __call__(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return x if tuple(x.shape[-2:]) == tuple(size) else self.resize(x, tuple(size))

    def reach(self, source_density: float, target_density: float) -> float:
        """Coarse cells a border difference travels through this resampling from a grid of
        ``source_density`` cells per coarse cell to one of ``target_density``: antialiased bilinear reads
        one target cell on each side when shrinking and one source cell when enlarging; nearest (at the
        integer ratios of aligned tiles) reads none."""
        return max(1 / source_density, 1 / target_density) if self.mixes else 0.0


# config ``guidance_resample`` -> how maps are resized: "nearest" is PyTorch's legacy nearest (source
# index floor(i * in / out)), "bilinear" antialiased bilinear (align_corners=False), "none" needs equal sizes
RESAMPLES: dict[str, Resample] = {
    "nearest": Resample("nearest", _nearest, mixes=False, subgrid=True),
    "bilinear": Resample("bilinear", _bilinear, mixes=True, subgrid=False),
    "none": Resample("none", _exact, mixes=False, subgrid=False),
}


def guidance_image(image: Tensor, patch: int, guidance_patch: int) -> Tensor:
    """The image the guidance encoder sees: resized bilinearly (align_corners=False) by
    ``guidance_patch / patch`` (patch 14 -> 16), or ``image`` itself when the two agree."""
    if guidance_patch == patch:
        return image
    size = (image.shape[-2] * guidance_patch // patch, image.shape[-1] * guidance_patch // patch)
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False)


class GuidanceInputs:
    """The guidance encoder's input per iteration, made once for the whole image and cut per tile.

    With a shared encoder every iteration reads the same input; otherwise iteration ``i`` sees the image
    grown by ``up_factor ** i`` (antialiased bilinear) before the pre-resize.
    """

    def __init__(self, image: Tensor, *, patch: int, guidance_patch: int, up_factor: int, shared: bool) -> None:
        self.image = image
        self.patch, self.guidance_patch = patch, guidance_patch
        self.up_factor, self.shared = up_factor, shared
        self._cache: dict[int, Tensor] = {}

    def full(self, i: int) -> Tensor:
        key = 0 if self.shared else i
        if key not in self._cache:
            source = self.image
            if key:
                factor = self.up_factor**key
                size = (int(source.shape[-2] * factor), int(source.shape[-1] * factor))
                source = _bilinear(source, size)
            self._cache[key] = guidance_image(source, self.patch, self.guidance_patch)
        return self._cache[key]

    def crop(self, i: int, region: Region | None) -> Tensor:
        """Iteration ``i``'s input for the coarse-grid crop ``region`` (all of it for ``None``)."""
        full = self.full(i)
        return full if region is None else region.cut(full)


class GuidanceMaps:
    """The guidance encoder's output for one image.

    Readers (decoder stages, refiner) ask for map ``index`` resampled to a grid with :meth:`at`. Maps
    nobody reads are not kept. The deepest map can be *deferred*: when its stage is a single 3x3 conv
    followed by per-pixel layers and it is only read through nearest resampling at integer ratios, it is
    computed directly on each requested subgrid (a strided conv on the map before it), which is exactly
    what nearest resampling of the full map would give, at a fraction of the cost and memory.

    It also behaves as the list of full-resolution maps (``len``, indexing, iteration), computing a
    deferred or dropped map on demand where it can.
    """

    def __init__(
        self,
        maps: list[Tensor | None],
        *,
        deferred: ConvBlock | None = None,
    ) -> None:
        self._maps = list(maps)
        self._deferred = deferred
        self._cache: dict[tuple[int, int], Tensor] = {}
        if deferred is not None and (len(maps) < 2 or maps[-2] is None or maps[-1] is not None):
            raise ValueError("a deferred last map needs the map before it and no computed last map")

    @classmethod
    def wrap(cls, guidance: GuidanceMaps | list[Tensor]) -> GuidanceMaps:
        """``guidance`` itself, or a list of full-resolution maps wrapped as one."""
        return guidance if isinstance(guidance, GuidanceMaps) else cls(list(guidance))

    @property
    def deferred(self) -> bool:
        """Whether the deepest map is computed per requested subgrid rather than held at full resolution."""
        return self._deferred is not None

    def __len__(self) -> int:
        return len(self._maps)

    def __getitem__(self, index: int) -> Tensor:
        i = index % len(self._maps)
        if i == len(self._maps) - 1 and self._deferred is not None:
            return self._subgrid((1, 1))
        if self._maps[i] is None:
            raise RuntimeError(f"guidance map {index} was not kept (nothing reads it) or has been released")
        return self._maps[i]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def at(self, index: int, size: tuple[int, int], resample: Resample) -> Tensor:
        """Map ``index`` resampled to ``size`` (one of :data:`RESAMPLES`)."""
        i = index % len(self._maps)
        if i == len(self._maps) - 1 and self._deferred is not None:
            full = self._maps[-2].shape[-2:]
            if resample.subgrid and full[0] % size[0] == 0 and full[1] % size[1] == 0:
                # plain ints: under torch.export the sizes are symbolic, and the step keys a cache
                return self._subgrid((int(full[0] // size[0]), int(full[1] // size[1])))
        return resample(self[i], size)

    def _subgrid(self, step: tuple[int, int]) -> Tensor:
        if step not in self._cache:
            self._cache[step] = self._deferred.subsampled(self._maps[-2], step)
        return self._cache[step]

    def release(self) -> None:
        """Drop every map (frees their memory once no one else holds them)."""
        self._maps = [None] * len(self._maps)
        self._deferred = None
        self._cache.clear()


class GuidanceReader:
    """How a decoder stage or the refiner reads the guidance: map ``index`` resampled to the reader's
    grid, then its noise channels. Built from a config with ``guidance_resample``, ``noise_channels``
    and ``noise_scale`` (:class:`~featlift.config.DecoderConfig`, :class:`~featlift.config.RefinerConfig`)."""

    def __init__(self, config) -> None:
        self.resample = RESAMPLES[config.guidance_resample]
        self.noise_channels = config.noise_channels
        self.noise_scale = config.noise_scale

    def parts(
        self, x: Tensor, guidance: GuidanceMaps, index: int, noise: Noise, region: Region | None, key: str
    ) -> list[Tensor]:
        """The reader's input as concatenation parts: ``[x, map index at x's grid, noise]`` (no noise part
        without noise channels). ``key`` names the reader's noise draws; ``region`` places ``x`` when tiling."""
        parts = [x, guidance.at(index, tuple(x.shape[-2:]), self.resample)]
        extra = noise.draw(x, self.noise_channels, self.noise_scale, key, region)
        return parts if extra is None else [*parts, extra]


class GuidedStage(nn.Module):
    """Base of the modules that read guidance maps (the decoder step and the refiner).

    ``forward(x, guidance, noise=None, region=None, *, lean=False)``: ``guidance`` is a
    :class:`GuidanceMaps` or a list of full-resolution maps, ``noise`` feeds the noise channels (a
    :class:`~featlift.modeling._noise.Noise`, or a ``torch.Generator`` to draw from; default the global
    generator), ``region`` places the crop ``x`` in its full grid
    (tiled inference; ``None`` for whole images) and ``lean`` picks the inference path
    (:mod:`featlift.modeling._inference`). Subclasses implement :meth:`run` with the arguments resolved.
    """

    def forward(
        self,
        x: Tensor,
        guidance: GuidanceMaps | list[Tensor],
        noise: Noise | torch.Generator | None = None,
        region: Region | None = None,
        *,
        lean: bool = False,
    ) -> Tensor:
        return self.run(x, GuidanceMaps.wrap(guidance), Noise.of(noise), region, lean)

    def run(self, x: Tensor, guidance: GuidanceMaps, noise: Noise, region: Region | None, lean: bool) -> Tensor:
        raise NotImplementedError
