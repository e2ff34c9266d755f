"""NYU Depth v2 for the depth probe: the 1449 labelled frames (795 train / 654 test) from the official
``.mat`` file or the same frames as PNG folders, and probe3d's training frames from GeoNet.

probe3d (``mbanani/probe3d``) tests on the 654 labelled test frames with their *raw* depths (``rawDepths``,
not the in-painted ``depths``) and trains on GeoNet's NYU frames (``ROOT/nyuv2_geonet/*.mat``). Without
those, training falls back to the 795 labelled training frames, with a warning.

Items: ``{"image": float32 [3, S, S] in [0, 1], "depth": float32 [S, S] in metres (0 = invalid), "id"}``;
depth is resized nearest (no invented depths). Depth deeper than the protocol's ``max_depth`` is kept here;
the loss and the metric treat it as invalid.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from featlift._images import read_image
from featlift.errors import ConfigError, DatasetFormatError, MissingDependencyError, require

from ..depth import read_depth_png
from ..protocols import TRAIN_FRAMES
from ._files import apply_limit, missing, need, pair_by_stem, warn_if_short
from .transform import resize_and_crop

__all__ = ["GEONET_BAD_POSITIONS", "GEONET_MEAN_TWICE", "NYUGeoNet", "NYUv2Depth"]

logger = logging.getLogger(__name__)

_EXPECTED = {"train": 795, "val": 654}

_NYU_MAT = "nyu_depth_v2_labeled.mat"
_NYU_SPLITS = "splits.mat"


_GEONET_DIRS = ("nyuv2_geonet", "nyuv2/geonet")

GEONET_BAD_POSITIONS = (21181, 6919)
"""Positions in the sorted GeoNet listing that probe3d drops (two bad frames), deleted in this order."""

GEONET_MEAN_TWICE = (2 * 122.175, 2 * 116.169, 2 * 103.508)
"""Added back to channels 0, 1, 2 of a GeoNet ``img`` (stored with these means subtracted twice) before the
cast to uint8, as probe3d does."""

_GEONET_SIZE = (480, 640)  # probe3d crops every GeoNet frame to [:480, :640]

_GEONET_SOURCE = "GeoNet's NYU training data (the xjqi/GeoNet repository on GitHub, which probe3d's README points to)"


def _import_h5py() -> Any:
    return require("h5py", feature=f"nyuv2: reading {_NYU_MAT} (MATLAB v7.3 / HDF5)", extra="eval")


def _import_loadmat(what: str, also: str = "") -> Any:
    """scipy's ``loadmat`` (MATLAB v5 files), or the missing-dependency error naming ``what`` needs it."""
    try:
        from scipy.io import loadmat
    except ImportError as exc:
        raise MissingDependencyError(
            f"{what} is a MATLAB v5 file, which needs scipy to read; install it with "
            f'pip install "featlift[eval]" (or pip install scipy{also})'
        ) from exc
    return loadmat


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
        loadmat = _import_loadmat(f"{path}: this splits file", "; or save it as MATLAB v7.3, which h5py reads")
        content = loadmat(path)
        if key not in content:
            raise DatasetFormatError(f"{path}: no {key!r} array")
        values = np.asarray(content[key]).ravel()
    indices = sorted(int(v) for v in values)
    if not indices or indices[0] < 1:
        raise DatasetFormatError(f"{path}: {key} must hold 1-based image indices, got {values[:5]}...")
    return indices


class _DepthFrames(Dataset):
    """What both NYU readers share: ``ids``, and items ``{"image", "depth", "id"}`` from ``_load(i)``,
    resized and cropped to ``image_size`` (depth nearest: no invented depths)."""

    task = "depth"
    name = "nyuv2"
    image_size: int | None
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def _load(self, index: int) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, depth = self._load(index)
        if self.image_size is not None:
            image, depth = resize_and_crop(image, depth, self.image_size, target_mode="nearest")
        return {"image": image, "depth": depth, "id": self.ids[index]}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} items)"


