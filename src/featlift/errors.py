"""Exceptions raised by featlift. Each message names the problem and how to fix it."""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "DownloadError", "MissingDependencyError", "UnknownModelError"]


class ConfigError(ValueError):
    """An invalid configuration value. The message starts with the offending field's path."""


class CheckpointError(ValueError):
    """A weights file that cannot be read, or that does not match the model's config."""


class UnknownModelError(ValueError):
    """A model name that is neither registered nor a usable path."""


class DownloadError(RuntimeError):
    """A file that could not be fetched from the Hugging Face Hub and is not in the local cache."""


class MissingDependencyError(ImportError):
    """An optional dependency that a feature needs is not installed."""
