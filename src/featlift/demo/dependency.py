"""Gradio, the demo's one optional dependency: imported only when the app is built or served."""

from __future__ import annotations

from ..errors import MissingDependencyError

__all__ = ["INSTALL_HINT", "require_gradio"]

INSTALL_HINT = 'pip install "featlift[demo]"'


def require_gradio():
    """The ``gradio`` module, or :class:`~featlift.errors.MissingDependencyError` with the install command."""
    try:
        import gradio
    except ImportError as err:
        raise MissingDependencyError(
            f"the featlift demo needs gradio, which is not installed ({err}); install it with: {INSTALL_HINT}"
        ) from None
    return gradio