class NYUv2Depth(_DepthFrames):
    """NYU Depth v2 (the 1449 labelled frames), from the official ``.mat`` file or a PNG folder layout.

    ``__getitem__(i)`` returns ``{"image": float32 [3, S, S] in [0, 1], "depth": float32 [S, S] in metres
    (0 = invalid), "id": str}``; depth is resized nearest (no invented depths). Native size (``image_size``
    None) is ``[3, H, W]`` / ``[H, W]``. From the ``.mat`` file the ids are the 1-based frame indices
    (``"0001"``...), train = ``trainNdxs`` (795), val = ``testNdxs`` (654), and the depth is the array
    ``depth_key``: ``"rawDepths"`` (the sensor's, probe3d) or ``"depths"`` (in-painted).
    """

    def __init__(
        self,
        image_size: int | None,
        *,
        mat_path: Path | None = None,
        mat_indices: Sequence[int] = (),
        folder_pairs: Sequence[tuple[str, Path, Path]] = (),
        depth_key: str = "rawDepths",
    ) -> None:
        self.image_size = image_size
        self.depth_key = depth_key
        self._mat_path = mat_path
        self._mat_indices = list(mat_indices)
        self._pairs = list(folder_pairs)
        if mat_path is not None:
            self.ids = [f"{i:04d}" for i in self._mat_indices]
        else:
            self.ids = [item_id for item_id, _, _ in self._pairs]

    def _load(self, index: int) -> tuple[Tensor, Tensor]:
        return self._load_mat(index) if self._mat_path is not None else self._load_folder(index)

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
            depth = np.asarray(f[self.depth_key][frame], dtype=np.float32).T
        image = torch.from_numpy(np.ascontiguousarray(rgb)).float().div_(255.0)
        return image, torch.from_numpy(np.ascontiguousarray(depth))

    def _load_folder(self, index: int) -> tuple[Tensor, Tensor]:
        _, rgb_path, depth_path = self._pairs[index]
        image = read_image(rgb_path)
        depth = read_depth_png(depth_path)
        if tuple(depth.shape) != tuple(image.shape[-2:]):
            raise DatasetFormatError(
                f"{depth_path}: depth is {depth.shape[1]}x{depth.shape[0]} but {rgb_path} is "
                f"{image.shape[2]}x{image.shape[1]} (W x H)"
            )
        return image, depth


class NYUGeoNet(_DepthFrames):
    """probe3d's NYU training frames: GeoNet's MATLAB v5 ``.mat`` files, one per frame.

    Each file holds ``"img"`` (``H x W x 3``, stored with the channel means subtracted twice: the values of
    :data:`GEONET_MEAN_TWICE` are added back to channels 0, 1, 2, the result clipped to 0..255 and truncated to
    uint8, as probe3d casts it; the channel order is kept as stored), ``"depth"`` (metres) and ``"norm"``
    (unused). Both are cropped to ``[:480, :640]``. ``__getitem__(i)`` returns ``{"image": float32 [3, S, S] in
    [0, 1], "depth": float32 [S, S] metres (0 = invalid), "id": file stem}``, resized as :class:`NYUv2Depth`.
    """

    def __init__(self, image_size: int | None, files: Sequence[Path]) -> None:
        self.image_size = image_size
        self._files = list(files)
        self.ids = [path.stem for path in self._files]

    def _load(self, index: int) -> tuple[Tensor, Tensor]:
        path = self._files[index]
        content = _import_loadmat(str(path))(path)
        for key in ("img", "depth"):
            if key not in content:
                found = sorted(k for k in content if not k.startswith("__"))
                raise DatasetFormatError(f"{path}: no {key!r} array (found {found}); is this a GeoNet NYU frame?")
        h, w = _GEONET_SIZE
        img = np.asarray(content["img"])[:h, :w]
        depth = np.asarray(content["depth"])[:h, :w]
        if img.ndim != 3 or img.shape[2] != 3:
            raise DatasetFormatError(f"{path}: 'img' must be H x W x 3, got shape {np.asarray(content['img']).shape}")
        if depth.shape != img.shape[:2]:
            raise DatasetFormatError(
                f"{path}: 'depth' is {depth.shape} after the [:480, :640] crop but 'img' is {img.shape[:2]}"
            )
        rgb = img.astype(np.float64) + np.asarray(GEONET_MEAN_TWICE)
        rgb = np.clip(rgb, 0, 255).astype(np.uint8)  # truncation, as probe3d's astype(np.uint8)
        image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().div_(255.0)
        return image, torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))


