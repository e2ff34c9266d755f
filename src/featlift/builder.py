"""``build_upsampler`` (an UPLiFT network) and ``load_upsampler`` (backbone + UPLiFT, ready to call).

Both take any model reference :func:`featlift.lookup.resolve_model` accepts: a registered name, a model
directory, an authors' YAML, a featlift JSON, an :class:`UpliftConfig` or a Hugging Face Hub repo id.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .backbones import load_backbone
from .errors import CheckpointError
from .lookup import HubFile, ModelLike, ModelSource, resolve_model
from .modeling.uplift import UPLiFT
from .upsampler import Upsampler
from .weights import CONFIG_NAME, WEIGHTS_NAME, load_into, read_state_dict

__all__ = ["ConfigLike", "build_upsampler", "load_upsampler"]

logger = logging.getLogger(__name__)

ConfigLike = ModelLike


def _check_dtype(dtype: torch.dtype | None) -> None:
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")


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
    config: ConfigLike,
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
            :func:`featlift.lookup.resolve_model`).
        weights: a ``.safetensors`` file, or a ``.pth`` / ``.pt`` file (read with ``weights_only=True``),
            in the authors' key layout or featlift's. Defaults to the directory's ``model.safetensors``
            when ``config`` is a directory (random weights if it has none), or the repo's when ``config``
            is a Hub repo id; otherwise (a registered name, a config file or object) the model keeps its
            random initialisation: :func:`load_upsampler` fetches a registered name's published weights.
        device: where to put the model (default: CPU).
        dtype: floating-point dtype of the parameters (default: float32).
        revision: Hub branch, tag or commit of a repo id's files.
        cache_dir: Hugging Face cache directory (default: the standard HF cache).

    Raises:
        UnknownModelError: ``config`` names nothing that exists.
        ConfigError: the config file is invalid.
        CheckpointError: the weights are unreadable or do not match the config.
        DownloadError: a repo id's files are neither downloadable nor in the Hugging Face cache.
    """
    _check_dtype(dtype)
    source = resolve_model(config, revision=revision, cache_dir=cache_dir)
    if weights is None and source.bundles_weights:
        weights = source.weights_file()
    model = _build(source, weights)
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _uplift_weights(source: ModelSource, *, pretrained: bool) -> Path | None:
    """The UPLiFT weights file ``load_upsampler`` loads when no ``weights=`` is given."""
    if not pretrained:
        if source.weights is not None and not isinstance(source.weights, HubFile):
            logger.info("pretrained=False: %s is not loaded, UPLiFT keeps its random initialisation", source.weights)
        return None
    if source.kind == "directory" and source.weights is None:
        raise CheckpointError(
            f"{source.directory / WEIGHTS_NAME} is missing: the directory has a {CONFIG_NAME} but no weights. "
            "Pass pretrained=False for random UPLiFT weights, or weights=PATH for a weights file elsewhere."
        )
    if source.weights is None:
        raise CheckpointError(
            f"{source.description} holds an architecture but no UPLiFT weights, and pretrained=True asks for "
            "trained ones. Pass weights=PATH (the checkpoint trained with this config), or pretrained=False "
            "for random weights."
        )
    return source.weights_file()


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
) -> Upsampler:
    """A ready-to-use, frozen :class:`Upsampler`: backbone + UPLiFT with pre- and post-processing.

    Args:
        name: a registered name (see :func:`list_upsamplers`), a local directory or a Hugging Face Hub
            repo id holding featlift's ``config.json`` and ``model.safetensors``, an authors'-schema YAML
            file, a featlift ``config.json`` or an :class:`UpliftConfig` (see
            :func:`featlift.lookup.resolve_model`). A config file or object brings no UPLiFT weights:
            pass ``weights=``, or ``pretrained=False``.
        pretrained: True (default) loads the published weights: for a registered name the UPLiFT and
            backbone files from the Hub, for a directory or repo id its ``model.safetensors`` and the
            backbone's published weights, for a config file or object the backbone's published weights
            (its UPLiFT weights must come from ``weights=``). False gives random weights for everything not passed explicitly: ``weights=`` and
            ``backbone_weights=`` still load, but a directory's ``model.safetensors`` is ignored (it
            need not exist), and a repo id only fetches its ``config.json``.
        device: default CUDA when available, otherwise CPU.
        dtype: parameter dtype, e.g. ``torch.bfloat16`` (default float32).
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

    Raises:
        UnknownModelError: ``name`` is none of the kinds above.
        ConfigError: the config file is invalid (the message names the file).
        CheckpointError: a weights file is unreadable or does not match the config, or ``pretrained=True``
            without ``weights=`` for a directory without ``model.safetensors`` or a config file or object.
        DownloadError: a file is neither downloadable nor in the Hugging Face cache (or its cache entry
            is broken).
        ValueError: the config names no backbone (use :func:`build_upsampler` with your own features).
    """
    _check_dtype(dtype)
    source = resolve_model(name, revision=revision, cache_dir=cache_dir)
    if weights is None:
        weights = _uplift_weights(source, pretrained=pretrained)
    uplift = _build(source, weights)
    backbone = load_backbone(
        source.config.backbone, pretrained=pretrained, weights=backbone_weights, cache_dir=cache_dir
    )
    label = name if isinstance(name, str) else (os.fspath(name) if isinstance(name, os.PathLike) else None)
    up = Upsampler(backbone, uplift, iters=iters, name=label, tile=tile)
    up.to(device=torch.device(device) if device is not None else _default_device())
    if dtype is not None:
        up.to(dtype=dtype)
    return up
