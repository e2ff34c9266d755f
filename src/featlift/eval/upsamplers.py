"""What ``--upsampler`` names, as one interface: a :class:`FeatureSource` turns images into features at
the images' own size.

``make_source(spec, ...)`` accepts:

- a featlift model: a registered name, a model directory or a Hub repo id (anything
  :func:`featlift.load_upsampler` takes), or a loaded :class:`featlift.Upsampler` (one trained for your
  own module, loaded with ``backbone=``); it brings its own backbone;
- ``"bilinear"``, ``"nearest"`` or ``"bicubic"``: the backbone named by ``backbone`` (``SOURCE:NAME`` as
  :func:`featlift.backbones.create_backbone` reads it, a bare timm name, or a
  :class:`~featlift.backbones.UserModule`), its coarse features resized to the image size;
- ``"hub:REPO:ENTRY"``: a torch.hub model (``REPO`` a local checkout or ``owner/name`` on GitHub)
  called as ``model(image, lowres, output_size)``, the convention of AnyUp, JAFAR and NAF, with the
  backbone named by ``backbone``. ``image`` is the guidance image normalised with ImageNet's statistics
  whatever the backbone, as those models were trained (the backbone gets its own statistics). A GitHub
  repository runs its code only once trusted: ``trust_repo=True`` (``--trust-repo``) trusts it, otherwise
  torch.hub asks (``trust_repo="check"``: repositories trusted before are not asked again);
- any callable ``f(image, lowres, output_size)`` (the Python API), again with ``backbone``; ``image`` is
  normalised for the backbone unless ``guidance="imagenet"``.

Images enter as float32 [B, 3, S, S] in [0, 1] (the protocol's crops); sides that are not a multiple
of the backbone's patch are resized to the nearest multiple before the backbone, as
:class:`featlift.Upsampler` does.

``cache`` (a :class:`featlift._feature_cache.FeatureCache`) reads the backbone's features from disk where
it has them. ``amp`` on CUDA runs in bfloat16: featlift models are loaded in bfloat16, and the backbone
and the upsampling of the other kinds run under bf16 autocast; features leave as float32 either way.
``dtype`` sets the dtype featlift models are loaded in on any device (:func:`featlift_dtype`); each
source's :attr:`~FeatureSource.compute_dtype` says what it computed in, for the report.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._builder import LoadOptions
from .._feature_cache import FeatureCache
from .._images import resize_to_patch_multiple
from .._tensors import dtype_str
from .._upsampler import Upsampler
from ..backbones import Backbone, UserModule, create_backbone
from ..backbones._normalisation import Stats, normalise
from ..config import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["GUIDANCE", "INTERPOLATIONS", "FeatureSource", "featlift_dtype", "make_source"]

logger = logging.getLogger(__name__)

INTERPOLATIONS = ("bilinear", "nearest", "bicubic")
GUIDANCE = ("backbone", "imagenet")

UpsampleFn = Callable[[Tensor, Tensor, tuple[int, int]], Tensor]


class FeatureSource:
    """Pixel-dense features for a batch of images, from some upsampler.

    :meth:`features` maps images [B, 3, S, S] in [0, 1] to features [B, C, S, S] (ordinary tensors that
    may feed a trainable probe); :meth:`predict` applies a per-pixel ``head`` (the probe) and returns
    [B, K, S, S]; sources that can run tiled apply it per tile.
    """

    name: str
    channels: int
    device: torch.device
    # What the features are computed in, as the report names it: "float32", "bfloat16", "float16", or
    # "bfloat16-autocast" (a backbone and upsampler under bf16 autocast on CUDA).
    compute_dtype: str = "float32"

    def features(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def predict(self, images: Tensor, head: nn.Module) -> Tensor:
        return head(self.features(images))


class _FeatliftSource(FeatureSource):
    """A featlift :class:`~featlift.Upsampler` (its own backbone); ``tile`` runs the probe per tile."""

    def __init__(self, name: str, upsampler, tile: int | None, cache: FeatureCache | None = None) -> None:
        self.name = name
        self.up = upsampler
        self.channels = upsampler.uplift.channels
        self.device = upsampler.device
        self.tile = tile
        self.cache = cache
        self.compute_dtype = dtype_str(upsampler.dtype)

    def _lowres(self, images: Tensor) -> Tensor | None:
        if self.cache is None:
            return None
        with torch.inference_mode():
            normalised = self.up.normalize(resize_to_patch_multiple(images, self.up.patch))
            return self.cache.lowres(self.up.backbone, normalised)

    def features(self, images: Tensor) -> Tensor:
        images = images.to(self.device)
        out = self.up(images, tile=self.tile, features=self._lowres(images))
        return out.float().clone()  # out of inference mode, so a probe can train on it

    def predict(self, images: Tensor, head: nn.Module) -> Tensor:
        images = images.to(self.device)
        with torch.inference_mode():
            # a bf16 model (amp) hands the float32 probe float32 tiles
            out = self.up(images, tile=self.tile, head=lambda t: head(t.float()), features=self._lowres(images))
        return out.float().clone()


class _BackboneSource(FeatureSource):
    """A backbone's coarse features, brought to the image size by ``upsample(image, lowres, size)``."""

    def __init__(
        self,
        name: str,
        backbone: Backbone,
        upsample: UpsampleFn,
        device: torch.device,
        *,
        keeps_channels: bool,
        cache: FeatureCache | None = None,
        amp: bool = False,
        guidance: Stats | None = None,
    ) -> None:
        self.name = name
        self.guidance = guidance  # the guidance image's statistics; None: the backbone's
        self.backbone = backbone.to(device).eval()
        self.upsample = upsample
        self.device = device
        self.channels = backbone.channels
        self.cache = None  # the width probe below must not leave an entry behind
        self.amp = amp and device.type == "cuda"
        self.compute_dtype = "bfloat16-autocast" if self.amp else "float32"
        if not keeps_channels:  # a hub model or callable may change the width: ask it, on a two-patch image
            side = 2 * backbone.patch
            self.channels = int(self.features(torch.zeros(1, 3, side, side)).shape[1])
        self.cache = cache

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        images = images.to(self.device, torch.float32)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            resized = resize_to_patch_multiple(images, self.backbone.patch)
            normalised = self.backbone.normalise(resized)
            if self.cache is None:
                lowres = self.backbone(normalised)
            else:
                variant = "bf16-autocast" if self.amp else ""
                lowres = self.cache.lowres(self.backbone, normalised, variant=variant)
            guide = normalised if self.guidance is None else normalise(resized, self.guidance)
            out = self.upsample(guide, lowres, tuple(images.shape[-2:]))
        if not isinstance(out, Tensor) or out.shape[0] != images.shape[0] or out.shape[-2:] != images.shape[-2:]:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"upsampler {self.name!r} returned {got} for images {tuple(images.shape)}; it must be called as "
                "f(image, lowres, (H, W)) and return features [B, C, H, W] at the requested size"
            )
        return out.float()


