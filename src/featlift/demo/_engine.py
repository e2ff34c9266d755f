"""What the demo computes, without any web framework: upsample a picture, make the PCA pictures, keep the
features for clicks, answer a click with two similarity maps."""

from __future__ import annotations

import logging
import math
import os
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._memory import format_bytes
from .._peak_memory import PeakMemory
from .._tensors import dtype_str
from .._upsampler import Upsampler
from ..errors import ConfigError, ExpiredResultError
from ..viz import fit_pca
from ._pictures import heatmap, resize_picture, similarity_map
from ._uploads import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, Upload, read_upload

__all__ = ["OUTPUT_CHOICES", "DemoEngine", "DemoResult"]

logger = logging.getLogger(__name__)

OUTPUT_CHOICES = ("own size", "native", "max side")
DEFAULT_MAX_SIDE = 512
DEFAULT_CACHE_BYTES = 2 * 1024**3
DEFAULT_CACHE_ENTRIES = 8


@dataclass
class DemoResult:
    """One upsampled picture, as the page shows it."""

    token: str  # the key of the features kept for clicks
    photo: np.ndarray  # uint8 [H, W, 3], the picture as upsampled (after the pixel cap)
    bilinear_pca: np.ndarray  # uint8 [H, W, 3], the coarse features upsampled bilinearly
    featlift_pca: np.ndarray  # uint8 [H, W, 3], featlift's features, same PCA basis
    seconds: float  # the upsampler call
    total_seconds: float  # the whole request, pictures included
    peak_bytes: int | None  # measured during the upsampler call (None where it cannot be measured)
    peak_method: str
    estimate_bytes: int  # the memory guard's estimate for the call
    output_shape: tuple[int, ...]
    lowres_shape: tuple[int, ...]
    dtype: str  # what the upsampler computed in, e.g. "bfloat16" (featlift demo --dtype)
    note: str | None  # e.g. "downscaled to the pixel cap"

    def summary(self, model: str, device: str) -> str:
        """Markdown lines for the page."""
        peak = "not measurable here" if self.peak_bytes is None else format_bytes(self.peak_bytes)
        lines = [
            f"**{model}** on `{device}` in {self.dtype}: the upsampler call took **{self.seconds:.2f} s**, "
            f"peak memory **{peak}** ({self.peak_method}; the memory guard estimated "
            f"{format_bytes(self.estimate_bytes)}); "
            f"output **{list(self.output_shape)}** from backbone features {list(self.lowres_shape)}; "
            f"request {self.total_seconds:.2f} s in all.",
        ]
        if self.note:
            lines.append(f"**Note:** {self.note}")
        return "\n\n".join(lines)


@dataclass
class _Kept:
    """What a click needs: the photo, the coarse features and featlift's features (unit length, float16)."""

    photo: np.ndarray
    lowres: Tensor  # [C, h, w] float32
    dense: Tensor  # [C, H', W'] float16, unit vectors
    nbytes: int


def _unit_half(features: Tensor) -> Tensor:
    """[C, H, W] -> unit-length float16 copy on the CPU, stored channels-last (each pixel's vector in one
    place, as the similarity maps read it), converted in strips of rows (no full float32 copy)."""
    c, h, w = features.shape
    out = torch.empty((h, w, c), dtype=torch.float16)
    for top in range(0, h, 64):
        strip = features[:, top : top + 64].float().permute(1, 2, 0)
        out[top : top + 64] = (strip / strip.norm(dim=-1, keepdim=True).clamp_min(1e-12)).to("cpu", torch.float16)
    return out.permute(2, 0, 1)


def output_size_for(choice: str, size: tuple[int, int], max_side: int | float | None) -> Any:
    """The upsampler's ``output_size`` for a page choice: "own size" -> None, "native" -> "native",
    "max side" -> (H, W) scaled so the longer side is at most ``max_side`` (never enlarged)."""
    if choice == "own size":
        return None
    if choice == "native":
        return "native"
    if choice == "max side":
        try:
            side = int(max_side)
        except (TypeError, ValueError):
            side = 0
        if side < 1:
            raise ConfigError(f"the maximum side must be a positive number of pixels, got {max_side!r}")
        h, w = size
        scale = min(1.0, side / max(h, w))
        return (max(1, round(h * scale)), max(1, round(w * scale)))
    raise ConfigError(f"output size must be one of {', '.join(OUTPUT_CHOICES)}; got {choice!r}")


