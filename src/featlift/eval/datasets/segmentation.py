"""Semantic segmentation readers: PASCAL VOC 2012, ADE20K, Cityscapes, COCO-Stuff (171 fine or 27 coarse).

Items: ``{"image": float32 [3, S, S] in [0, 1], "label": int64 [S, S] (class index or 255 = ignored),
"id": str}``, with ``S = image_size`` (native size when None), sorted by id.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from featlift._images import read_image
from featlift.errors import ConfigError, DatasetFormatError

from . import classes
from ._files import apply_limit, missing, need, pair_by_stem, read_id_list, read_index_png, warn_if_short
from .transform import resize_and_crop

__all__ = ["ADE20K_CLASS_COUNTS", "COCO_IMAGE_LISTS", "CURATED_LIST", "SegmentationDataset"]

# The published sizes of each split (a smaller set is evaluated with a warning).
_EXPECTED = {
    ("voc", "train"): 1464,
    ("voc", "val"): 1449,
    ("ade20k", "train"): 20210,
    ("ade20k", "val"): 2000,
    ("cityscapes", "train"): 2975,
    ("cityscapes", "val"): 500,
    ("cocostuff", "train"): 118287,
    ("cocostuff", "val"): 5000,
    # IIC's curated coarse lists (the figures NAF asserts)
    ("cocostuff27-curated", "train"): 97702,
    ("cocostuff27-curated", "val"): 4172,
}

ADE20K_CLASS_COUNTS = (151, 150)
"""151: label 0 ("other") is class 0 (JAFAR, NAF); 150: label 0 ignored (mmseg)."""

COCO_IMAGE_LISTS = ("curated", "all")
"""``curated``: IIC's curated coarse lists (the field's "COCO" column); ``all``: every image of the split."""

CURATED_LIST = "Coco164kFull_Stuff_Coarse.txt"
_CURATED_SOURCE = (
    "IIC publishes them (github.com/xu-ji/IIC, datasets/README.txt: the COCO-Stuff 'curated' folder; STEGO's "
    "cocostuff download contains the same curated/ folder)"
)


class SegmentationDataset(Dataset):
    """Pairs of (image file, label file) with a uint8 -> class lookup table.

    ``__getitem__(i)`` returns ``{"image": float32 [3, S, S] in [0, 1], "label": int64 [S, S] (values in
    ``0..num_classes-1`` or :data:`~featlift.eval.datasets.classes.IGNORE_INDEX`), "id": str}`` with
    ``S = image_size`` (native ``[3, H, W]`` / ``[H, W]`` when ``image_size`` is None). ``ids[i]`` is item
    ``i``'s id.
    """

    task = "seg"
    ignore_index = classes.IGNORE_INDEX

    def __init__(
        self,
        name: str,
        pairs: Sequence[tuple[str, Path, Path]],
        class_names: list[str],
        table: np.ndarray,
        image_size: int | None,
    ) -> None:
        self.name = name
        self.class_names = list(class_names)
        self.num_classes = len(class_names)
        self.image_size = image_size
        self._pairs = list(pairs)
        self._table = table
        self.ids = [item_id for item_id, _, _ in self._pairs]

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item_id, image_path, label_path = self._pairs[index]
        image = read_image(image_path)
        raw = read_index_png(label_path)
        if raw.shape != tuple(image.shape[-2:]):
            raise DatasetFormatError(
                f"{label_path}: label map is {raw.shape[1]}x{raw.shape[0]} but its image {image_path} is "
                f"{image.shape[2]}x{image.shape[1]} (W x H); the pair must have the same size."
            )
        label = torch.from_numpy(self._table[raw])
        if self.image_size is not None:
            image, label = resize_and_crop(image, label, self.image_size, target_mode="nearest")
        return {"image": image, "label": label, "id": item_id}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} items, {self.num_classes} classes)"


def voc(root: Path, split: str, image_size: int | None, limit: int | None) -> SegmentationDataset:
    base = root / "VOCdevkit" / "VOC2012"
    ids = read_id_list(need("voc", root, base / "ImageSets" / "Segmentation" / f"{split}.txt"))
    warn_if_short("voc", split, len(ids), _EXPECTED["voc", split], limit)
    pairs = [
        (
            item_id,
            need("voc", root, base / "JPEGImages" / f"{item_id}.jpg"),
            need("voc", root, base / "SegmentationClass" / f"{item_id}.png"),
        )
        for item_id in apply_limit(ids, limit)
    ]
    return SegmentationDataset("voc", pairs, classes.VOC_CLASSES, classes.VOC_TABLE, image_size)


def ade20k(
    root: Path, split: str, image_size: int | None, limit: int | None, *, ade20k_classes: int = 151
) -> SegmentationDataset:
    if ade20k_classes not in ADE20K_CLASS_COUNTS:
        raise ConfigError(f"ade20k_classes: {ADE20K_CLASS_COUNTS} (with or without 'other'), got {ade20k_classes!r}")
    base = root / "ADEChallengeData2016"
    folder = {"train": "training", "val": "validation"}[split]
    pairs = pair_by_stem("ade20k", root, base / "images" / folder, base / "annotations" / folder, ".jpg", ".png")
    warn_if_short("ade20k", split, len(pairs), _EXPECTED["ade20k", split], limit)
    if ade20k_classes == 151:
        names, table = classes.ADE20K_CLASSES_WITH_OTHER, classes.ADE20K_TABLE_WITH_OTHER
    else:
        names, table = classes.ADE20K_CLASSES, classes.ADE20K_TABLE
    return SegmentationDataset("ade20k", apply_limit(pairs, limit), names, table, image_size)


def cityscapes(root: Path, split: str, image_size: int | None, limit: int | None) -> SegmentationDataset:
    image_root = need("cityscapes", root, root / "leftImg8bit" / split)
    label_root = need("cityscapes", root, root / "gtFine" / split)
    suffix = "_leftImg8bit.png"
    images = sorted(image_root.glob(f"*/*{suffix}"), key=lambda p: p.name)
    if not images:
        raise missing("cityscapes", root, image_root / "CITY" / f"*{suffix}", "the image folder is empty; fill it")
    warn_if_short("cityscapes", split, len(images), _EXPECTED["cityscapes", split], limit)
    pairs = []
    for image_path in images:
        item_id = image_path.name[: -len(suffix)]
        label = label_root / image_path.parent.name / f"{item_id}_gtFine_labelIds.png"
        pairs.append((item_id, image_path, need("cityscapes", root, label)))
    return SegmentationDataset(
        "cityscapes", apply_limit(pairs, limit), classes.CITYSCAPES_CLASSES, classes.CITYSCAPES_TABLE, image_size
    )


def cocostuff(root: Path, split: str, image_size: int | None, limit: int | None) -> SegmentationDataset:
    """COCO-Stuff's 171 used classes on every image of the split."""
    folder = f"{split}2017"
    pairs = pair_by_stem("cocostuff", root, root / "images" / folder, root / "annotations" / folder, ".jpg", ".png")
    warn_if_short("cocostuff", split, len(pairs), _EXPECTED["cocostuff", split], limit)
    return SegmentationDataset(
        "cocostuff", apply_limit(pairs, limit), classes.COCOSTUFF_CLASSES, classes.COCOSTUFF_TABLE, image_size
    )


