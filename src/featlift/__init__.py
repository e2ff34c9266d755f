"""featlift: pixel-dense features from any frozen vision backbone, with UPLiFT upsamplers.

The public names below are imported when first used, so ``import featlift`` (and the command line's
``--help``) does not wait for torch until a model is touched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import errors as _errors
from ._lazy import lazy_attributes
from ._version import __version__
from .errors import *  # noqa: F403  (every exception class: featlift.errors.__all__)

if TYPE_CHECKING:
    from ._builder import LoadOptions, build_upsampler, load_upsampler
    from ._registry import list_upsamplers
    from ._upsampler import Upsampler
    from .config import UpliftConfig
    from .hardware import cpu_supports_bf16
    from .modeling.uplift import UPLiFT

__all__ = [
    *_errors.__all__,
    "LoadOptions",
    "UPLiFT",
    "UpliftConfig",
    "Upsampler",
    "__version__",
    "build_upsampler",
    "cpu_supports_bf16",
    "list_upsamplers",
    "load_upsampler",
]

__getattr__, __dir__ = lazy_attributes(
    __name__,
    {
        "LoadOptions": "._builder",
        "build_upsampler": "._builder",
        "load_upsampler": "._builder",
        "UpliftConfig": ".config",
        "UPLiFT": ".modeling.uplift",
        "cpu_supports_bf16": ".hardware",
        "list_upsamplers": "._registry",
        "Upsampler": "._upsampler",
    },
)
