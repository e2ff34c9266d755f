"""Exceptions raised by featlift. Each message names the problem and how to fix it.

Every class derives from :class:`FeatliftError` (catch them all at once) and from the built-in exception
it refines (``ValueError``, ``RuntimeError``, ``ImportError``), so existing ``except`` clauses keep working.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DatasetError",
    "DatasetFormatError",
    "DownloadError",
    "ExpiredResultError",
    "FeatliftError",
    "InsufficientMemoryError",
    "InvalidUploadError",
    "MissingDependencyError",
    "UnknownModelError",
    "UntileableError",
    "UploadError",
]


class FeatliftError(Exception):
    """Base class of featlift's own exceptions."""


class ConfigError(FeatliftError, ValueError):
    """An invalid configuration value or config file. The message starts with the offending field's path
    or the file's path."""


class CheckpointError(FeatliftError, ValueError):
    """A weights file that cannot be read, would run code when unpickled, or does not match the model's
    config. The message names the file."""


class UnknownModelError(FeatliftError, ValueError):
    """A model name that is neither registered nor a usable path."""


class DownloadError(FeatliftError, RuntimeError):
    """A file that could not be fetched from the Hugging Face Hub and is not (intact) in the local cache."""


class UploadError(FeatliftError, RuntimeError):
    """A model directory that could not be published to the Hugging Face Hub (network, login, permission).
    The message names the repo and the fix."""


class MissingDependencyError(FeatliftError, ImportError):
    """An optional dependency that a feature needs is not installed."""


class InsufficientMemoryError(FeatliftError, MemoryError):
    """A call whose estimated peak memory exceeds what its device has available. The message gives the
    estimate and the arguments that make the call fit (``tile=``, ``head=``, ``output_size=``)."""


class DataError(FeatliftError, ValueError):
    """Training data that cannot be used: a missing path, an empty folder, a list naming no images."""


class DatasetError(FeatliftError, FileNotFoundError):
    """A dataset folder or file that is not where the standard layout puts it. The message shows the
    expected layout, the missing path and the fix."""


class DatasetFormatError(FeatliftError, ValueError):
    """A dataset file that exists but does not hold what its layout promises (an RGB label map where a
    palette/grey one is expected, label values beyond the table, mismatched counts). The message starts
    with the file's path."""


class UntileableError(FeatliftError, ValueError):
    """A layer that is not translation-equivariant, so a crop cannot reproduce the full image exactly."""


class InvalidUploadError(FeatliftError, ValueError):
    """An upload the demo will not process: not an image, too many bytes, or too many pixels to decode."""


class ExpiredResultError(FeatliftError, LookupError):
    """A click on a demo result whose features were dropped (evicted from the cache, or never computed)."""


def require(module: str, *, feature: str, extra: str) -> object:
    """The imported ``module``, or :class:`MissingDependencyError` naming ``feature`` (what needs it) and
    the extra that installs it (``pip install "featlift[EXTRA]"``)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"{feature} needs {module.split('.')[0]}, which is not installed ({err}); "
            f'install it with: pip install "featlift[{extra}]"'
        ) from None
