"""Gradio, the demo's one optional dependency: imported only when the app is built or served."""

from __future__ import annotations

from ..errors import require

__all__ = ["INSTALL_HINT", "require_gradio"]

INSTALL_HINT = 'pip install "featlift[demo]"'


def require_gradio():
    """The ``gradio`` module, or :class:`~featlift.errors.MissingDependencyError` with the install command."""
    return require("gradio", feature="the featlift demo", extra="demo")
