"""What gets exported: the modules traced by the ONNX and ``torch.export`` exporters, their example inputs
and dynamic shapes, and the loading of a model reference for export.

Two graphs:

- :class:`UpsamplerGraph` (default): ``(image, features) -> upsampled``, the network alone, called as
  :meth:`featlift.UPLiFT.forward` is: ``image`` [B, 3, H, W] normalised as the backbone expects, at the
  backbone's input size (H = h * patch), ``features`` [B, C, h, w] the backbone's features.
- :class:`PipelineGraph` (``with_backbone``): ``image -> upsampled``, ``image`` [B, 3, H, W] RGB in
  [0, 1] with H and W multiples of the patch; the graph normalises it with the backbone's statistics, runs
  the backbone and the upsampler.

Both return ``upsampled`` [B, C, h * f**iters, w * f**iters] (f = the upsampling factor, 2 for every
published model): the upsampler's native grid, not resized to the image.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._builder import LoadOptions, load_uplift, load_upsampler
from .._tensors import dtype_str, freeze
from .._upsampler import Upsampler
from ..errors import ConfigError
from ..modeling.uplift import UPLiFT
from ._attend import with_export_attenders

__all__ = ["ExportTarget", "PipelineGraph", "UpsamplerGraph", "load_target"]

logger = logging.getLogger(__name__)

INPUT_IMAGE = "image"
INPUT_FEATURES = "features"
OUTPUT = "upsampled"


class UpsamplerGraph(nn.Module):
    """``(image, features) -> upsampled``: ``iters`` UPLiFT iterations (see the module docstring)."""

    def __init__(self, uplift: UPLiFT, iters: int) -> None:
        super().__init__()
        self.uplift = uplift
        self.iters = iters

    def forward(self, image: Tensor, features: Tensor) -> Tensor:
        return self.uplift(image, features, iters=self.iters)


class PipelineGraph(nn.Module):
    """``image -> upsampled``: normalise an RGB image in [0, 1] (in float32, as :class:`~featlift.Upsampler`
    does), run the backbone, then ``iters`` UPLiFT iterations."""

    def __init__(self, backbone: nn.Module, uplift: UPLiFT, iters: int, stats) -> None:
        super().__init__()
        self.backbone = backbone
        self.uplift = uplift
        self.iters = iters
        mean, std = stats
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: Tensor) -> Tensor:
        dtype = image.dtype
        normalised = ((image.float() - self.mean) / self.std).to(dtype)
        return self.uplift(normalised, self.backbone(normalised), iters=self.iters)


@dataclass
class ExportTarget:
    """A model ready to be traced: the graph module (a private copy, in eval mode, frozen, on ``device``
    in ``dtype``), its UPLiFT, and how it is called."""

    graph: nn.Module
    uplift: UPLiFT
    iters: int
    with_backbone: bool
    dtype: torch.dtype
    device: torch.device

    @property
    def input_names(self) -> list[str]:
        return [INPUT_IMAGE] if self.with_backbone else [INPUT_IMAGE, INPUT_FEATURES]

    def example_inputs(self, cells: tuple[int, int], batch: int = 2, seed: int = 0) -> tuple[Tensor, ...]:
        """Random inputs of ``batch`` images of ``cells`` (rows, cols) backbone cells: the image in [0, 1]
        with the backbone, otherwise a standard-normal normalised image and features."""
        gen = torch.Generator().manual_seed(seed)
        h, w = cells
        p = self.uplift.patch
        if self.with_backbone:
            image = torch.rand(batch, 3, h * p, w * p, generator=gen)
            return (image.to(self.device, self.dtype),)
        image = torch.randn(batch, 3, h * p, w * p, generator=gen)
        features = torch.randn(batch, self.uplift.channels, h, w, generator=gen)
        return image.to(self.device, self.dtype), features.to(self.device, self.dtype)

    def dynamic_shapes(self) -> dict[str, dict[int, object]]:
        """``torch.export`` dynamic shapes: batch, and the feature grid's rows and columns (the image's
        height and width are ``patch`` times those)."""
        from torch.export import Dim

        batch, h, w = Dim("batch", min=1), Dim("h", min=1), Dim("w", min=1)
        p = self.uplift.patch
        image = {0: batch, 2: p * h, 3: p * w}
        if self.with_backbone:
            return {INPUT_IMAGE: image}
        return {INPUT_IMAGE: image, INPUT_FEATURES: {0: batch, 2: h, 3: w}}

    def metadata(self) -> dict[str, str]:
        """What a consumer of the exported file needs to know, as strings (ONNX metadata_props, pt2 extra file)."""
        from .._version import __version__

        config = self.uplift.config
        factor = config.up_factor**self.iters
        image = (
            "[B, 3, H, W] RGB in [0, 1], H and W multiples of the patch; normalised inside the graph"
            if self.with_backbone
            else "[B, 3, H, W] normalised as the backbone expects, H = h * patch, W = w * patch"
        )
        meta = {
            "featlift.version": __version__,
            "featlift.inputs": ",".join(self.input_names),
            "featlift.output": OUTPUT,
            "featlift.image": image,
            "featlift.upsampled": f"[B, C, h * {factor}, w * {factor}] (h = H / patch, w = W / patch)",
            "featlift.patch": str(self.uplift.patch),
            "featlift.channels": str(self.uplift.channels),
            "featlift.iters": str(self.iters),
            "featlift.up_factor": str(config.up_factor),
            "featlift.with_backbone": str(self.with_backbone).lower(),
            "featlift.dtype": dtype_str(self.dtype),
            "featlift.config": json.dumps(config.to_dict(), separators=(",", ":")),
        }
        if config.backbone.name:
            meta["featlift.backbone"] = f"{config.backbone.source}:{config.backbone.name}"
        return meta


def load_target(
    model,
    *,
    with_backbone: bool,
    portable: bool,
    iters: int | None,
    dtype: torch.dtype,
    device: str | torch.device | None,
    options: LoadOptions | None = None,
) -> ExportTarget:
    """The :class:`ExportTarget` of ``model``: an :class:`~featlift.Upsampler`, an :class:`~featlift.UPLiFT`
    or a model reference (registered name, model directory, config file or object, Hub repo id) loaded
    as :func:`featlift.load_upsampler` does with ``options``. The model given is copied, never changed. ``portable`` picks the
    attender (:class:`~featlift.export._attend.ExportAttender`).

    Raises:
        ConfigError: ``with_backbone`` for a bare UPLiFT or a config without a backbone, a bad ``iters``,
            loading options given with a model object.
        UnknownModelError, CheckpointError, DownloadError: from loading a reference.
    """
    if options is None:
        options = LoadOptions()
    elif isinstance(model, (Upsampler, UPLiFT)) and options != LoadOptions():
        raise ConfigError(
            f"loading options ({options}) apply to a model reference (name, directory, config); this "
            f"{type(model).__name__} already has its weights"
        )
    owned = not isinstance(model, (Upsampler, UPLiFT))  # loaded here: no copy needed to change it
    if isinstance(model, Upsampler):
        backbone, uplift, default_iters, stats = model.backbone, model.uplift, model.iters, model.normalisation
    elif isinstance(model, UPLiFT):
        if with_backbone:
            raise ConfigError(
                "with_backbone needs a backbone, and a bare UPLiFT has none: pass a featlift.Upsampler "
                "(featlift.load_upsampler) or a model reference whose config names its backbone"
            )
        backbone, uplift, default_iters, stats = None, model, model.default_iters, None
    elif with_backbone:
        backbone_config = options.resolve(model).config.backbone
        if backbone_config.source is None or backbone_config.name is None:
            raise ConfigError(
                f"with_backbone: the config of {model!r} names no backbone (backbone.source / backbone.name); "
                "export the upsampler alone, without --with-backbone"
            )
        up = load_upsampler(model, device="cpu", options=options)
        backbone, uplift, default_iters, stats = up.backbone, up.uplift, up.iters, up.normalisation
    else:
        if options.backbone_weights is not None:
            raise ConfigError("backbone_weights (--backbone-weights) only applies with with_backbone (--with-backbone)")
        uplift = load_uplift(model, options)
        backbone, default_iters, stats = None, uplift.default_iters, None
    iters = default_iters if iters is None else iters
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 1:
        raise ConfigError(f"iters must be a positive integer, got {iters!r}")
    device = torch.device(device) if device is not None else next(uplift.parameters()).device

    uplift = _freeze(with_export_attenders(uplift, portable=portable), device, dtype)
    uplift.channels_last = False  # exported graphs have no memory layout; the custom op writes NCHW
    if with_backbone:
        backbone = _freeze(backbone if owned else copy.deepcopy(backbone), device, dtype)
        graph = PipelineGraph(backbone, uplift, iters, stats)
    else:
        graph = UpsamplerGraph(uplift, iters)
    graph = graph.to(device).eval()
    return ExportTarget(graph, uplift, iters, with_backbone, dtype, device)


def _freeze(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    return freeze(module.to(device=device, dtype=dtype))
