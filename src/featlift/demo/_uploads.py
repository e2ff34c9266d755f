"""Reading an uploaded picture safely: a byte cap, a pixel cap (downscale, with a note), clear refusals."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from .._images import resize_image, to_image_tensor
from ..errors import InvalidUploadError

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_PIXELS", "Upload", "read_upload"]

DEFAULT_MAX_PIXELS = 1024 * 1024
DEFAULT_MAX_BYTES = 20_000_000
# Pictures with more pixels than this are refused outright instead of decoded (a decompression bomb: a
# small file that expands to gigabytes). PIL's own warning threshold.
DECODE_LIMIT = Image.MAX_IMAGE_PIXELS or 89_478_485


@dataclass
class Upload:
    """A picture ready for the upsampler."""

    pixels: Tensor  # float32 [3, H, W] in [0, 1], at most max_pixels pixels
    original_size: tuple[int, int]  # (H, W) as uploaded (after EXIF rotation)
    note: str | None  # what was done to it (downscaled), for the page

    @property
    def size(self) -> tuple[int, int]:
        return (int(self.pixels.shape[1]), int(self.pixels.shape[2]))


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.2f} MP"


def capped_size(size: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    """(H, W) scaled down, aspect kept, to at most ``max_pixels`` pixels (unchanged when already within)."""
    h, w = size
    if h * w <= max_pixels:
        return size
    scale = math.sqrt(max_pixels / (h * w))
    nh, nw = max(1, math.floor(h * scale)), max(1, math.floor(w * scale))
    while nh * nw > max_pixels:  # floor rounding can still leave one row too many
        if nh >= nw:
            nh -= 1
        else:
            nw -= 1
    return nh, nw


def read_upload(
    path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
) -> Upload:
    """Open the picture at ``path``; downscale it (antialiased) to ``max_pixels`` when it has more.

    Raises:
        InvalidUploadError: the file is larger than ``max_bytes``, is not a picture PIL can read, or has
            more pixels than :data:`DECODE_LIMIT`.
    """
    path = Path(path)
    name = path.name
    try:
        n_bytes = path.stat().st_size
    except OSError as err:
        raise InvalidUploadError(f"the upload {name!r} could not be read ({err.strerror or err})") from None
    if n_bytes > max_bytes:
        raise InvalidUploadError(
            f"the file {name!r} is {n_bytes / 1e6:.1f} MB; this demo accepts files up to {max_bytes / 1e6:.1f} MB"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                w, h = image.size
                if w * h > DECODE_LIMIT:
                    raise InvalidUploadError(
                        f"the picture {name!r} is {w}x{h} pixels ({_megapixels(w * h)}); this demo does not "
                        f"decode pictures above {_megapixels(DECODE_LIMIT)}. Downscale it first."
                    )
                if w * h > max_pixels:
                    # JPEG can decode at 1/2, 1/4 or 1/8 scale directly: less memory for huge photos.
                    th, tw = capped_size((h, w), max_pixels)
                    image.draft(None, (tw, th))
                image.load()
                image = ImageOps.exif_transpose(image)
    except InvalidUploadError:
        raise
    except Image.DecompressionBombError:
        raise InvalidUploadError(
            f"the picture {name!r} has too many pixels to decode safely (above {_megapixels(DECODE_LIMIT)}); "
            "downscale it first"
        ) from None
    except UnidentifiedImageError:
        raise InvalidUploadError(
            f"the file {name!r} is not a picture this demo can read (PNG, JPEG, WebP, BMP, TIFF, GIF, ...)"
        ) from None
    except (OSError, ValueError, SyntaxError) as err:  # truncated or corrupt files
        reason = str(err).replace(str(path), name)
        raise InvalidUploadError(f"the picture {name!r} could not be decoded ({reason})") from None
    original = (image.height, image.width)
    try:
        pixels = to_image_tensor(image, what=f"the picture {name!r}")
    except (TypeError, ValueError) as err:
        raise InvalidUploadError(str(err)) from None
    note = None
    target = capped_size((pixels.shape[1], pixels.shape[2]), max_pixels)
    if target != tuple(pixels.shape[1:]) or original[0] * original[1] > max_pixels:
        if target != tuple(pixels.shape[1:]):
            pixels = resize_image(pixels[None], target)[0].clamp(0, 1)
        note = (
            f"The picture has {original[1]}x{original[0]} pixels ({_megapixels(original[0] * original[1])}), above "
            f"this demo's cap of {_megapixels(max_pixels)}; it was downscaled to {target[1]}x{target[0]}."
        )
    return Upload(pixels=pixels.to(torch.float32).contiguous(), original_size=original, note=note)
