"""The Gradio page. Imported only by :func:`featlift.demo.build_app` (gradio is an optional dependency)."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.utils import get_upload_folder

from .._memory import format_bytes
from .._upsampler import Upsampler
from ..errors import ExpiredResultError, FeatliftError, InsufficientMemoryError
from ._engine import DEFAULT_MAX_SIDE, OUTPUT_CHOICES, DemoEngine
from ._pictures import example_images
from ._uploads import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

__all__ = ["build_app", "gradio_settings"]

logger = logging.getLogger(__name__)

# Requests waiting in the queue beyond the one computing; more visitors are told the queue is full.
DEFAULT_QUEUE_SIZE = 16
_CONCURRENCY_ID = "featlift-compute"

_INTRO = """\
# featlift: see what the upsampler does

Upload a picture or pick an example. **Left**: the backbone's coarse features, upsampled bilinearly.
**Right**: featlift's pixel-dense features. Both are drawn with **one PCA basis** (the first three
principal components as RGB), so equal colours mean equal features. **Click any pixel** of either picture
to see how similar every pixel's feature is to that one (cosine similarity: black 0, yellow 1).
"""


@contextlib.contextmanager
def gradio_settings(folder: Path) -> Iterator[None]:
    """Gradio's settings for an app serving ``folder``, for the block; the previous ones after it.

    Gradio reads where uploads and results go only from ``GRADIO_TEMP_DIR``: when a component is made, when
    the server starts and on each request (the check that an input file is an upload). Its examples cache
    (``GRADIO_EXAMPLES_CACHE``, else ``.gradio/cached_examples`` under the working directory, also served)
    is put inside ``folder`` too, so that no file outside it is served.
    """
    settings = {"GRADIO_TEMP_DIR": str(folder), "GRADIO_EXAMPLES_CACHE": str(folder / "cached-examples")}
    if "GRADIO_ANALYTICS_ENABLED" not in os.environ:
        settings["GRADIO_ANALYTICS_ENABLED"] = "False"
    previous = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _error(message: str) -> Exception:
    """A ``gr.Error`` shown on the page (and sent to API clients) until the visitor closes it."""
    options = inspect.signature(gr.Error).parameters
    kwargs: dict[str, Any] = {}
    if "duration" in options:
        kwargs["duration"] = None
    if "print_exception" in options:
        kwargs["print_exception"] = False
    return gr.Error(message, **kwargs)


def payload_path(picture: Any, folder: Path) -> Path:
    """The local path of an image payload (``preprocess=False`` gives the raw file data); only files in
    the app's ``folder`` are read, whatever a client sends."""
    path = picture.get("path") if isinstance(picture, dict) else picture
    if not isinstance(path, str | os.PathLike) or not str(path):
        raise _error("Send the picture as a file (in Python: gradio_client.handle_file(path)).")
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(folder):
        logger.warning("refused to read %s: not in the app's folder %s", resolved, folder)
        raise _error("That file is not an upload of this app; upload the picture.")
    return resolved


