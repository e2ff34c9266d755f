"""Serving the demo page until Ctrl+C or SIGTERM, in a folder of its own (what ``featlift demo`` runs).

Imported with :mod:`featlift.demo`, so it imports neither gradio nor torch at module level.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import require

__all__ = ["serve"]

logger = logging.getLogger(__name__)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


def serve(
    upsampler,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    folder: str | os.PathLike | None = None,
    on_ready: Callable[[str], object] | None = None,
    **options: Any,
) -> None:
    """Serve the demo page for ``upsampler`` on ``host``:``port`` until Ctrl+C or SIGTERM (then return).

    Uploads, results and the example pictures go to ``folder``, and only files in it are served; by
    default a new temporary folder (``featlift-demo-*`` in the system's temporary folder), removed on
    return. ``on_ready(url)`` is called once the page is up. A host other than the loopback is logged as
    a warning: the page has no login. ``options`` (``max_pixels``, ``max_file_bytes``, ...) go to
    :func:`featlift.demo.build_app`.

    Raises:
        MissingDependencyError: gradio is not installed.
    """
    require("gradio", feature="the featlift demo", extra="demo")
    from ._app import build_app

    own = folder is None
    folder = Path(tempfile.mkdtemp(prefix="featlift-demo-") if own else folder)
    app = None
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None  # SIGTERM: clean up, return
    try:
        app = build_app(upsampler, folder=folder, **options)
        logger.info("uploads and results go to %s (removed on exit: %s)", folder, own)
        _, url, _ = app.launch(
            server_name=host, server_port=port, prevent_thread_lock=True, quiet=True, show_error=False
        )
        if not _is_loopback(host):
            logger.warning("the demo listens on %s, reachable from other machines; there is no login", host)
        if on_ready is not None:
            on_ready(url)
        app.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        if app is not None:
            app.close()
        if own:
            shutil.rmtree(folder, ignore_errors=True)
