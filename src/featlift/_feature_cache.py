"""The on-disk cache of backbone features that training (``TrainConfig.feature_cache``) and evaluation
(``evaluate(..., feature_cache=...)``) share, so epochs after the first skip the backbone.

Each entry is keyed on the backbone and its exact input:

- the backbone's *fingerprint*: a SHA-1 over its class and every parameter and buffer (so random weights,
  two checkpoints of one architecture, or another dtype never share entries);
- the input's SHA-1 over its dtype, shape and values, i.e. the image exactly as the backbone receives it
  (resized, normalised, flipped, downsampled: another crop, another dataset image, another training
  depth or normalisation is another key).

Entries live at ``DIR/<fingerprint>[-<variant>]/<input sha1>.safetensors`` and hold the backbone's
output for that input exactly as computed (``[C, h, w]``, the dtype it came out in), so a cached run gives
the same numbers as an uncached one; a backbone run under bf16 autocast (``variant="bf16-autocast"``)
keeps its entries apart. Anything that runs the same backbone on the same input shares entries, across
upsamplers, runs, training file lists and processes. A damaged entry is recomputed, not trusted. Entries
are written atomically, so a killed run or two processes writing the same entry never leave a truncated
file. A DINOv2-S/14 entry at 448 px is 32 x 32 x 384 float32 values, 1.5 MB: about 2.2 GB for VOC's
1,464 training images.
"""

from __future__ import annotations

import hashlib
import logging
import os
import weakref
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ._atomic import atomic_write

__all__ = ["FeatureCache", "fingerprint"]

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


def _input_keys(inputs: Tensor) -> list[str]:
    """One SHA-1 per item of the batch ``inputs``, over its dtype, shape and values (one copy to the CPU)."""
    cpu = inputs.detach().to("cpu").contiguous()
    keys = []
    for item in cpu:
        digest = hashlib.sha1(f"{item.dtype}:{tuple(item.shape)}".encode())
        digest.update(_tensor_bytes(item))
        keys.append(digest.hexdigest())
    return keys


class FeatureCache:
    """``lowres(backbone, inputs)``: the backbone's features of ``inputs`` (its exact input batch), read
    from ``directory`` where an entry exists, computed and stored where not. :attr:`hits` and
    :attr:`misses` count the items read and computed."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.dir = Path(directory)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OSError(
                f"feature cache {self.dir}: cannot create the folder ({err}); give the feature cache another folder"
            ) from err
        self._fingerprints: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()
        self.hits = 0
        self.misses = 0

    def _folder(self, backbone: nn.Module, variant: str) -> Path:
        if backbone not in self._fingerprints:  # a frozen backbone is hashed once
            self._fingerprints[backbone] = fingerprint(backbone)
        folder = self.dir / (self._fingerprints[backbone] + (f"-{variant}" if variant else ""))
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
    def lowres(self, backbone: nn.Module, inputs: Tensor, *, variant: str = "") -> Tensor:
        """``backbone(inputs)``, item by item from the cache where it holds them; the key of an item is
        the exact input the backbone receives.

        ``variant`` names a way of running the backbone that changes its output without changing its
        weights (``"bf16-autocast"``): such entries live apart."""
        folder = self._folder(backbone, variant)
        paths = [folder / f"{key}.safetensors" for key in _input_keys(inputs)]
        found = [self._read(path, inputs.device) for path in paths]
        missing = [i for i, item in enumerate(found) if item is None]
        self.hits += len(found) - len(missing)
        self.misses += len(missing)
        if missing:
            computed = backbone(inputs[missing])
            for j, i in enumerate(missing):
                with atomic_write(paths[i]) as tmp:
                    save_file({"lowres": computed[j].detach().to("cpu").contiguous()}, str(tmp))
                found[i] = computed[j]
        return torch.stack(found)