def _interpolation(mode: str) -> UpsampleFn:
    corners = {} if mode == "nearest" else {"align_corners": False}  # nearest takes no align_corners

    def upsample(image: Tensor, lowres: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(lowres, size=size, mode=mode, **corners)

    return upsample


def _hub_model(spec: str, device: torch.device, trust_repo: bool) -> UpsampleFn:
    parts = spec.split(":")
    if len(parts) < 3 or not parts[-1] or not ":".join(parts[1:-1]):
        raise ValueError(f"{spec!r}: expected hub:REPO:ENTRY, e.g. hub:wimmerth/anyup:anyup or hub:./my-repo:model")
    repo, entry = ":".join(parts[1:-1]), parts[-1]
    local = Path(repo).expanduser()
    source = "local" if local.is_dir() else "github"
    trust = True if trust_repo else "check"  # "check": torch.hub asks before running an untrusted repository
    model = torch.hub.load(str(local) if source == "local" else repo, entry, source=source, trust_repo=trust)
    if isinstance(model, nn.Module):
        model = model.to(device).eval()
    return model


def featlift_dtype(
    dtype: torch.dtype | None = None, *, amp: bool = True, device: str | torch.device = "cpu"
) -> torch.dtype:
    """The dtype :func:`make_source` loads a featlift model in: ``dtype`` when given, else bfloat16 on CUDA
    with ``amp``, else float32."""
    if dtype is not None:
        return dtype
    return torch.bfloat16 if amp and torch.device(device).type == "cuda" else torch.float32


def make_source(
    spec: str | Upsampler | UpsampleFn,
    *,
    backbone: str | UserModule | Backbone | None = None,
    stride: int | None = None,
    options: LoadOptions | None = None,
    device: str | torch.device = "cpu",
    tile: int | None = None,
    name: str | None = None,
    feature_cache: FeatureCache | str | os.PathLike | None = None,
    amp: bool = True,
    dtype: torch.dtype | None = None,
    trust_repo: bool = False,
    guidance: str = "backbone",
) -> FeatureSource:
    """The :class:`FeatureSource` that ``spec`` names (see the module docstring).

    Args:
        spec: a featlift model (or a loaded :class:`~featlift.Upsampler`), ``bilinear``/``nearest``/``bicubic``, ``hub:REPO:ENTRY``, or a callable
            ``f(image, lowres, (H, W))`` (``image`` normalised for the backbone, ``lowres`` its features).
        backbone: the backbone for interpolation, hub and callable specs: ``SOURCE:NAME`` (``timm``,
            ``open_clip``, ``transformers``, ``hub``, ``diffusers``; a bare name is timm's), a
            :class:`~featlift.backbones.UserModule` or a :class:`~featlift.backbones.Backbone`.
        stride: the output stride of a convolutional or hierarchical timm backbone (None: its deepest).
        options: where the weights come from (:class:`featlift.LoadOptions`): ``backbone_weights`` (local
            weights for the backbone, offline use), ``pretrained=False`` (random weights for whatever is not
            passed explicitly: tests, smoke runs), and for featlift models ``revision`` and ``cache_dir``
            (the Hugging Face cache).
        device: where everything runs.
        tile: tile size (backbone cells) for featlift models: the probe then runs per tile, so large
            images never hold full pixel-dense features.
        name: the label in tables and outputs (default: ``spec``, or the callable's name).
        feature_cache: a :class:`~featlift._feature_cache.FeatureCache` or its folder: backbone features
            are read from disk where cached (keyed on the backbone's weights and its exact input).
        amp: on CUDA, compute in bfloat16 (ignored on the CPU).
        dtype: featlift models only: the compute dtype (e.g. ``torch.bfloat16`` on a CPU); default float32,
            or bfloat16 on CUDA with ``amp``. A loaded :class:`~featlift.Upsampler` keeps its own (a
            different one is logged as a warning).
        trust_repo: ``hub:`` specs and ``hub:`` backbones from GitHub: run the repository's code without asking
            (also when ``options.trust_repo`` says so).
        guidance: callables only: the guidance image's statistics, ``"backbone"`` (default) or
            ``"imagenet"``. ``hub:`` models always get ImageNet's, as AnyUp, JAFAR and NAF expect.

    Raises:
        ValueError: a spec that needs ``backbone`` without one, or a malformed ``hub:`` spec.
        UnknownModelError, DownloadError, CheckpointError: from loading the model or backbone.
    """
    options = LoadOptions() if options is None else options
    device = torch.device(device)
    cache = feature_cache
    if cache is not None and not isinstance(cache, FeatureCache):
        cache = FeatureCache(cache)
    half = amp and device.type == "cuda"
    if guidance not in GUIDANCE:
        raise ValueError(f"guidance must be one of {GUIDANCE}, got {guidance!r}")
    imagenet = (IMAGENET_MEAN, IMAGENET_STD)
    if isinstance(spec, Upsampler):
        label = name or spec.name or type(spec.backbone).__name__
        if dtype is not None and dtype != spec.dtype:
            logger.warning(
                "upsampler %r computes in %s, as it was loaded; dtype=%s applies to the models eval loads by name "
                "(load this one with load_upsampler(..., dtype=%s) to change it)",
                label, spec.dtype, dtype, dtype,
            )  # fmt: skip
        return _FeatliftSource(label, spec, tile, cache)
    if callable(spec) and not isinstance(spec, str):
        label = name or getattr(spec, "__name__", type(spec).__name__)
        source = _backbone(backbone, stride, options, label, trust_repo)
        stats = imagenet if guidance == "imagenet" else None
        return _BackboneSource(label, source, spec, device, keeps_channels=False, cache=cache, amp=half, guidance=stats)
    if not isinstance(spec, str) or not spec:
        raise TypeError(f"an upsampler spec is a name or a callable, got {spec!r}")
    label = name or spec
    if spec in INTERPOLATIONS:
        upsample = _interpolation(spec)
    elif spec.startswith("hub:"):
        upsample = _hub_model(spec, device, trust_repo)
    else:
        from .._builder import load_upsampler

        up = load_upsampler(spec, device=device, dtype=featlift_dtype(dtype, amp=amp, device=device), options=options)
        return _FeatliftSource(label, up, tile, cache)
    source = _backbone(backbone, stride, options, label, trust_repo)
    keeps = spec in INTERPOLATIONS
    stats = imagenet if spec.startswith("hub:") else None
    return _BackboneSource(label, source, upsample, device, keeps_channels=keeps, cache=cache, amp=half, guidance=stats)


def _backbone(
    backbone: str | UserModule | Backbone | None, stride: int | None, options: LoadOptions, label: str, trust: bool
) -> Backbone:
    if backbone is None:
        raise ValueError(
            f"upsampler {label!r} upsamples a backbone's features: name the backbone with --backbone (SOURCE:NAME, "
            "e.g. timm:vit_small_patch14_dinov2.lvd142m or open_clip:ViT-B-16/openai; --backbone-weights FILE "
            "for offline use)"
        )
    return create_backbone(
        backbone,
        stride=stride,
        pretrained=options.pretrained,
        weights=options.backbone_weights,
        cache_dir=options.cache_dir,
        trust_repo=trust or options.trust_repo,
    )
