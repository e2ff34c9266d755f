"""``build_upsampler`` (an UPLiFT network) and ``load_upsampler`` (backbone + UPLiFT, ready to call).

Both take any model reference :func:`featlift._lookup.resolve_model` accepts: a registered name, a model
directory, an authors' YAML, a featlift JSON, an :class:`UpliftConfig` or a Hugging Face Hub repo id.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ._lookup import HubFile, ModelLike, ModelSource, resolve_model
from ._upsampler import Upsampler
from .backbones import Backbone, ModuleBackbone, UserModule, create_backbone, load_backbone
from .config import BackboneConfig
from .errors import CheckpointError, ConfigError
from .modeling.uplift import UPLiFT
from .weights import CONFIG_NAME, WEIGHTS_NAME, load_into, read_state_dict

__all__ = ["LoadOptions", "build_upsampler", "load_uplift", "load_upsampler"]

logger = logging.getLogger(__name__)


# The dtypes a model computes in (convolutions and the attender run in each, on the CPU and on CUDA).
COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _check_dtype(dtype: torch.dtype | None) -> None:
    """A TypeError naming the choices unless ``dtype`` is None or one a model computes in (a float8 type,
    for one, would only fail later, deep in the first convolution)."""
    if dtype is not None and (not isinstance(dtype, torch.dtype) or dtype not in COMPUTE_DTYPES):
        names = ", ".join(str(d) for d in COMPUTE_DTYPES)
        raise TypeError(f"dtype must be a floating-point dtype a model computes in, one of {names}; got {dtype!r}")


def _build(source: ModelSource, weights: str | os.PathLike | None) -> UPLiFT:
    """An UPLiFT in eval mode for ``source.config`` with ``weights`` loaded (None: random weights)."""
    model = UPLiFT(source.config)
    if weights is not None:
        load_into(model, read_state_dict(weights), source=str(weights))
        logger.info("loaded UPLiFT weights from %s (%s)", weights, source.description)
    else:
        logger.info("no weights given: UPLiFT keeps its random initialisation (%s)", source.description)
    return model.eval()


def build_upsampler(
    config: ModelLike,
    *,
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> UPLiFT:
    """Build an :class:`UPLiFT` in eval mode and load its weights.

    Args:
        config: a registered name (``"dinov2_s14"``), a path to an authors'-schema YAML file or a
            featlift ``config.json``, an :class:`UpliftConfig`, a directory holding ``config.json`` and
            ``model.safetensors``, or a Hugging Face Hub repo id holding the same two files (see
            :func:`featlift._lookup.resolve_model`).
        weights: a ``.safetensors`` file, or a ``.pth`` / ``.pt`` file (read with ``weights_only=True``),
            in the authors' key layout or featlift's. Defaults to the directory's ``model.safetensors``
            when ``config`` is a directory (random weights if it has none), or the repo's when ``config``
            is a Hub repo id; otherwise (a registered name, a config file or object) the model keeps its
            random initialisation: :func:`load_upsampler` fetches a registered name's published weights.
        device: where to put the model (default: CPU).
        dtype: dtype of the parameters and the computation: float32 (default), bfloat16, float16 or float64.
        revision: Hub branch, tag or commit of a repo id's files.
        cache_dir: Hugging Face cache directory (default: the standard HF cache).

    Raises:
        UnknownModelError: ``config`` names nothing that exists.
        ConfigError: the config file is invalid.
        CheckpointError: the weights are unreadable or do not match the config.
        DownloadError: a repo id's files are neither downloadable nor in the Hugging Face cache.
        TypeError: ``dtype`` is not one a model computes in.
    """
    _check_dtype(dtype)
    options = LoadOptions(weights=weights, revision=revision, cache_dir=cache_dir)
    source = options.resolve(config)
    # Only weights that travel with the config are loaded by default: a registered name stays random here.
    bundled = source.bundles_weights and source.weights is not None
    model = load_uplift(source, dataclasses.replace(options, pretrained=bundled))
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class LoadOptions:
    """Where a model reference's weights come from: one value that every loading path takes
    (:func:`load_upsampler`, :func:`load_uplift`, :func:`featlift.export.export_onnx` and
    :func:`~featlift.export.export_pt2`, the command line's model arguments).

    ``LoadOptions()`` is the default: the published weights, downloaded or found in the standard Hugging
    Face cache. Its fields are :func:`load_upsampler`'s keywords of the same names.
    """

    # True: the published (or the directory's / repo's) weights. False: random weights for everything
    # not passed explicitly below (tests, timing); a directory's model.safetensors need not exist.
    pretrained: bool = True
    # A local UPLiFT weights file (.safetensors, or .pth/.pt read with weights_only) instead of the
    # download or the directory's file; the authors' key layout or featlift's.
    weights: str | os.PathLike | None = None
    # Local backbone weights: a timm or open_clip .safetensors/.pth file, a torch.hub module's state dict, or
    # a folder for transformers models and the VAE (config.json + safetensors weights).
    backbone_weights: str | os.PathLike | None = None
    # Hugging Face Hub branch, tag or commit pinning a repo id's UPLiFT files.
    revision: str | None = None
    # The Hugging Face cache directory (default: the standard one, HF_HOME / HF_HUB_CACHE).
    cache_dir: str | os.PathLike | None = None
    # Let a torch.hub backbone from GitHub run its code without asking (default: torch.hub asks once).
    trust_repo: bool = False

    def __post_init__(self) -> None:
        for name in ("pretrained", "trust_repo"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("weights", "backbone_weights", "cache_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise TypeError(f"{name} must be a path (str or os.PathLike) or None, got {type(value).__name__}")
        if self.revision is not None and not isinstance(self.revision, str):
            raise TypeError(f"revision must be a branch, tag or commit name (str) or None, got {self.revision!r}")

    def resolve(self, reference: ModelLike) -> ModelSource:
        """``reference`` resolved with these options' Hub revision and cache (see :func:`resolve_model`)."""
        return resolve_model(reference, revision=self.revision, cache_dir=self.cache_dir)


def _uplift_weights(source: ModelSource, options: LoadOptions) -> str | os.PathLike | Path | None:
    """The UPLiFT weights file to load for ``source``: ``options.weights`` when given, else the source's
    own file when ``options.pretrained``, else None (random weights)."""
    if options.weights is not None:
        return options.weights
    if not options.pretrained:
        if source.weights is not None and not isinstance(source.weights, HubFile):
            logger.info("pretrained=False: %s is not loaded, UPLiFT keeps its random initialisation", source.weights)
        return None
    if source.kind == "directory" and source.weights is None:
        raise CheckpointError(
            f"{source.directory / WEIGHTS_NAME} is missing: the directory has a {CONFIG_NAME} but no weights. "
            "Pass pretrained=False (--no-pretrained) for random UPLiFT weights, or weights=PATH (--weights) "
            "for a weights file elsewhere."
        )
    if source.weights is None:
        raise CheckpointError(
            f"{source.description} holds an architecture but no UPLiFT weights, and pretrained=True asks for "
            "trained ones. Pass weights=PATH (--weights; the checkpoint trained with this config), or "
            "pretrained=False (--no-pretrained) for random weights."
        )
    return source.weights_file()


def load_uplift(reference: ModelLike | ModelSource, options: LoadOptions | None = None) -> UPLiFT:
    """The :class:`UPLiFT` network of a model reference (no backbone), in eval mode on the CPU, with the
    weights ``options`` name: the one place a reference's UPLiFT weights are chosen and loaded
    (:func:`load_upsampler` and the exporters use it).

    Raises:
        UnknownModelError, ConfigError, DownloadError: resolving ``reference``.
        CheckpointError: the weights are unreadable or do not match, or ``pretrained=True`` for a
            reference that brings no weights and no ``weights=`` was given.
    """
    options = LoadOptions() if options is None else options
    source = reference if isinstance(reference, ModelSource) else options.resolve(reference)
    return _build(source, _uplift_weights(source, options))


def load_upsampler(
    name: ModelLike,
    *,
    pretrained: bool = True,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    iters: int | None = None,
    weights: str | os.PathLike | None = None,
    backbone_weights: str | os.PathLike | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    tile: int | tuple[int, int] | None = None,
    trust_repo: bool = False,
    backbone: Backbone | UserModule | None = None,
    options: LoadOptions | None = None,
) -> Upsampler:
    """A ready-to-use, frozen :class:`Upsampler`: backbone + UPLiFT with pre- and post-processing.

    Args:
        name: a registered name (see :func:`list_upsamplers`), a local directory or a Hugging Face Hub
            repo id holding featlift's ``config.json`` and ``model.safetensors``, an authors'-schema YAML
            file, a featlift ``config.json`` or an :class:`UpliftConfig` (see
            :func:`featlift._lookup.resolve_model`). A config file or object brings no UPLiFT weights:
            pass ``weights=``, or ``pretrained=False``.
        pretrained: True (default) loads the published weights: for a registered name the UPLiFT and
            backbone files from the Hub, for a directory or repo id its ``model.safetensors`` and the
            backbone's published weights, for a config file or object the backbone's published weights
            (its UPLiFT weights must come from ``weights=``). False gives random weights for everything not passed explicitly: ``weights=`` and
            ``backbone_weights=`` still load, but a directory's ``model.safetensors`` is ignored (it
            need not exist), and a repo id only fetches its ``config.json``.
        device: default CUDA when available, otherwise CPU.
        dtype: the dtype of the parameters and of every computation, ``torch.float32`` (default),
            ``torch.bfloat16`` (half the memory; fast on CPUs with AVX512-BF16 or AMX, see
            :func:`featlift.cpu_supports_bf16`), ``torch.float16`` (meant for GPUs: on a CPU without
            AVX512-FP16 it ran about 5x slower than float32) or ``torch.float64``.
        iters: upsampling iterations (default: pixel density for the variant).
        weights: local UPLiFT weights file instead of the download or the directory's file (air-gapped
            machines, other checkpoints).
        backbone_weights: local backbone weights: a timm ``.safetensors``/``.pth`` file (read with
            ``weights_only=True``), or for the VAE a folder with ``config.json`` and
            ``diffusion_pytorch_model.safetensors``.
        revision: Hub branch, tag or commit pinning the UPLiFT files.
        cache_dir: Hugging Face cache directory (default: the standard HF cache).
        tile: default tile size, in backbone cells, for exact tiled upsampling of large images
            (``None``: whole images); see :class:`Upsampler`.
        trust_repo: let a torch.hub backbone from GitHub run its code without asking.
        backbone: the backbone to use instead of building the one the config names: your own module
            (a :class:`~featlift.backbones.UserModule`, required for an upsampler trained for one; its
            name must be the one the config records) or any :class:`~featlift.backbones.Backbone`. Its
            stride, channels and statistics must fit the config.
        options: ``pretrained``, ``weights``, ``backbone_weights``, ``revision``, ``cache_dir`` and
            ``trust_repo`` as one :class:`LoadOptions` value, instead of those keywords (not together
            with them).

    Raises:
        UnknownModelError: ``name`` is none of the kinds above.
        ConfigError: the config file is invalid (the message names the file).
        CheckpointError: a weights file is unreadable or does not match the config, or ``pretrained=True``
            without ``weights=`` for a directory without ``model.safetensors`` or a config file or object.
        DownloadError: a file is neither downloadable nor in the Hugging Face cache (or its cache entry
            is broken).
        ValueError: the config names no backbone (use :func:`build_upsampler` with your own features),
            or ``backbone`` does not fit it.
        ConfigError: the config records your own module and ``backbone`` is not given (the message asks for
            it by name), or ``backbone`` is another module than the one recorded.
        TypeError: ``dtype`` is not one a model computes in.
    """
    _check_dtype(dtype)
    given = LoadOptions(pretrained, weights, backbone_weights, revision, cache_dir, trust_repo)
    if options is None:
        options = given
    elif given != LoadOptions():
        raise TypeError("pass the loading keywords (pretrained, weights, ...) or options=LoadOptions(...), not both")
    source = options.resolve(name)
    uplift = load_uplift(source, options)
    if backbone is None:
        backbone = load_backbone(
            source.config.backbone,
            pretrained=options.pretrained,
            weights=options.backbone_weights,
            cache_dir=options.cache_dir,
            trust_repo=options.trust_repo,
        )
    else:
        backbone = _given_backbone(backbone, source.config.backbone, options)
    label = name if isinstance(name, str) else (os.fspath(name) if isinstance(name, os.PathLike) else None)
    up = Upsampler(backbone, uplift, iters=iters, name=label, tile=tile)
    up.to(device=torch.device(device) if device is not None else _default_device())
    if dtype is not None:
        up.to(dtype=dtype)
    return up


def _given_backbone(backbone: Backbone | UserModule, config: BackboneConfig, options: LoadOptions) -> Backbone:
    """The backbone passed to :func:`load_upsampler`, checked against the config's backbone section: the
    module a config records by name must be that module; stride and channels must agree (the statistics
    are checked by the :class:`Upsampler`)."""
    if not isinstance(backbone, (Backbone, UserModule)):
        raise TypeError(f"backbone must be a featlift.backbones.UserModule or Backbone, got {type(backbone).__name__}")
    if options.backbone_weights is not None:
        raise ConfigError(
            "backbone_weights applies when featlift builds the backbone; the backbone given brings its own"
        )
    if config.source == ModuleBackbone.source and backbone.name != config.name:
        raise ConfigError(
            f"backbone: this upsampler was trained for your module {config.name!r}, but the module given is named "
            f"{backbone.name!r}. Fix: pass the module it was trained for (UserModule(name={config.name!r}, ...))"
        )
    built = create_backbone(backbone)
    if (built.patch, built.channels) != (config.patch, config.channels):
        raise ConfigError(
            f"backbone: {built.name!r} gives {built.channels} channels at stride {built.patch}, but the upsampler "
            f"was trained for {config.channels} channels at stride {config.patch}"
        )
    return built
