"""The ``featlift demo`` subcommand: serve the demo page for an upsampler.

Imported by the CLI for every command, so it imports neither gradio nor torch at module level.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading

from ..errors import ConfigError

logger = logging.getLogger(__name__)

_LOOPBACK_NAMES = {"localhost"}


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace) -> int:
    from .dependency import require_gradio

    if args.max_pixels < 1:
        raise ConfigError(f"--max-pixels must be a positive number of pixels, got {args.max_pixels}")
    if args.max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    # The app's own temporary folder (uploads, results, examples); only files in it are served.
    own_temp = not os.environ.get("GRADIO_TEMP_DIR")
    temp = tempfile.mkdtemp(prefix="featlift-demo-") if own_temp else os.environ["GRADIO_TEMP_DIR"]
    os.environ["GRADIO_TEMP_DIR"] = temp
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app = None
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None  # SIGTERM: clean up, exit 0
    try:
        require_gradio()
        import torch

        from .._builder import load_upsampler
        from .app import build_app

        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
        up = load_upsampler(
            args.model,
            device=args.device,
            dtype=dtype,
            weights=args.weights,
            backbone_weights=args.backbone_weights,
            pretrained=not args.no_pretrained,
        )
        app = build_app(up, max_pixels=args.max_pixels, max_file_bytes=int(args.max_upload_mb * 1e6))
        logger.info("uploads and results go to %s (removed on exit: %s)", temp, own_temp)
        _, url, _ = app.launch(
            server_name=args.host, server_port=args.port, prevent_thread_lock=True, quiet=True, show_error=False
        )
        print(f"featlift demo of {args.model} on {up.device}: {url}  (Ctrl+C to stop)", flush=True)
        if not _is_loopback(args.host):
            print(
                f"featlift demo: listening on {args.host}, reachable from other machines; there is no login",
                file=sys.stderr,
                flush=True,
            )
        app.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        if app is not None:
            app.close()
        if own_temp:
            shutil.rmtree(temp, ignore_errors=True)
            os.environ.pop("GRADIO_TEMP_DIR", None)
    return 0


def add_parser(sub) -> None:
    """Register ``featlift demo`` on the CLI's subparsers."""
    p = sub.add_parser(
        "demo",
        help="a local web page: upload a picture, compare featlift with bilinear (needs featlift[demo])",
        description=(
            "Serves a Gradio page: upload a picture (or pick an example) and see the backbone's bilinear features "
            "and featlift's pixel-dense features side by side (one PCA basis), click a pixel for cosine-similarity "
            "maps. The API endpoint /upsample does the same from gradio_client. Binds 127.0.0.1 unless --host "
            'says otherwise. Needs gradio: pip install "featlift[demo]".'
        ),
    )
    p.add_argument("--model", default="dinov2_s14", help="registered name, local model dir or Hub repo id")
    p.add_argument("--weights", default=None, help="local UPLiFT weights instead of the download")
    p.add_argument("--backbone-weights", default=None, help="local backbone weights instead of the download")
    p.add_argument("--no-pretrained", action="store_true", help="random weights (testing only)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument(
        "--max-pixels",
        type=int,
        default=1024 * 1024,
        help="pictures with more pixels are downscaled to this (default 1048576 = 1024x1024)",
    )
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload in MB (default 20)")
    p.set_defaults(func=_run)