def cocostuff27(
    root: Path, split: str, image_size: int | None, limit: int | None, *, coco_images: str = "curated"
) -> SegmentationDataset:
    """COCO-Stuff's 27 coarse classes, on IIC's curated list (``coco_images="curated"``) or every image."""
    name, folder = "cocostuff27", f"{split}2017"
    if coco_images not in COCO_IMAGE_LISTS:
        raise ConfigError(f"coco_images: one of {COCO_IMAGE_LISTS}, got {coco_images!r}")
    image_dir, label_dir = root / "images" / folder, root / "annotations" / folder
    if coco_images == "all":
        pairs = pair_by_stem(name, root, image_dir, label_dir, ".jpg", ".png")
        warn_if_short(name, split, len(pairs), _EXPECTED["cocostuff", split], limit)
    else:
        listed = read_id_list(
            need(
                name,
                root,
                root / "curated" / folder / CURATED_LIST,
                f"the curated image list is part of the protocol; {_CURATED_SOURCE}. Put it at that path, or "
                "evaluate every image with --coco-images all (not the field's COCO benchmark)",
            )
        )
        need(name, root, image_dir)
        need(name, root, label_dir)
        present = [item_id for item_id in listed if (image_dir / f"{item_id}.jpg").is_file()]
        warn_if_short(name, split, len(present), _EXPECTED["cocostuff27-curated", split], limit)
        if len(present) < len(listed):  # a partial download: evaluated, and said
            warn_if_short(f"{name} ({CURATED_LIST})", split, len(present), len(listed), limit)
        pairs = [
            (item_id, image_dir / f"{item_id}.jpg", need(name, root, label_dir / f"{item_id}.png"))
            for item_id in present
        ]
        if not pairs:
            raise missing(name, root, image_dir / f"{listed[0]}.jpg", "none of the curated list's images is there")
    return SegmentationDataset(
        name, apply_limit(pairs, limit), classes.COCOSTUFF27_CLASSES, classes.COCOSTUFF27_TABLE, image_size
    )
