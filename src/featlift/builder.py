"""``build_upsampler``: an UPLiFT model from a name, config file, config object or model directory."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .config import UpliftConfig
from .errors import UnknownModelError
from .modeling.uplift import UPLiFT
from .registry import get_variant, list_upsamplers
from .weights import load_into, read_pretrained_dir, read_state_dict

__all__ = ["build_upsampler", "resolve_config"]

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
            return UpliftConfig.from_json(path), None
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
