"""On-disk cache of backbone features, so repeated epochs skip the backbone.

One file per (image, horizontal flip) holds the features of every downsampling level 0..D the run can
ask for. The folder is tied to one backbone, crop size, depth count and training file list
(``key.json``); reusing it with other settings is refused rather than silently mixing features. Every
file is written atomically, so a killed run never leaves a truncated entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .._atomic import atomic_write
from .objective import depth_targets

__all__ = ["FeatureCache"]


class FeatureCache:
    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        backbone: str,
        image_size: int,
        depths: int,
        files: list[str | os.PathLike] | None = None,
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.depths = depths
        key = {"backbone": backbone, "image_size": image_size, "depths": depths}
        if files is not None:  # entries are keyed by file index: tie the cache to the exact file list
            key["files_sha1"] = hashlib.sha1("\n".join(map(str, files)).encode()).hexdigest()
        key_file = self.dir / "key.json"
        if key_file.is_file():
            found = json.loads(key_file.read_text())
            if found != key:
                raise ValueError(
                    f"feature cache {self.dir} was built for {found}, not {key}; use another folder or delete it"
                )
        else:
            with atomic_write(key_file) as tmp:
                tmp.write_text(json.dumps(key))
        self.hits = 0
        self.misses = 0

    def _path(self, index: int, flipped: bool) -> Path:
        return self.dir / f"{index}_{int(flipped)}.safetensors"

    def targets(
        self, backbone: nn.Module, images: Tensor, indices: list[int], flipped: list[bool], depth: int
    ) -> list[Tensor]:
        """:func:`depth_targets` for ``images`` (coarsest first), read from disk where cached."""
        levels: list[dict[str, Tensor] | None] = []
        for index, flip in zip(indices, flipped, strict=True):
            path = self._path(index, flip)
            levels.append(load_file(str(path), device=str(images.device)) if path.is_file() else None)
        missing = [i for i, item in enumerate(levels) if item is None]
        self.hits += len(levels) - len(missing)
        self.misses += len(missing)
        if missing:
            computed = depth_targets(backbone, images[missing], self.depths)  # levels D..0
            for j, i in enumerate(missing):
                item = {f"level{self.depths - k}": computed[k][j].contiguous() for k in range(len(computed))}
                with atomic_write(self._path(indices[i], flipped[i])) as tmp:
                    save_file({name: t.cpu() for name, t in item.items()}, str(tmp))
                levels[i] = item
        return [torch.stack([item[f"level{k}"] for item in levels]) for k in range(depth, -1, -1)]
