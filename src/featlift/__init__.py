"""featlift: pixel-dense features from any frozen vision backbone, with UPLiFT upsamplers."""

from __future__ import annotations

__version__ = "0.1.0"

from .builder import build_upsampler
from .config import UpliftConfig
from .errors import CheckpointError, ConfigError, UnknownModelError
from .modeling.uplift import UPLiFT
from .registry import list_upsamplers

__all__ = [
    "CheckpointError",
    "ConfigError",
    "UPLiFT",
    "UnknownModelError",
    "UpliftConfig",
    "__version__",
    "build_upsampler",
    "list_upsamplers",
]
