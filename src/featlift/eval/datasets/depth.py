"""NYU Depth v2 for the depth probe: the 1449 labelled frames (795 train / 654 test) from the official
``.mat`` file, or the same frames as PNG folders.

Items: ``{"image": float32 [3, S, S] in [0, 1], "depth": float32 [S, S] in metres (0 = invalid), "id"}``;
depth is resized nearest (no invented depths).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from featlift._images import read_image
from featlift.errors import DatasetFormatError, MissingDependencyError, require

from ._files import apply_limit, missing, need, pair_by_stem, warn_if_short
from .transform import resize_and_crop

__all__ = ["NYUv2Depth"]

_EXPECTED = {"train": 795, "val": 654}

_NYU_MAT = "nyu_depth_v2_labeled.mat"
_NYU_SPLITS = "splits.mat"


def _import_h5py() -> Any:
    return require("h5py", feature=f"nyuv2: reading {_NYU_MAT} (MATLAB v7.3 / HDF5)", extra="eval")


def _read_nyu_split(path: Path, split: str) -> list[int]:
    """The 1-based indices of ``split`` (``trainNdxs`` for train, ``testNdxs`` for val) in ``splits.mat``."""
    key = "trainNdxs" if split == "train" else "testNdxs"
    h5py = _import_h5py()
    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            if key not in f:
                raise DatasetFormatError(f"{path}: no {key!r} array (found {sorted(f.keys())})")
            values = np.asarray(f[key][()]).ravel()
    else:
        try:
            from scipy.io import loadmat
        except ImportError as exc:
            raise MissingDependencyError(
                f"{path}: this splits file is a MATLAB v5 file, which needs scipy to read; install it with "
                'pip install "featlift[eval]" (or pip install scipy; or save it as MATLAB v7.3, which h5py reads)'
            ) from exc
        content = loadmat(path)
        if key not in content:
            raise DatasetFormatError(f"{path}: no {key!r} array")
        values = np.asarray(content[key]).ravel()
    indices = sorted(int(v) for v in values)
    if not indices or indices[0] < 1:
        raise DatasetFormatError(f"{path}: {key} must hold 1-based image indices, got {values[:5]}...")
    return indices


class NYUv2Depth(Dataset):
    """NYU Depth v2 (the 1449 labelled frames), from the official ``.mat`` file or a PNG folder layout.

    ``__getitem__(i)`` returns ``{"image": float32 [3, S, S] in [0, 1], "depth": float32 [S, S] in metres
    (0 = invalid), "id": str}``; depth is resized nearest (no invented depths). Native size (``image_size``
    None) is ``[3, H, W]`` / ``[H, W]``. From the ``.mat`` file the ids are the 1-based frame indices
    (``"0001"``...), train = ``trainNdxs`` (795), val = ``testNdxs`` (654).
    """

    task = "depth"
    name = "nyuv2"

    def __init__(
        self,
        image_size: int | None,
        *,
        mat_path: Path | None = None,
        mat_indices: Sequence[int] = (),
        folder_pairs: Sequence[tuple[str, Path, Path]] = (),
    ) -> None:
        self.image_size = image_size
        self._mat_path = mat_path
        self._mat_indices = list(mat_indices)
        self._pairs = list(folder_pairs)
        if mat_path is not None:
            self.ids = [f"{i:04d}" for i in self._mat_indices]
        else:
            self.ids = [item_id for item_id, _, _ in self._pairs]

    def __len__(self) -> int:
        return len(self.ids)

    def _load_mat(self, index: int) -> tuple[Tensor, Tensor]:
        h5py = _import_h5py()
        frame = self._mat_indices[index] - 1
        with h5py.File(self._mat_path, "r") as f:
            n = f["images"].shape[0]
            if frame >= n:
                raise DatasetFormatError(
                    f"{self._mat_path}: split index {frame + 1} is beyond its {n} frames (wrong splits.mat?)"
                )
            # MATLAB stores column-major, so h5py sees images [N, 3, W, H] and depths [N, W, H].
            rgb = np.asarray(f["images"][frame]).transpose(0, 2, 1)
            depth = np.asarray(f["depths"][frame], dtype=np.float32).T
        image = torch.from_numpy(np.ascontiguousarray(rgb)).float().div_(255.0)
        return image, torch.from_numpy(np.ascontiguousarray(depth))

    def _load_folder(self, index: int) -> tuple[Tensor, Tensor]:
        _, rgb_path, depth_path = self._pairs[index]
        image = read_image(rgb_path)
        with Image.open(depth_path) as im:
            if im.mode not in ("I;16", "I;16B", "I;16L", "I"):
                raise DatasetFormatError(
                    f"{depth_path}: depth must be a 16-bit grey PNG in millimetres, got mode {im.mode}"
                )
            millimetres = np.array(im).astype(np.float32)
        if millimetres.shape != tuple(image.shape[-2:]):
            raise DatasetFormatError(
                f"{depth_path}: depth is {millimetres.shape[1]}x{millimetres.shape[0]} but {rgb_path} is "
                f"{image.shape[2]}x{image.shape[1]} (W x H)"
            )
        return image, torch.from_numpy(millimetres / 1000.0)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self._mat_path is not None:
            image, depth = self._load_mat(index)
        else:
            image, depth = self._load_folder(index)
        if self.image_size is not None:
            image, depth = resize_and_crop(image, depth, self.image_size, target_mode="nearest")
        return {"image": image, "depth": depth, "id": self.ids[index]}

    def __repr__(self) -> str:
        return f"NYUv2Depth({len(self)} items)"


def nyuv2(
    root: Path,
    split: str,
    image_size: int | None,
    limit: int | None,
    *,
    train_frames: str = "geonet",
    raw_depth: bool = True,
) -> NYUv2Depth:
    # TODO(depth helper): GeoNet training frames and rawDepths
    folder = root / "nyuv2" / split
    if folder.is_dir():
        pairs = pair_by_stem("nyuv2", root, folder / "rgb", folder / "depth", ".png", ".png")
        warn_if_short("nyuv2", split, len(pairs), _EXPECTED[split], limit)
        return NYUv2Depth(image_size, folder_pairs=apply_limit(pairs, limit))
    for base in (root, root / "nyuv2"):
        if (base / _NYU_MAT).is_file():
            break
    else:
        raise missing(
            "nyuv2",
            root,
            root / _NYU_MAT,
            f"put {_NYU_MAT} and {_NYU_SPLITS} in root (or root/nyuv2/), or the PNG layout in root/nyuv2/{split}/",
        )
    splits = need(
        "nyuv2",
        root,
        base / _NYU_SPLITS,
        f"put the standard split file {_NYU_SPLITS} (trainNdxs / testNdxs, from the NYU Depth v2 site) next to "
        f"{_NYU_MAT}",
    )
    indices = _read_nyu_split(splits, split)
    warn_if_short("nyuv2", split, len(indices), _EXPECTED[split], limit)
    return NYUv2Depth(image_size, mat_path=base / _NYU_MAT, mat_indices=apply_limit(indices, limit))
