"""featlift: pixel-dense features from any frozen vision backbone, with UPLiFT upsamplers."""

from __future__ import annotations

from . import errors as _errors
from ._version import __version__
from .builder import build_upsampler, load_upsampler
from .config import UpliftConfig
from .errors import *  # noqa: F403  (every exception class: featlift.errors.__all__)
from .modeling.uplift import UPLiFT
from .registry import list_upsamplers
from .upsampler import Upsampler

__all__ = [
    *_errors.__all__,
    "UPLiFT",
    "UpliftConfig",
    "Upsampler",
    "__version__",
    "build_upsampler",
    "list_upsamplers",
    "load_upsampler",
]
