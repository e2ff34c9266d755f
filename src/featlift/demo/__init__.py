"""featlift demo: a local web page to see what an upsampler does, on your own picture.

``featlift demo`` (the command) or, in Python::

    import featlift
    from featlift.demo import build_app

    app = build_app(featlift.load_upsampler("dinov2_s14"))
    app.launch()                  # http://127.0.0.1:7860

Gradio is an optional dependency (``pip install "featlift[demo]"``); it is imported only when the app
is built. The picture functions (:mod:`featlift.demo.pictures`) and the computation
(:class:`featlift.demo.engine.DemoEngine`) work without it.
"""

from __future__ import annotations

from typing import Any

from .dependency import INSTALL_HINT, require_gradio

__all__ = ["INSTALL_HINT", "build_app", "require_gradio"]


def build_app(upsampler, **options: Any):
    """The demo page for ``upsampler`` (a :class:`featlift.Upsampler`), as a ``gradio.Blocks`` with its
    queue set up (one request computes at a time). ``app.launch()`` serves it on 127.0.0.1 unless told
    otherwise, with uploads capped at ``max_file_bytes``.

    Options: ``max_pixels`` (pictures above are downscaled to it, and the page says so; default 1024x1024),
    ``max_file_bytes`` (default 20 MB), ``queue_size`` (requests waiting beyond the computing one; default
    16), ``examples`` (show the bundled example pictures; default True), ``title``.

    The main action is the API endpoint ``/upsample``: its first input is the picture (every other input
    has a default) and its first two outputs are the bilinear and featlift PCA pictures::

        from gradio_client import Client, handle_file
        bilinear, dense, *_ = Client("http://127.0.0.1:7860").predict(handle_file("photo.jpg"), api_name="/upsample")

    Raises:
        MissingDependencyError: gradio is not installed.
    """
    require_gradio()
    from .app import build_app as _build_app

    return _build_app(upsampler, **options)
