"""``build_upsampler``: an UPLiFT model from a name, config file, config object or model directory."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .config import UpliftConfig
from .errors import CheckpointError, UnknownModelError
from .modeling.uplift import UPLiFT
from .registry import get_variant, list_upsamplers
from .upsampler import Upsampler
from .weights import CONFIG_NAME, WEIGHTS_NAME, load_into, read_config_json, read_pretrained_dir, read_state_dict

__all__ = ["build_upsampler", "load_upsampler", "resolve_config"]

logger = logging.getLogger(__name__)

ConfigLike = str | os.PathLike | UpliftConfig


def resolve_config(config: ConfigLike) -> tuple[UpliftConfig, Path | None]:
    """The architecture that ``config`` names, and the weights file it implies (a model directory's).

    ``config`` is a registered name (see :func:`featlift.list_upsamplers`), a path to an authors'-schema
    YAML file or a featlift ``config.json``, a directory with ``config.json`` and ``model.safetensors``,
    or an :class:`UpliftConfig`.
    """
    if isinstance(config, UpliftConfig):
        return config, None
    if not isinstance(config, (str, os.PathLike)):
        raise TypeError(f"config must be a name, a path or an UpliftConfig, got {type(config).__name__}")
    text = os.fspath(config)
    if text in list_upsamplers():
        return get_variant(text).config, None
    path = Path(text).expanduser()
    if path.is_dir():
        return read_pretrained_dir(path)
    if path.is_file():
        if path.suffix.lower() in (".yaml", ".yml"):
            return UpliftConfig.from_yaml(path), None
        if path.suffix.lower() == ".json":
            return read_config_json(path), None
        raise UnknownModelError(
            f"{path} is not a config file: expected .yaml/.yml (authors' schema) or .json (featlift)"
        )
    raise UnknownModelError(
        f"{text!r} is neither a registered upsampler nor an existing file or directory; "
        f"registered names: {', '.join(list_upsamplers())}"
    )


def build_upsampler(
    config: ConfigLike,
    *,
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> UPLiFT:
    """Build an :class:`UPLiFT` in eval mode and load its weights.

    Args:
        config: a registered name (``"dinov2_s14"``), a path to an authors'-schema YAML file or a
            featlift ``config.json``, an :class:`UpliftConfig`, or a directory holding ``config.json``
            and ``model.safetensors``.
        weights: a ``.safetensors`` file, or a ``.pth`` / ``.pt`` file (read with ``weights_only=True``),
            in the authors' key layout or featlift's. Defaults to the directory's ``model.safetensors``
            when ``config`` is a directory; otherwise the model keeps its random initialisation.
        device: where to put the model (default: CPU).
        dtype: floating-point dtype of the parameters (default: float32).

    Raises:
        UnknownModelError: ``config`` names nothing that exists.
        ConfigError: the config file is invalid.
        CheckpointError: the weights are unreadable or do not match the config.
    """
    cfg, implied_weights = resolve_config(config)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    model = UPLiFT(cfg)
    source = weights if weights is not None else implied_weights
    if source is not None:
        load_into(model, read_state_dict(source), source=str(source))
        logger.info("loaded UPLiFT weights from %s", source)
    else:
        logger.info("no weights given: UPLiFT keeps its random initialisation")
    model.eval()
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_upsampler(
    name: str | os.PathLike,
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
            repo id holding featlift's ``config.json`` and ``model.safetensors``.
        pretrained: True (default) loads the published weights: for a registered name the UPLiFT and
            backbone files from the Hub, for a directory or repo id its ``model.safetensors`` and the
            backbone's published weights. False gives random weights for everything not passed
            explicitly: ``weights=`` and ``backbone_weights=`` still load, but a directory's
            ``model.safetensors`` is ignored (it need not exist), and a repo id only fetches its
            ``config.json``.
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
        UnknownModelError: ``name`` is not a registered name, a directory or a repo id.
        ConfigError: the ``config.json`` is invalid (the message names the file).
        CheckpointError: a weights file is unreadable or does not match the config, or a directory has no
            ``model.safetensors`` while ``pretrained=True`` and no ``weights=`` is given.
        DownloadError: a file is neither downloadable nor in the Hugging Face cache (or its cache entry
            is broken).
    """
    from . import hub

    text = os.fspath(name)
    local_dir = None
    dir_weights = None
    hub_file = None
    if text in list_upsamplers():
        variant = get_variant(text)
        cfg = variant.config
        hub_file = (variant.hub_repo, variant.hub_filename)
    elif Path(text).expanduser().is_dir():
        local_dir = Path(text).expanduser()
        cfg, dir_weights = read_pretrained_dir(local_dir)
    elif hub.is_repo_id(text):
        if pretrained and weights is None:
            local_dir = hub.download_pretrained_dir(text, revision=revision, cache_dir=cache_dir)
            cfg, dir_weights = read_pretrained_dir(local_dir)
        else:
            config_file = hub.download(text, CONFIG_NAME, revision=revision, cache_dir=cache_dir)
            cfg = read_config_json(config_file)
    else:
        raise UnknownModelError(
            f"unknown upsampler {text!r}: not a registered name, a local directory or a Hub repo id; "
            f"registered names: {', '.join(list_upsamplers())}"
        )

    if weights is None and pretrained:
        if hub_file is not None:
            weights = hub.download(*hub_file, revision=revision, cache_dir=cache_dir)
        elif local_dir is not None:
            if dir_weights is None:
                raise CheckpointError(
                    f"{local_dir / WEIGHTS_NAME} is missing: the directory has a {CONFIG_NAME} but no weights. "
                    "Pass pretrained=False for random UPLiFT weights, or weights=PATH for a weights file "
                    "elsewhere."
                )
            weights = dir_weights
    elif weights is None and dir_weights is not None:
        logger.info("pretrained=False: %s is not loaded, UPLiFT keeps its random initialisation", dir_weights)
    uplift = build_upsampler(cfg, weights=weights)

    backbone = _load_backbone(cfg, pretrained=pretrained, backbone_weights=backbone_weights, cache_dir=cache_dir)
    up = Upsampler(backbone, uplift, iters=iters, name=text, tile=tile)
    up.to(device=torch.device(device) if device is not None else _default_device())
    if dtype is not None:
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        up.to(dtype=dtype)
    return up


def _load_backbone(cfg: UpliftConfig, *, pretrained: bool, backbone_weights, cache_dir):
    from . import hub
    from .backbones import create_backbone

    bb = cfg.backbone
    if bb.source is None or bb.name is None:
        raise ValueError(
            "this upsampler's config names no backbone (backbone.source / backbone.name); run your backbone "
            "yourself and call featlift.build_upsampler(...)(image, features)"
        )
    if bb.source == "timm":
        if backbone_weights is None and pretrained:
            import timm

            pcfg = timm.models.get_pretrained_cfg(bb.name)
            if pcfg is None or not pcfg.hf_hub_id:
                raise ValueError(f"timm has no Hub weights for {bb.name!r}; pass backbone_weights=PATH")
            backbone_weights = hub.download(
                pcfg.hf_hub_id, "model.safetensors", cache_dir=cache_dir, local_arg="backbone_weights"
            )
        return create_backbone("timm", bb.name, weights=backbone_weights)
    if backbone_weights is None and pretrained:
        backbone_weights = hub.download_diffusers_vae(bb.name, cache_dir=cache_dir)
    return create_backbone("diffusers", bb.name, vae_dir=backbone_weights)
