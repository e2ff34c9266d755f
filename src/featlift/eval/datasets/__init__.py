"""Readers for the dense-probe benchmarks' standard on-disk layouts.

Nothing is downloaded: ``root`` is the folder that holds the dataset (as in torchvision). A missing
folder or file raises :class:`~featlift.errors.DatasetError` (a ``FileNotFoundError``) whose message shows
the expected layout, the missing path and the fix; a set smaller than the published one is read, with a
warning naming the published count.

- :mod:`.classes`: the class tables (names, raw value -> class lookups), as data.
- :mod:`.transform`: the protocols' resize + centre crop and the training flip.
- :mod:`.segmentation`: VOC, ADE20K, Cityscapes, COCO-Stuff (171 fine / 27 coarse on IIC's curated lists).
- :mod:`.depth`: NYU Depth v2 (the labelled frames).
- :mod:`.video`: DAVIS 2017.

:data:`READERS` maps each dataset name to its reader; :func:`make_dataset` is the one entry point.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from featlift.errors import ConfigError

from . import depth, segmentation, video
from ._files import SPLITS, apply_limit, check_split, missing
from .classes import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    CITYSCAPES_LABELID_TO_TRAINID,
    COCOSTUFF27_CLASSES,
    COCOSTUFF_CLASSES,
    COCOSTUFF_RAW,
    IGNORE_INDEX,
    VOC_CLASSES,
)
from .transform import flip_batch, resize_and_crop

__all__ = [
    "ADE20K_CLASSES",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_LABELID_TO_TRAINID",
    "COCOSTUFF27_CLASSES",
    "COCOSTUFF_CLASSES",
    "COCOSTUFF_RAW",
    "DATASETS",
    "DEPTH_DATASETS",
    "IGNORE_INDEX",
    "READERS",
    "SEGMENTATION_DATASETS",
    "SPLITS",
    "VIDEO_DATASETS",
    "VOC_CLASSES",
    "Reader",
    "flip_batch",
    "make_dataset",
    "resize_and_crop",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reader:
    """How one dataset name is read: its task, the function, and the protocol conventions it takes."""

    task: str
    read: Callable[..., Dataset]
    conventions: tuple[str, ...] = ()
    sized: bool = True  # False: items keep their native size (video)


READERS: dict[str, Reader] = {
    "voc": Reader("seg", segmentation.voc),
    "ade20k": Reader("seg", segmentation.ade20k, ("ade20k_classes",)),
    "cityscapes": Reader("seg", segmentation.cityscapes),
    "cocostuff": Reader("seg", segmentation.cocostuff),
    "cocostuff27": Reader("seg", segmentation.cocostuff27, ("coco_images",)),
    "nyuv2": Reader("depth", depth.nyuv2, ("train_frames", "raw_depth")),
    "davis": Reader("video", video.davis, sized=False),
}

DATASETS = tuple(READERS)
SEGMENTATION_DATASETS = tuple(name for name, r in READERS.items() if r.task == "seg")
DEPTH_DATASETS = tuple(name for name, r in READERS.items() if r.task == "depth")
VIDEO_DATASETS = tuple(name for name, r in READERS.items() if r.task == "video")


def make_dataset(
    name: str,
    root: str | Path,
    split: str,
    image_size: int | None = 448,
    *,
    limit: int | None = None,
    ade20k_classes: int = 151,
    coco_images: str = "curated",
    train_frames: str = "geonet",
    raw_depth: bool = True,
) -> Dataset:
    """The dataset ``name`` (one of :data:`DATASETS`) read from its standard layout under ``root``.

    Args:
        name: ``voc``, ``ade20k``, ``cityscapes``, ``cocostuff`` (171 classes), ``cocostuff27`` (27 coarse
            classes), ``nyuv2`` (depth) or ``davis`` (2017 video segmentation).
        root: the folder that holds the dataset's top folder (e.g. the one containing ``VOCdevkit/``).
        split: ``"train"`` or ``"val"`` (NYUv2's ``"val"`` is its 654-image test split).
        image_size: the protocol's output side ``S`` (:func:`resize_and_crop`); None keeps native size.
            DAVIS always keeps native size.
        limit: keep only the first ``limit`` items (items are sorted by id, so this is deterministic).
        ade20k_classes: 151 (label 0 "other" is class 0, as JAFAR and NAF) or 150 (label 0 ignored, mmseg).
        coco_images: ``cocostuff27``'s images: ``"curated"`` (IIC's lists, the field's benchmark) or ``"all"``.
        train_frames: ``nyuv2``'s training frames: ``"geonet"`` (probe3d's GeoNet frames where present, else
            the 795 labelled ones, with a warning) or ``"labelled"``.
        raw_depth: ``nyuv2`` from the labelled ``.mat``: the raw depths (probe3d) rather than the in-painted ones.

    Raises:
        DatasetError: a folder or file of the layout is missing (the message shows the layout).
        ConfigError: an unknown ``name``, ``split`` or convention, or a bad ``limit`` / ``image_size``.
    """
    key = name.lower()
    if key not in READERS:
        raise ConfigError(f"dataset: unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    check_split(split)
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ConfigError(f"image_size: must be a positive number of pixels or None, got {image_size!r}")
    apply_limit([], limit)  # validates limit
    root = Path(root).expanduser()
    if not root.is_dir():
        raise missing(key, root, root, "pass the folder that holds the dataset as root")
    reader = READERS[key]
    given = {
        "ade20k_classes": ade20k_classes,
        "coco_images": coco_images,
        "train_frames": train_frames,
        "raw_depth": raw_depth,
    }
    conventions = {k: given[k] for k in reader.conventions}
    if reader.sized:
        dataset = reader.read(root, split, image_size, limit, **conventions)
    else:
        dataset = reader.read(root, split, limit, **conventions)
    logger.info("%s %s: %d items from %s", key, split, len(dataset), root)  # type: ignore[arg-type]
    return dataset
