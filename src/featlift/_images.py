"""Images in, float tensors out: the one pre-processing path every input kind goes through.

:func:`image_batch` turns whatever a user passes (a PIL image, a numpy array, a tensor, a batch or a
list of these) into float32 tensors ``[3, H, W]`` in [0, 1], by one rule per kind, so that the same
pixels give the same tensor however they arrive:

============================  ===================================================================
input                         becomes
============================  ===================================================================
PIL, 8-bit modes (``1``,      ``image.convert("RGB")`` (grey is replicated, palette looked up,
``L``, ``P``, ``RGB``,        alpha dropped without compositing), then ``uint8 / 255``
``RGBA``, ``CMYK``, ...)
PIL, 16-bit modes             ``uint16 / 65535``, grey replicated to RGB (``I`` must hold 0-65535)
(``I;16*``, ``I``)
PIL, mode ``F``               float values, taken as [0, 1]
numpy ``uint8``               ``/ 255``; ``uint16``: ``/ 65535``; ``float16/32/64``: as [0, 1]
numpy shapes                  ``HxW`` and ``HxWx1`` (grey), ``HxWx3`` (RGB), ``HxWx4`` (alpha
                              dropped), or a batch ``BxHxWxC`` of those
tensor shapes                 ``[C, H, W]`` or ``[B, C, H, W]`` with C = 1, 3 or 4 (as for numpy),
                              or ``[H, W]``; float as [0, 1], ``uint8`` ``/ 255``
list or tuple                 each item by the rules above, in order
============================  ===================================================================

Refused with a message that names the problem: other dtypes (bool, signed integers, complex), other
shapes, empty images, NaN or infinite pixels, and float pixels more than :data:`FLOAT_TOLERANCE` outside
[0, 1] (the usual sign of a 0-255 image or of one already normalised).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

__all__ = [
    "FLOAT_TOLERANCE",
    "IMAGE_EXTENSIONS",
    "PendingImage",
    "image_batch",
    "list_image_files",
    "nearest_index",
    "patch_multiple",
    "read_image",
    "resize_and_crop",
    "resize_image",
    "resize_to_patch_multiple",
    "to_image_tensor",
]

FLOAT_TOLERANCE = 0.2  # float pixels may overshoot [0, 1] by this much (resampling ringing), no more

# Image files featlift picks up in folders (the CLI's inputs, training data): the formats people use that
# Pillow opens. Matched case-insensitively.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm")

_CHANNELS = {1: "grey", 3: "RGB", 4: "RGBA"}
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_UNSUPPORTED = (
    "pass a PIL image, a numpy array (HxW, HxWxC or BxHxWxC; uint8, uint16 or float in [0, 1]), a tensor "
    "([C, H, W] or [B, C, H, W] with C = 1, 3 or 4; float in [0, 1] or uint8), or a list of these"
)


def _pil_to_array(image: Image.Image) -> np.ndarray:
    """A PIL image as an HxW or HxWx3 numpy array whose dtype says how to scale it."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        array = np.asarray(image)
        if mode == "I":  # 32-bit integer mode: 16-bit PNGs and TIFFs open as "I" in many Pillow versions
            if array.size and (array.min() < 0 or array.max() > 65535):
                raise ValueError(
                    f"images: a PIL image in mode 'I' must hold 16-bit values (0-65535), got "
                    f"{array.min()}..{array.max()}; scale it to [0, 1] and pass a float tensor"
                )
        return array.astype(np.uint16)
    if mode == "F":
        return np.asarray(image, dtype=np.float32)
    for route in (("RGB",), ("RGBA", "RGB")):  # a few modes (La) only reach RGB through RGBA
        try:
            converted = image
            for target in route:
                converted = converted.convert(target)
            return np.asarray(converted, dtype=np.uint8)
        except ValueError:
            continue
    raise ValueError(f"images: PIL image mode {mode!r} cannot be converted to RGB; convert it yourself first")


def _check_values(tensor: Tensor, what: str) -> None:
    """Finite values in [0, 1] (with the tolerance) for a float image."""
    if tensor.numel() == 0:
        return
    low, high = torch.aminmax(tensor)
    low, high = float(low), float(high)
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"images: {what} contains NaN or infinite pixel values; fix or drop the image")
    if low < -FLOAT_TOLERANCE or high > 1 + FLOAT_TOLERANCE:
        hint = "pass un-normalised pixels" if low < -FLOAT_TOLERANCE else "divide 0-255 images by 255"
        raise ValueError(
            f"images: float pixels must lie in [0, 1], but {what} ranges over [{low:.3g}, {high:.3g}]; {hint} "
            "(featlift normalises for the backbone itself)"
        )


