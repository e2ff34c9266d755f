"""An on-disk cache of backbone features for evaluation, so probe epochs after the first skip the backbone.

Each entry is keyed on the backbone and the exact image as evaluated:

- the backbone's *fingerprint*: a SHA-1 over its class and every parameter and buffer (so random weights,
  two checkpoints of one architecture, or another dtype never share entries);
- the image's SHA-1 over its float32 pixels and shape, i.e. the crop after resizing (another crop size
  or another dataset image is another key).

Entries live at ``DIR/<fingerprint>/<image sha1>.safetensors`` and hold the backbone's output for that
image exactly as computed (``[C, h, w]``, the backbone's dtype), so a cached run gives the same numbers
as an uncached one; a backbone run under bf16 autocast keeps its entries apart. Every upsampler that
runs a backbone the same way (``bilinear``, ``nearest`` and a featlift model with the same backbone
weights, on the CPU or with ``amp`` off) shares its entries. Entries are written atomically, so a killed
run or two processes writing the same entry never leave a truncated file. A DINOv2-S/14 entry at 448 px
is 32 x 32 x 384 float32 values, 1.5 MB: about 2.2 GB for VOC's 1,464 training images.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .._atomic import atomic_write

__all__ = ["BackboneCache", "fingerprint"]

logger = logging.getLogger(__name__)


def _tensor_bytes(t: Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous()
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def fingerprint(module: nn.Module) -> str:
    """A SHA-1 naming ``module``'s class and weights (parameters and buffers, with their names and dtypes)."""
    digest = hashlib.sha1(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(_tensor_bytes(t))
    return digest.hexdigest()


def _image_key(image: Tensor) -> str:
    digest = hashlib.sha1(f"{tuple(image.shape)}".encode())
    digest.update(_tensor_bytes(image.to(torch.float32)))
    return digest.hexdigest()


class BackboneCache:
    """``lowres(backbone, normalised, images)``: the backbone's features of ``normalised`` (the backbone's
    input), read from ``directory`` where an entry exists, computed and stored where not. ``images`` are
    the evaluated crops [B, 3, H, W] that key the entries."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.dir = Path(directory)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OSError(
                f"feature cache {self.dir}: cannot create the folder ({err}); pass another --cache-dir"
            ) from err
        self._fingerprints: dict[int, str] = {}
        self.hits = 0
        self.misses = 0

    def _folder(self, backbone: nn.Module, variant: str) -> Path:
        key = id(backbone)
        if key not in self._fingerprints:
            self._fingerprints[key] = fingerprint(backbone)
        folder = self.dir / (self._fingerprints[key] + (f"-{variant}" if variant else ""))
        folder.mkdir(exist_ok=True)
        return folder

    def _read(self, path: Path, device: torch.device) -> Tensor | None:
        if not path.is_file():
            return None
        try:
            return load_file(str(path), device=str(device))["lowres"]
        except (SafetensorError, KeyError, OSError) as err:  # a damaged entry is recomputed, not trusted
            logger.warning("feature cache entry %s is unreadable (%s); recomputing it", path, err)
            return None

    @torch.no_grad()
    def lowres(self, backbone: nn.Module, normalised: Tensor, images: Tensor, *, variant: str = "") -> Tensor:
        """``variant`` names a way of running the backbone that changes its output without changing its
        weights (``"bf16-autocast"``): such entries live apart."""
        if normalised.shape[0] != images.shape[0]:
            raise ValueError(f"{normalised.shape[0]} backbone inputs for {images.shape[0]} images")
        folder = self._folder(backbone, variant)
        paths = [folder / f"{_image_key(image)}.safetensors" for image in images]
        found = [self._read(path, normalised.device) for path in paths]
        missing = [i for i, item in enumerate(found) if item is None]
        self.hits += len(found) - len(missing)
        self.misses += len(missing)
        if missing:
            computed = backbone(normalised[missing])
            for j, i in enumerate(missing):
                with atomic_write(paths[i]) as tmp:
                    save_file({"lowres": computed[j].detach().to("cpu").contiguous()}, str(tmp))
                found[i] = computed[j]
        return torch.stack(found)
