"""What every reader shares: the expected layouts (shown when a file is missing), label PNGs, split and
limit checks, and the warning for a set smaller than the published one."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from featlift.errors import ConfigError, DatasetError, DatasetFormatError

logger = logging.getLogger("featlift.eval.datasets")

SPLITS = ("train", "val")

LAYOUTS = {
    "voc": """\
ROOT/
  VOCdevkit/VOC2012/
    JPEGImages/ID.jpg
    SegmentationClass/ID.png        (palette PNG: index = class, 255 = ignored)
    ImageSets/Segmentation/train.txt, val.txt   (one ID per line)""",
    "ade20k": """\
ROOT/
  ADEChallengeData2016/
    images/training/ADE_train_*.jpg        images/validation/ADE_val_*.jpg
    annotations/training/ADE_train_*.png   annotations/validation/ADE_val_*.png""",
    "cityscapes": """\
ROOT/
  leftImg8bit/{train,val}/CITY/CITY_xxxxxx_yyyyyy_leftImg8bit.png
  gtFine/{train,val}/CITY/CITY_xxxxxx_yyyyyy_gtFine_labelIds.png""",
    "cocostuff": """\
ROOT/
  images/train2017/*.jpg         images/val2017/*.jpg
  annotations/train2017/*.png    annotations/val2017/*.png   (stuffthingmaps: id - 1, 255 = unlabeled)""",
    "cocostuff27": """\
ROOT/
  images/train2017/*.jpg         images/val2017/*.jpg
  annotations/train2017/*.png    annotations/val2017/*.png   (stuffthingmaps: id - 1, 255 = unlabeled)
  curated/train2017/Coco164kFull_Stuff_Coarse.txt   curated/val2017/Coco164kFull_Stuff_Coarse.txt
      (IIC's curated image lists, one image id per line; only with the curated image list)""",
    "nyuv2": """\
ROOT/
  nyu_depth_v2_labeled.mat   and   splits.mat (trainNdxs / testNdxs, 1-based)
    (both may also sit in ROOT/nyuv2/)
or
ROOT/
  nyuv2/{train,val}/rgb/ID.png
  nyuv2/{train,val}/depth/ID.png   (16-bit PNG, millimetres, 0 = invalid)
and, for probe3d's training frames (train_frames "geonet"; without them train reads the labelled frames):
ROOT/
  nyuv2_geonet/*.mat   (or ROOT/nyuv2/geonet/*.mat: GeoNet's NYU training frames, MATLAB v5,
                        keys img / depth / norm; from the xjqi/GeoNet repository, as probe3d's README says)""",
    "davis": """\
ROOT/                    (or ROOT is the DAVIS folder itself)
  DAVIS/
    JPEGImages/480p/SEQ/00000.jpg ...
    Annotations/480p/SEQ/00000.png ...   (palette PNG: index = object id, 0 = background)
    ImageSets/2017/train.txt, val.txt""",
}


def missing(name: str, root: Path, path: Path, fix: str = "") -> DatasetError:
    """The error for a missing file or folder of ``name``'s layout: the path, the layout, the fix."""
    fix = fix or f"put the {name} files in that layout under root, or pass the folder that holds them as root"
    return DatasetError(f"{name}: {path} does not exist. Expected layout (root={root}):\n{LAYOUTS[name]}\nFix: {fix}.")


def need(name: str, root: Path, path: Path, fix: str = "") -> Path:
    """``path``, which must exist (else :func:`missing`)."""
    if not path.exists():
        raise missing(name, root, path, fix)
    return path


def read_index_png(path: Path) -> np.ndarray:
    """A palette (``P``) or grey (``L``) PNG's raw indices ``[H, W]`` uint8; never looked up into RGB."""
    with Image.open(path) as im:
        if im.mode not in ("P", "L"):
            raise DatasetFormatError(
                f"{path}: a label map must be a palette (mode P) or 8-bit grey (mode L) PNG whose pixel values "
                f"are the ids, got mode {im.mode}. Use the dataset's original annotation files (RGB colour "
                "renderings are not label maps)."
            )
        return np.array(im, dtype=np.uint8)


def read_id_list(path: Path) -> list[str]:
    """The non-empty lines of a list file (one id per line), sorted and without repeats."""
    ids = sorted({line.strip() for line in path.read_text().splitlines() if line.strip()})
    if not ids:
        raise DatasetFormatError(f"{path}: no ids (expected one id per line)")
    return ids


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ConfigError(f"split: expected one of {SPLITS}, got {split!r}")
    return split


def apply_limit(items: list[Any], limit: int | None) -> list[Any]:
    """The first ``limit`` items (all with None)."""
    if limit is None:
        return items
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"limit: must be a positive number of items or None, got {limit!r}")
    return items[:limit]


def pair_by_stem(
    name: str, root: Path, image_dir: Path, label_dir: Path, image_suffix: str, label_suffix: str
) -> list[tuple[str, Path, Path]]:
    """Every ``image_dir/*{image_suffix}`` with its ``label_dir/{id}{label_suffix}``, sorted by id."""
    need(name, root, image_dir)
    need(name, root, label_dir)
    images = sorted(image_dir.glob(f"*{image_suffix}"))
    if not images:
        raise missing(name, root, image_dir / f"*{image_suffix}", "the image folder is empty; fill it")
    pairs = []
    for image_path in images:
        item_id = image_path.name[: -len(image_suffix)]
        pairs.append((item_id, image_path, need(name, root, label_dir / f"{item_id}{label_suffix}")))
    return pairs


def warn_if_short(name: str, split: str, found: int, expected: int | None, limit: int | None) -> None:
    """A set smaller than the published one is evaluated, with a warning naming the published count
    (no warning when ``limit`` asked for fewer)."""
    if expected is None or found >= expected or (limit is not None and found >= min(limit, expected)):
        return
    logger.warning(
        "%s %s: %d items found, the published set has %d; evaluating what is there (the numbers will not "
        "match published ones)",
        name,
        split,
        found,
        expected,
    )