def _write_examples(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, image in example_images().items():
        path = folder / f"{name}.png"
        image.save(path)  # always (re)written: never serve a file someone else left there
        paths.append(str(path))
    return paths


def build_app(
    upsampler: Upsampler,
    *,
    folder: str | os.PathLike | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_file_bytes: int = DEFAULT_MAX_BYTES,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    examples: bool = True,
    title: str = "featlift demo",
):
    """The demo page for ``upsampler`` as a ``gradio.Blocks`` (see :func:`featlift.demo.build_app`)."""
    engine = DemoEngine(upsampler, max_pixels=max_pixels, max_bytes=max_file_bytes)
    device = str(upsampler.device)
    folder = Path(get_upload_folder() if folder is None else folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)

    class DemoBlocks(gr.Blocks):
        """Blocks that serve ``folder`` (Gradio's settings point at it from ``launch`` to ``close``) and cap
        uploads at the demo's byte limit unless told otherwise."""

        served = contextlib.ExitStack()

        def launch(self, *args: Any, **kwargs: Any):
            kwargs.setdefault("max_file_size", max_file_bytes)
            self.served.close()  # a second launch: the settings are set again
            self.served.enter_context(gradio_settings(folder))
            try:
                return super().launch(*args, **kwargs)
            finally:
                if not self.is_running:  # it did not start
                    self.served.close()

        def close(self, *args: Any, **kwargs: Any) -> None:
            try:
                super().close(*args, **kwargs)
            finally:
                self.served.close()

    def compute(picture: Any, output: str, max_side: Any, quiet_when_empty: bool):
        if picture is None:
            if quiet_when_empty:
                return None, None, None, None, "", "", None
            raise _error("Upload a picture first, or pick an example.")
        path = payload_path(picture, folder)
        try:
            result = engine.upsample(path, output or OUTPUT_CHOICES[0], max_side)
        except InsufficientMemoryError as err:
            logger.warning("memory guard refused a request: %s", err)
            raise _error(
                "Not enough memory on this machine for this picture at this output size. Choose 'max side' "
                f"with a smaller maximum, or upload a smaller picture. (featlift's memory guard: {err})"
            ) from None
        except (FeatliftError, ValueError, TypeError) as err:
            logger.warning("refused a request: %s", err)
            raise _error(f"Cannot upsample: {err}") from None
        except Exception as err:
            logger.exception("the demo failed on a request")
            raise _error(f"featlift failed on this picture ({type(err).__name__}: {err}).") from None
        return (
            result.bilinear_pca,
            result.featlift_pca,
            None,
            None,
            result.summary(engine.model_name, device),
            "Click any pixel of a picture above to see its similarity maps.",
            result.token,
        )

    def upsample(picture: Any, output: str, max_side: Any):
        """Upsample a picture; returns the bilinear and featlift PCA pictures, two empty similarity maps
        (filled by clicks on the page) and a summary (time, peak memory, output shape)."""
        return compute(picture, output, max_side, quiet_when_empty=False)

    def upsample_on_change(picture: Any, output: str, max_side: Any):
        return compute(picture, output, max_side, quiet_when_empty=True)

    def upsample_on_new_side(picture: Any, output: str, max_side: Any):
        if output != "max side":  # the slider only matters for 'max side': leave the page as it is
            return tuple(gr.update() for _ in range(7))
        return compute(picture, output, max_side, quiet_when_empty=True)

    def click(token: str | None, evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, list | tuple) and len(evt.index) == 2 else None
        if index is None:
            raise _error("Click on a pixel of a picture.")
        try:
            bilinear, dense, (x, y) = engine.similarity(token, int(index[0]), int(index[1]))
        except ExpiredResultError as err:
            raise _error(str(err).capitalize() + ".") from None
        except Exception as err:
            logger.exception("the similarity maps failed")
            raise _error(f"featlift failed on this click ({type(err).__name__}: {err}).") from None
        return bilinear, dense, f"Cosine similarity of every pixel to pixel **x={x}, y={y}** (marked with a cross)."

    with gradio_settings(folder), DemoBlocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(_INTRO)
        token = gr.State(None)
        with gr.Row():
            with gr.Column(scale=2):
                photo = gr.Image(
                    label="Your picture",
                    type="filepath",
                    image_mode=None,
                    sources=["upload", "clipboard"],
                    elem_id="photo",
                )
            with gr.Column(scale=1):
                output = gr.Radio(
                    list(OUTPUT_CHOICES),
                    value=OUTPUT_CHOICES[0],
                    label="Output size",
                    info="own size: the photo's; native: the upsampler's grid; max side: at most this many pixels",
                    elem_id="output-size",
                )
                max_side = gr.Slider(
                    32, 2048, value=DEFAULT_MAX_SIDE, step=1, label="Maximum side (for 'max side')", elem_id="max-side"
                )
                button = gr.Button("Upsample", variant="primary", elem_id="upsample")
                gr.Markdown(
                    f"Uploads up to {format_bytes(max_file_bytes)}; pictures above {max_pixels / 1e6:.2f} MP are "
                    "downscaled to that. One picture is computed at a time; others wait in a queue."
                )
        if examples:
            gr.Examples(
                examples=[[p] for p in _write_examples(folder / "featlift-demo-examples")],
                inputs=[photo],
                label="Examples (drawn by featlift)",
                cache_examples=False,
                elem_id="examples",
            )
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            bilinear_pca = gr.Image(
                label="Bilinear (backbone features), PCA", format="png", interactive=False, elem_id="bilinear-pca"
            )
            featlift_pca = gr.Image(
                label="featlift (pixel-dense), PCA", format="png", interactive=False, elem_id="featlift-pca"
            )
        sim_status = gr.Markdown(elem_id="similarity-status")
        with gr.Row():
            bilinear_sim = gr.Image(
                label="Bilinear: similarity to the clicked pixel",
                format="png",
                interactive=False,
                elem_id="bilinear-sim",
            )
            featlift_sim = gr.Image(
                label="featlift: similarity to the clicked pixel",
                format="png",
                interactive=False,
                elem_id="featlift-sim",
            )

        outputs = [bilinear_pca, featlift_pca, bilinear_sim, featlift_sim, status, sim_status, token]
        inputs = [photo, output, max_side]
        common = {"preprocess": False, "concurrency_limit": 1, "concurrency_id": _CONCURRENCY_ID}
        button.click(upsample, inputs, outputs, api_name="upsample", **common)
        photo.change(upsample_on_change, inputs, outputs, api_name=False, **common)
        # A new output size recomputes the picture on the page (once the slider is let go).
        output.change(upsample_on_change, inputs, outputs, api_name=False, trigger_mode="always_last", **common)
        max_side.release(upsample_on_new_side, inputs, outputs, api_name=False, trigger_mode="always_last", **common)
        for picture in (bilinear_pca, featlift_pca, bilinear_sim, featlift_sim):
            picture.select(
                click,
                [token],
                [bilinear_sim, featlift_sim, sim_status],
                api_name=False,
                concurrency_limit=1,
                concurrency_id=_CONCURRENCY_ID,
            )
    app.queue(default_concurrency_limit=1, max_size=queue_size)
    app.featlift_engine = engine
    app.featlift_folder = folder
    return app