def _channels_first_from_numpy(array: np.ndarray, what: str) -> Tensor:
    """HxW, HxWx1, HxWx3 or HxWx4 numpy (uint8, uint16 or float) -> the same pixels as a [C, H, W] view."""
    if not (array.dtype in (np.uint8, np.uint16) or array.dtype.kind == "f") or array.dtype.itemsize > 8:
        raise TypeError(
            f"images: unsupported numpy dtype {array.dtype} in {what}; use uint8 (0-255), uint16 (0-65535) or "
            "float16/32/64 in [0, 1]"
        )
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in _CHANNELS:
        looks_chw = array.ndim == 3 and array.shape[0] in _CHANNELS
        raise ValueError(
            f"images: numpy images must be HxW, HxWx1, HxWx3 or HxWx4 (channels last), {what} has shape "
            f"{array.shape}" + ("; it looks channels-first: transpose it or pass a tensor" if looks_chw else "")
        )
    if not array.flags.writeable:  # torch.from_numpy warns on read-only arrays (e.g. np.asarray(pil_image))
        array = array.copy()
    return torch.from_numpy(array).permute(2, 0, 1)


class PendingImage:
    """One validated image whose pixels are converted on :meth:`load`.

    Construction checks everything that the type, shape and dtype tell (layout, channels, dtype, empty
    size) without converting the pixels, so a caller can budget memory from :attr:`size` before paying
    for a float copy; :meth:`load` converts and checks the values.
    """

    def __init__(self, image: Any, what: str = "the image") -> None:
        self.what = what
        if isinstance(image, Image.Image):
            image = _pil_to_array(image)
        if isinstance(image, np.ndarray):
            image = _channels_first_from_numpy(image, what)
        elif isinstance(image, Tensor):
            if image.dim() == 2:
                image = image[None]
            if image.dim() != 3 or image.shape[0] not in _CHANNELS:
                raise ValueError(
                    f"images: image tensors must be [C, H, W] or [B, C, H, W] with C = 1, 3 or 4, or [H, W]; "
                    f"{what} has shape {tuple(image.shape)}"
                )
            if image.dtype not in (torch.uint8, torch.uint16) and not (
                image.is_floating_point() and not image.is_complex()
            ):
                raise TypeError(
                    f"images: unsupported pixel dtype {image.dtype} in {what}; use float in [0, 1], uint8 (0-255) "
                    "or uint16 (0-65535)"
                )
            image = image.detach()
        else:
            raise TypeError(f"images: unsupported image type {type(image).__name__} for {what}; {_UNSUPPORTED}")
        _, h, w = image.shape
        if h == 0 or w == 0:
            raise ValueError(f"images: {what} is empty ({h}x{w} pixels); every image needs at least 1x1 pixel")
        self._pixels = image

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return tuple(self._pixels.shape[-2:])

    def load(self) -> Tensor:
        """The pixels as float32 ``[3, H, W]`` in [0, 1] on the CPU (finite and range-checked)."""
        tensor = self._pixels.cpu()
        if tensor.dtype == torch.uint8:
            tensor = tensor.float() / 255
        elif tensor.dtype == torch.uint16:
            tensor = tensor.float() / 65535
        else:
            tensor = tensor.float()
            _check_values(tensor, self.what)
        c, h, w = tensor.shape
        if c == 1:
            return tensor.expand(3, h, w)
        return tensor[:3] if c == 4 else tensor


def to_image_tensor(image: Any, what: str = "the image") -> Tensor:
    """One image (not a batch) as float32 ``[3, H, W]`` in [0, 1], by the module's rules.

    ``what`` names the image in error messages (e.g. ``"images[2]"``).
    """
    return PendingImage(image, what).load()


def _is_batch(item: Any) -> bool:
    return (isinstance(item, Tensor) and item.dim() == 4) or (isinstance(item, np.ndarray) and item.ndim == 4)


def image_batch(images: Any) -> list[PendingImage]:
    """Every image in ``images`` (one image, a batch, or a list/tuple of images and batches), validated,
    in order; :meth:`PendingImage.load` gives each one's float32 ``[3, H, W]`` pixels in [0, 1]."""
    listed = isinstance(images, (list, tuple))
    items = list(images) if listed else [images]
    if listed and not items:
        raise ValueError("images: got an empty list of images; pass at least one")
    out: list[PendingImage] = []
    for i, item in enumerate(items):
        name = f"images[{i}]" if listed else "the image"
        if _is_batch(item):
            if len(item) == 0:
                raise ValueError(f"images: {name} is an empty batch (batch size 0); pass at least one image")
            out.extend(PendingImage(sub, f"{name}[{j}]") for j, sub in enumerate(item))
        else:
            out.append(PendingImage(item, name))
    return out