class DemoEngine:
    """The demo's work, callable without a browser. Thread-safe; the app runs one request at a time.

    Each result's features are kept for clicks in a least-recently-used cache bounded by ``cache_bytes``
    and ``cache_entries`` (the newest result is always kept), so many visitors cannot fill the memory.
    """

    def __init__(
        self,
        upsampler: Upsampler,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
    ) -> None:
        if not isinstance(upsampler, Upsampler):
            raise ConfigError(
                f"the demo needs a featlift.Upsampler (featlift.load_upsampler(...)), got {type(upsampler).__name__}"
            )
        for name, value in (("max_pixels", max_pixels), ("max_bytes", max_bytes), ("cache_entries", cache_entries)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        self.upsampler = upsampler
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.cache_bytes = cache_bytes
        self.cache_entries = cache_entries
        self._kept: OrderedDict[str, _Kept] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self.upsampler.name or type(self.upsampler.backbone).__name__

    # -- the main call ---------------------------------------------------------------------------------

    def read(self, path: str | os.PathLike) -> Upload:
        return read_upload(path, max_pixels=self.max_pixels, max_bytes=self.max_bytes)

    def upsample(
        self, picture: str | os.PathLike | Upload, output: str = "own size", max_side: Any = None
    ) -> DemoResult:
        """Upsample a picture (a file path or a read :class:`Upload`) and make both PCA pictures.

        Raises :class:`~featlift.errors.InvalidUploadError` for a file that is not a usable picture,
        :class:`~featlift.errors.InsufficientMemoryError` when the memory guard refuses the call,
        :class:`~featlift.errors.ConfigError` for a bad output choice.
        """
        start = time.perf_counter()
        upload = picture if isinstance(picture, Upload) else self.read(picture)
        size = upload.size
        output_size = output_size_for(output, size, DEFAULT_MAX_SIDE if max_side is None else max_side)
        up = self.upsampler
        with PeakMemory(up.device) as peak:
            call_start = time.perf_counter()
            dense, lowres = up(upload.pixels, output_size=output_size, return_lowres=True)
            if up.device.type == "cuda":
                torch.cuda.synchronize(up.device)
            seconds = time.perf_counter() - call_start
        estimate = up.estimate_memory(1, size, output_size=output_size)
        output_shape, lowres_shape = tuple(dense.shape), tuple(lowres.shape)
        dense, lowres = dense[0], lowres[0].float().cpu()
        basis = fit_pca([lowres, dense])
        out_hw = tuple(dense.shape[-2:])
        coarse = F.interpolate(basis.project(lowres)[None], size=out_hw, mode="bilinear", align_corners=False)[0]
        bilinear_pca = resize_picture(basis.to_rgb(coarse), size)
        featlift_pca = resize_picture(basis.rgb(dense), size)
        kept = _unit_half(dense)
        del dense
        photo = (upload.pixels.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        token = self._keep(_Kept(photo=photo, lowres=lowres, dense=kept, nbytes=kept.nbytes + lowres.nbytes))
        result = DemoResult(
            token=token,
            photo=photo,
            bilinear_pca=bilinear_pca,
            featlift_pca=featlift_pca,
            seconds=seconds,
            total_seconds=time.perf_counter() - start,
            peak_bytes=peak.peak,
            peak_method=peak.method,
            estimate_bytes=estimate.total,
            output_shape=output_shape,
            lowres_shape=lowres_shape,
            dtype=dtype_str(up.dtype),
            note=upload.note,
        )
        logger.info(
            "upsampled %dx%d -> %s in %s in %.2f s (peak %s)",
            size[1],
            size[0],
            list(output_shape),
            result.dtype,
            seconds,
            "?" if peak.peak is None else format_bytes(peak.peak),
        )
        return result

    # -- clicks ------------------------------------------------------------------------------------------

    def similarity(self, token: str | None, x: int, y: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """Heat maps (bilinear, featlift) of the cosine similarity of every pixel to photo pixel (x, y).

        (x, y) are column and row in the photo as shown (clamped to it); they map to the nearest pixel of
        the output grid. Returns both pictures at the photo's size and the (x, y) used. Raises
        :class:`~featlift.errors.ExpiredResultError` when the result's features are no longer kept.
        """
        with self._lock:
            kept = self._kept.get(token) if token else None
            if kept is not None:
                self._kept.move_to_end(token)
        if kept is None:
            raise ExpiredResultError(
                "the features of this picture are no longer in memory (the demo keeps the latest few); "
                "upsample it again, then click"
            )
        h, w = kept.photo.shape[:2]
        x, y = min(max(int(x), 0), w - 1), min(max(int(y), 0), h - 1)
        oh, ow = kept.dense.shape[-2:]
        oy, ox = min(oh - 1, math.floor((y + 0.5) * oh / h)), min(ow - 1, math.floor((x + 0.5) * ow / w))
        maps = []
        for sim in (similarity_map(kept.lowres, (oy, ox), size=(oh, ow)), similarity_map(kept.dense, (oy, ox))):
            if (oh, ow) != (h, w):
                sim = F.interpolate(sim[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
            maps.append(heatmap(sim, kept.photo, marker=(y, x)))
        return maps[0], maps[1], (x, y)

    def _keep(self, kept: _Kept) -> str:
        token = secrets.token_hex(12)
        with self._lock:
            self._kept[token] = kept
            total = sum(k.nbytes for k in self._kept.values())
            while len(self._kept) > 1 and (len(self._kept) > self.cache_entries or total > self.cache_bytes):
                _, dropped = self._kept.popitem(last=False)
                total -= dropped.nbytes
        return token
