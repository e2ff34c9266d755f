"""Small torch helpers every layer shares: the floating-point dtype table and freezing a module.

The dtype names are plain strings, so a command-line parser can offer them without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["DTYPE_NAMES", "dtype_str", "freeze", "to_dtype"]

# The floating-point dtypes featlift computes and stores in, by the name torch gives them.
DTYPE_NAMES: tuple[str, ...] = ("float32", "bfloat16", "float16")


def dtype_str(dtype: torch.dtype | str) -> str:
    """The name torch gives ``dtype``, without ``torch.`` (``torch.bfloat16`` -> ``"bfloat16"``): how files,
    reports and pages name a dtype."""
    return dtype.removeprefix("torch.") if isinstance(dtype, str) else str(dtype).removeprefix("torch.")


def to_dtype(dtype: torch.dtype | str, allowed: tuple[str, ...] = DTYPE_NAMES, *, what: str = "dtype") -> torch.dtype:
    """``dtype`` (a ``torch.dtype`` or its name, with or without ``torch.``) as a ``torch.dtype`` when it is
    one of ``allowed``; a :class:`~featlift.errors.ConfigError` naming ``what`` and the choices otherwise."""
    import torch

    name = dtype_str(dtype)
    if name not in allowed or not isinstance(getattr(torch, name, None), torch.dtype):
        raise ConfigError(f"{what} must be one of {', '.join(allowed)}, got {dtype!r}")
    return getattr(torch, name)


def freeze(module: nn.Module) -> nn.Module:
    """``module`` in eval mode with every parameter's ``requires_grad`` off (in place; returned)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