def _geonet_folder(root: Path) -> Path | None:
    for sub in _GEONET_DIRS:
        if (root / sub).is_dir():
            return root / sub
    return None


def _geonet(root: Path, folder: Path, image_size: int | None, limit: int | None) -> NYUGeoNet:
    files = sorted(folder.glob("*.mat"), key=lambda path: path.name)
    if not files:
        raise missing(
            "nyuv2",
            root,
            folder / "*.mat",
            f"the GeoNet folder holds no .mat file: fill it with {_GEONET_SOURCE}, or remove it and pass "
            "--train-frames labelled (train_frames='labelled') to train on the 795 labelled frames",
        )
    if len(files) > GEONET_BAD_POSITIONS[0]:
        for position in GEONET_BAD_POSITIONS:
            del files[position]
    else:
        logger.warning(
            "nyuv2 train: %d GeoNet frames in %s, fewer than the full set; probe3d drops two bad frames at "
            "positions %s of the full sorted listing, which are not dropped here (the numbers will not match "
            "probe3d's)",
            len(files),
            folder,
            " and ".join(str(p) for p in GEONET_BAD_POSITIONS),
        )
    return NYUGeoNet(image_size, apply_limit(files, limit))


def _check_mat(path: Path, depth_key: str) -> None:
    h5py = _import_h5py()
    if not h5py.is_hdf5(path):
        raise DatasetFormatError(
            f"{path}: not a MATLAB v7.3 (HDF5) file; use the official {_NYU_MAT} from the NYU Depth v2 site"
        )
    with h5py.File(path, "r") as f:
        keys = sorted(f.keys())
    if "images" not in keys:
        raise DatasetFormatError(f"{path}: no 'images' array (found {keys}); is this nyu_depth_v2_labeled.mat?")
    if depth_key not in keys:
        other = "depths" if depth_key == "rawDepths" else "rawDepths"
        flag = "raw_depth=False" if depth_key == "rawDepths" else "raw_depth=True"
        raise DatasetFormatError(
            f"{path}: no {depth_key!r} array (found {keys}); use the official nyu_depth_v2_labeled.mat, which "
            + (f"holds both, or pass {flag} to read {other!r}" if other in keys else "holds both depths and rawDepths")
        )


def nyuv2(
    root: Path,
    split: str,
    image_size: int | None,
    limit: int | None,
    *,
    train_frames: str = "geonet",
    raw_depth: bool = True,
) -> Dataset:
    """NYU Depth v2 ``split`` under ``root`` (``"val"`` = the 654 labelled test frames).

    ``train_frames`` (``"train"`` only): ``"geonet"`` reads probe3d's GeoNet frames from
    ``root/nyuv2_geonet/*.mat`` (or ``root/nyuv2/geonet/``) where that folder exists, and otherwise warns and
    falls back to the 795 labelled training frames; ``"labelled"`` always reads the labelled frames.
    ``raw_depth``: from ``nyu_depth_v2_labeled.mat``, read ``rawDepths`` (True, probe3d) or the in-painted
    ``depths``; the PNG layout holds whichever depths were written into it.
    """
    if train_frames not in TRAIN_FRAMES:
        raise ConfigError(f"train_frames: one of {TRAIN_FRAMES}, got {train_frames!r}")
    if not isinstance(raw_depth, bool):
        raise ConfigError(f"raw_depth: True or False, got {raw_depth!r}")
    if split == "train" and train_frames == "geonet":
        folder = _geonet_folder(root)
        if folder is not None:
            return _geonet(root, folder, image_size, limit)
        logger.warning(
            "nyuv2 train: probe3d trains on NYU's GeoNet frames, and none are in %s or %s; training on the 795 "
            "labelled frames instead (the numbers will not match probe3d's). Put %s (its .mat files) there, "
            "or pass --train-frames labelled (train_frames='labelled') to choose the labelled frames",
            root / _GEONET_DIRS[0],
            root / _GEONET_DIRS[1],
            _GEONET_SOURCE,
        )
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
    depth_key = "rawDepths" if raw_depth else "depths"
    _check_mat(base / _NYU_MAT, depth_key)
    warn_if_short("nyuv2", split, len(indices), _EXPECTED[split], limit)
    return NYUv2Depth(
        image_size, mat_path=base / _NYU_MAT, mat_indices=apply_limit(indices, limit), depth_key=depth_key
    )
