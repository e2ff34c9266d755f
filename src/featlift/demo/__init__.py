"""featlift demo: a local web page to see what an upsampler does, on your own picture.

``featlift demo`` (the command) or, in Python::

    import featlift
    from featlift.demo import build_app, serve

    serve(featlift.load_upsampler("dinov2_s14"))  # http://127.0.0.1:7860 until Ctrl+C

    app = build_app(featlift.load_upsampler("dinov2_s14"), folder="demo-files")
    app.launch()                                    # the same page, launched by you

Gradio is an optional dependency (``pip install "featlift[demo]"``); it is imported only when the app
is built. The computation (:class:`DemoEngine`) and the PCA pictures (:mod:`featlift.viz`) work without it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .._lazy import lazy_attributes
from ..errors import require
from ._serve import serve

if TYPE_CHECKING:
    from ._engine import DemoEngine, DemoResult

__all__ = ["DemoEngine", "DemoResult", "build_app", "serve"]


def build_app(upsampler, *, folder: str | os.PathLike | None = None, **options: Any):
    """The demo page for ``upsampler`` (a :class:`featlift.Upsampler`), as a ``gradio.Blocks`` with its
    queue set up (one request computes at a time). ``app.launch()`` serves it on 127.0.0.1 unless told
    otherwise, with uploads capped at ``max_file_bytes``.

    ``folder`` is where uploads, results and the example pictures go, and the only folder whose files the
    page serves or reads (default: Gradio's own temporary folder, ``<tmp>/gradio``). Gradio learns it from
    its ``GRADIO_TEMP_DIR`` setting, which the app sets while it builds and from ``launch()`` to
    ``close()`` (one served folder per process at a time).

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
    require("gradio", feature="the featlift demo", extra="demo")
    from ._app import build_app as _build_app

    return _build_app(upsampler, folder=folder, **options)


# The engine needs torch: imported on first use, so that the command line's parser stays light.
__getattr__, __dir__ = lazy_attributes(__name__, {"DemoEngine": "._engine", "DemoResult": "._engine"})
