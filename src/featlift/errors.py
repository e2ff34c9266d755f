"""Exceptions raised by featlift. Each message names the problem and how to fix it.

Every class derives from :class:`FeatliftError` (catch them all at once) and from the built-in exception
it refines (``ValueError``, ``RuntimeError``, ``ImportError``), so existing ``except`` clauses keep working.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DownloadError",
    "FeatliftError",
    "InsufficientMemoryError",
    "MissingDependencyError",
    "UnknownModelError",
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