def list_image_files(folder: str | Path) -> list[Path]:
    """Files under ``folder`` (recursive, sorted) whose extension is one of :data:`IMAGE_EXTENSIONS`, in
    any letter case."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def patch_multiple(size: tuple[int, int], patch: int) -> tuple[int, int]:
    """``(H, W)`` rounded to the nearest multiple of ``patch`` per side (at least one patch)."""
    return tuple(max(patch, round(d / patch) * patch) for d in size)


def read_image(path: str | Path, what: str | None = None) -> Tensor:
    """An image file, decoded in full, as float32 ``[3, H, W]`` in [0, 1] by the module's rules; ``what``
    names it in errors (default: the path)."""
    with Image.open(path) as image:
        image.load()
        return to_image_tensor(image, what or str(path))


def resize_image(pixels: Tensor, size: tuple[int, int]) -> Tensor:
    """Float maps ``[B, C, H, W]`` resized to ``size`` (H, W): the one image resize, bilinear, antialiased,
    ``align_corners=False``, computed in float32 and returned in the input's dtype."""
    return F.interpolate(pixels.float(), size=size, mode="bilinear", antialias=True, align_corners=False).to(
        pixels.dtype
    )


def resize_to_patch_multiple(pixels: Tensor, patch: int) -> Tensor:
    """Float pixels [B, 3, H, W] resized (:func:`resize_image`) to :func:`patch_multiple` of their size;
    returned as they are when it already is one."""
    size = patch_multiple(tuple(pixels.shape[-2:]), patch)
    if size == tuple(pixels.shape[-2:]):
        return pixels
    return resize_image(pixels, size)


def nearest_index(n_in: int, n_out: int) -> Tensor:
    """Source indices of a pixel-centre nearest resize ``n_in -> n_out`` (PyTorch's ``nearest-exact``)."""
    scale = n_in / n_out
    return ((torch.arange(n_out, dtype=torch.float64) + 0.5) * scale).floor().long().clamp_(0, n_in - 1)


def resize_and_crop(
    image: Tensor, target: Tensor | None, size: int, *, target_mode: str = "nearest"
) -> tuple[Tensor, Tensor | None]:
    """The dense-probe protocol: shorter side resized to ``size``, then a centre crop to ``size x size``.

    Args:
        image: float ``[C, H, W]``. Resized bilinearly, antialiased, ``align_corners=False``.
        target: ``[H, W]`` of any dtype (class ids, depth in metres) or None. With ``target_mode="nearest"``
            (labels, depth: no invented values) each output pixel takes the input pixel under its centre,
            ``src = floor((dst + 0.5) * in / out)`` (PyTorch's ``nearest-exact``, PIL's ``NEAREST``);
            ``"bilinear"`` resizes it like the image (float targets only).
        size: the output side ``S``.

    Returns:
        ``(image [C, S, S], target [S, S] or None)``, dtypes kept. The longer side becomes
        ``int(long * S / short)`` (as torchvision's ``Resize``) and the crop starts at
        ``int(round((new_long - S) / 2))`` (as torchvision's ``CenterCrop``: Python's round, halves to even).
    """
    if image.ndim != 3:
        raise ValueError(f"resize_and_crop: image must be [C, H, W], got shape {tuple(image.shape)}")
    if size < 1:
        raise ValueError(f"resize_and_crop: size must be >= 1, got {size}")
    if target_mode not in ("nearest", "bilinear"):
        raise ValueError(f"resize_and_crop: target_mode must be 'nearest' or 'bilinear', got {target_mode!r}")
    h, w = image.shape[-2:]
    if target is not None and tuple(target.shape) != (h, w):
        raise ValueError(f"resize_and_crop: target shape {tuple(target.shape)} does not match the image's {(h, w)}")
    if h <= w:
        new_h, new_w = size, int(w * size / h)
    else:
        new_h, new_w = int(h * size / w), size
    # torchvision's CenterCrop: int(round(excess / 2)), Python's round (halves to even)
    top, left = round((new_h - size) / 2.0), round((new_w - size) / 2.0)

    if (new_h, new_w) != (h, w):
        image = resize_image(image[None], (new_h, new_w))[0]
    image = image[:, top : top + size, left : left + size].contiguous()

    if target is not None:
        if target_mode == "nearest":
            rows = nearest_index(h, new_h)[top : top + size]
            cols = nearest_index(w, new_w)[left : left + size]
            target = target[rows][:, cols].contiguous()
        else:
            if not target.is_floating_point():
                raise ValueError("resize_and_crop: target_mode='bilinear' needs a float target")
            target = resize_image(target[None, None], (new_h, new_w))[0, 0]
            target = target[top : top + size, left : left + size].contiguous()
    return image, target
