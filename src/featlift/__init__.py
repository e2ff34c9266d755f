"""featlift: pixel-dense features from any frozen vision backbone, with UPLiFT upsamplers."""

from __future__ import annotations

from ._version import __version__
from .builder import build_upsampler, load_upsampler
from .config import UpliftConfig
from .errors import (
    CheckpointError,
    ConfigError,
    DownloadError,
    FeatliftError,
    InsufficientMemoryError,
    UnknownModelError,
    UploadError,
)
from .modeling.uplift import UPLiFT
from .registry import list_upsamplers
from .upsampler import Upsampler

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DownloadError",
    "FeatliftError",
    "InsufficientMemoryError",
    "UPLiFT",
    "UnknownModelError",
    "UpliftConfig",
    "UploadError",
    "Upsampler",
    "__version__",
    "build_upsampler",
    "list_upsamplers",
    "load_upsampler",
]
