"""Readers for the dense-probe benchmarks' standard on-disk layouts, and the protocol's resize + centre crop.

Nothing is downloaded: ``root`` is the folder that holds the datasets (as in torchvision), and a missing
folder or file raises :class:`DatasetError` (a ``FileNotFoundError``) whose message shows the expected
layout and the path that was missing.

Segmentation datasets (``task = "seg"``) give items ``{"image": float32 [3, S, S] in [0, 1],
"label": int64 [S, S] (255 = ignored), "id": str}``; NYUv2 (``task = "depth"``) gives ``{"image",
"depth": float32 [S, S] in metres (0 = invalid), "id"}``; DAVIS 2017 (``task = "video"``) gives whole
sequences at native size. ``S`` is ``image_size``; with ``image_size=None`` images keep their native size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from featlift._images import read_image, resize_and_crop
from featlift.errors import (
    ConfigError,
    DatasetError,
    DatasetFormatError,
    MissingDependencyError,
    require,
)

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
    "SEGMENTATION_DATASETS",
    "SPLITS",
    "VIDEO_DATASETS",
    "VOC_CLASSES",
    "make_dataset",
    "resize_and_crop",
]

logger = logging.getLogger(__name__)

IGNORE_INDEX = 255
SEGMENTATION_DATASETS = ("voc", "ade20k", "cityscapes", "cocostuff", "cocostuff27")
DEPTH_DATASETS = ("nyuv2",)
VIDEO_DATASETS = ("davis",)
DATASETS = SEGMENTATION_DATASETS + DEPTH_DATASETS + VIDEO_DATASETS
SPLITS = ("train", "val")


# --------------------------------------------------------------------------------------------------
# Class tables
# --------------------------------------------------------------------------------------------------

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip

# ADE20K SceneParsing (ADEChallengeData2016) objectInfo150, first name of each class, in label order 1..150.
ADE20K_CLASSES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier",
    "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
]  # fmt: skip

# Cityscapes labelId -> trainId (the 19 evaluated classes); every other labelId is ignored.
CITYSCAPES_LABELID_TO_TRAINID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
    27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
CITYSCAPES_CLASSES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]  # fmt: skip

# The 27 coarse COCO-Stuff classes in the order STEGO / PiCIE number them: 12 thing supercategories, then 15
# stuff supercategories. "food" and "furniture" occur in both halves; the suffix tells them apart.
COCOSTUFF27_CLASSES = [
    "electronic", "appliance", "food-things", "furniture-things", "indoor", "kitchen", "accessory", "animal",
    "outdoor", "person", "sports", "vehicle",
    "ceiling", "floor", "food-stuff", "furniture-stuff", "rawmaterial", "textile", "wall", "window", "building",
    "ground", "plant", "sky", "solid", "structural", "water",
]  # fmt: skip

# COCO-Stuff's 182 raw ids, in order: (stuffthingmaps pixel value = id - 1, class name, coarse class name).
# A coarse name of None marks an id COCO never annotates (11 thing ids); those pixels are ignored.
# One line per raw id 0..181, in order: "name: coarse class" ("-": never annotated).
_COCOSTUFF_TABLE = """
person: person
bicycle: vehicle
car: vehicle
motorcycle: vehicle
airplane: vehicle
bus: vehicle
train: vehicle
truck: vehicle
boat: vehicle
traffic light: outdoor
fire hydrant: outdoor
street sign: -
stop sign: outdoor
parking meter: outdoor
bench: outdoor
bird: animal
cat: animal
dog: animal
horse: animal
sheep: animal
cow: animal
elephant: animal
bear: animal
zebra: animal
giraffe: animal
hat: -
backpack: accessory
umbrella: accessory
shoe: -
eye glasses: -
handbag: accessory
tie: accessory
suitcase: accessory
frisbee: sports
skis: sports
snowboard: sports
sports ball: sports
kite: sports
baseball bat: sports
baseball glove: sports
skateboard: sports
surfboard: sports
tennis racket: sports
bottle: kitchen
plate: -
wine glass: kitchen
cup: kitchen
fork: kitchen
knife: kitchen
spoon: kitchen
bowl: kitchen
banana: food-things
apple: food-things
sandwich: food-things
orange: food-things
broccoli: food-things
carrot: food-things
hot dog: food-things
pizza: food-things
donut: food-things
cake: food-things
chair: furniture-things
couch: furniture-things
potted plant: furniture-things
bed: furniture-things
mirror: -
dining table: furniture-things
window: -
desk: -
toilet: furniture-things
door: -
tv: electronic
laptop: electronic
mouse: electronic
remote: electronic
keyboard: electronic
cell phone: electronic
microwave: appliance
oven: appliance
toaster: appliance
sink: appliance
refrigerator: appliance
blender: -
book: indoor
clock: indoor
vase: indoor
scissors: indoor
teddy bear: indoor
hair drier: indoor
toothbrush: indoor
hair brush: -
banner: textile
blanket: textile
branch: plant
bridge: building
building-other: building
bush: plant
cabinet: furniture-stuff
cage: structural
cardboard: rawmaterial
carpet: floor
ceiling-other: ceiling
ceiling-tile: ceiling
cloth: textile
clothes: textile
clouds: sky
counter: furniture-stuff
cupboard: furniture-stuff
curtain: textile
desk-stuff: furniture-stuff
dirt: ground
door-stuff: furniture-stuff
fence: structural
floor-marble: floor
floor-other: floor
floor-stone: floor
floor-tile: floor
floor-wood: floor
flower: plant
fog: water
food-other: food-stuff
fruit: food-stuff
furniture-other: furniture-stuff
grass: plant
gravel: ground
ground-other: ground
hill: solid
house: building
leaves: plant
light: furniture-stuff
mat: textile
metal: rawmaterial
mirror-stuff: furniture-stuff
moss: plant
mountain: solid
mud: ground
napkin: textile
net: structural
paper: rawmaterial
pavement: ground
pillow: textile
plant-other: plant
plastic: rawmaterial
platform: ground
playingfield: ground
railing: structural
railroad: ground
river: water
road: ground
rock: solid
roof: building
rug: textile
salad: food-stuff
sand: ground
sea: water
shelf: furniture-stuff
sky-other: sky
skyscraper: building
snow: ground
solid-other: solid
stairs: furniture-stuff
stone: solid
straw: plant
structural-other: structural
table: furniture-stuff
tent: building
textile-other: textile
towel: textile
tree: plant
vegetable: food-stuff
wall-brick: wall
wall-concrete: wall
wall-other: wall
wall-panel: wall
wall-stone: wall
wall-tile: wall
wall-wood: wall
water-other: water
waterdrops: water
window-blind: window
window-other: window
wood: solid
"""
COCOSTUFF_RAW: list[tuple[int, str, str | None]] = [
    (raw, name.strip(), None if coarse.strip() == "-" else coarse.strip())
    for raw, (name, coarse) in enumerate(line.split(":") for line in _COCOSTUFF_TABLE.strip().splitlines())
]

# The 171 used classes (80 things + 91 stuff), in raw-id order.
COCOSTUFF_CLASSES = [name for _, name, coarse in COCOSTUFF_RAW if coarse is not None]


def _lut(mapping: dict[int, int]) -> np.ndarray:
    """A 256-entry uint8-value lookup table: ``mapping`` where given, :data:`IGNORE_INDEX` elsewhere."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.int64)
    for src, dst in mapping.items():
        lut[src] = dst
    return lut


def _cocostuff_luts() -> tuple[np.ndarray, np.ndarray]:
    fine: dict[int, int] = {}
    coarse: dict[int, int] = {}
    for raw, _, coarse_name in COCOSTUFF_RAW:
        if coarse_name is None:
            continue
        fine[raw] = len(fine)
        coarse[raw] = COCOSTUFF27_CLASSES.index(coarse_name)
    return _lut(fine), _lut(coarse)


_VOC_LUT = _lut({i: i for i in range(len(VOC_CLASSES))})
_ADE_LUT = _lut({i: i - 1 for i in range(1, len(ADE20K_CLASSES) + 1)})
_CITYSCAPES_LUT = _lut(CITYSCAPES_LABELID_TO_TRAINID)
_COCOSTUFF_LUT, _COCOSTUFF27_LUT = _cocostuff_luts()


# --------------------------------------------------------------------------------------------------
# Protocol transform
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# File helpers
# --------------------------------------------------------------------------------------------------

_LAYOUTS = {
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
    "nyuv2": """\
ROOT/
  nyu_depth_v2_labeled.mat   and   splits.mat (trainNdxs / testNdxs, 1-based)
    (both may also sit in ROOT/nyuv2/)
or
ROOT/
  nyuv2/{train,val}/rgb/ID.png
  nyuv2/{train,val}/depth/ID.png   (16-bit PNG, millimetres, 0 = invalid)""",
    "davis": """\
ROOT/                    (or ROOT is the DAVIS folder itself)
  DAVIS/
    JPEGImages/480p/SEQ/00000.jpg ...
    Annotations/480p/SEQ/00000.png ...   (palette PNG: index = object id, 0 = background)
    ImageSets/2017/train.txt, val.txt""",
}
_LAYOUTS["cocostuff27"] = _LAYOUTS["cocostuff"]


def _missing(name: str, root: Path, path: Path, fix: str = "") -> DatasetError:
    fix = fix or f"put the {name} files in that layout under root, or pass the folder that holds them as root"
    return DatasetError(f"{name}: {path} does not exist. Expected layout (root={root}):\n{_LAYOUTS[name]}\nFix: {fix}.")


def _need(name: str, root: Path, path: Path, fix: str = "") -> Path:
    if not path.exists():
        raise _missing(name, root, path, fix)
    return path


def _read_index_png(path: Path) -> np.ndarray:
    """A palette (``P``) or grey (``L``) PNG's raw indices ``[H, W]`` uint8; never looked up into RGB."""
    with Image.open(path) as im:
        if im.mode not in ("P", "L"):
            raise DatasetFormatError(
                f"{path}: a label map must be a palette (mode P) or 8-bit grey (mode L) PNG whose pixel values "
                f"are the ids, got mode {im.mode}. Use the dataset's original annotation files (RGB colour "
                "renderings are not label maps)."
            )
        return np.array(im, dtype=np.uint8)


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ConfigError(f"split: expected one of {SPLITS}, got {split!r}")
    return split


def _apply_limit(items: list[Any], limit: int | None) -> list[Any]:
    if limit is None:
        return items
    if limit < 1:
        raise ConfigError(f"limit: must be a positive number of items or None, got {limit}")
    return items[:limit]


# --------------------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------------------


class SegmentationDataset(Dataset):
    """Pairs of (image file, label file) with a uint8 -> class lookup table.

    ``__getitem__(i)`` returns ``{"image": float32 [3, S, S] in [0, 1], "label": int64 [S, S] (values in
    ``0..num_classes-1`` or :data:`IGNORE_INDEX`), "id": str}`` with ``S = image_size`` (native ``[3, H, W]``
    / ``[H, W]`` when ``image_size`` is None). Items are sorted by id; ``ids[i]`` is item ``i``'s id.
    """

    task = "seg"
    ignore_index = IGNORE_INDEX

    def __init__(
        self,
        name: str,
        pairs: Sequence[tuple[str, Path, Path]],
        class_names: list[str],
        lut: np.ndarray,
        image_size: int | None,
    ) -> None:
        self.name = name
        self.class_names = list(class_names)
        self.num_classes = len(class_names)
        self.image_size = image_size
        self._pairs = list(pairs)
        self._lut = lut
        self.ids = [item_id for item_id, _, _ in self._pairs]

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item_id, image_path, label_path = self._pairs[index]
        image = read_image(image_path)
        raw = _read_index_png(label_path)
        if raw.shape != tuple(image.shape[-2:]):
            raise DatasetFormatError(
                f"{label_path}: label map is {raw.shape[1]}x{raw.shape[0]} but its image {image_path} is "
                f"{image.shape[2]}x{image.shape[1]} (W x H); the pair must have the same size."
            )
        label = torch.from_numpy(self._lut[raw])
        if self.image_size is not None:
            image, label = resize_and_crop(image, label, self.image_size, target_mode="nearest")
        return {"image": image, "label": label, "id": item_id}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} items, {self.num_classes} classes)"


def _pair_by_stem(
    name: str, root: Path, image_dir: Path, label_dir: Path, image_suffix: str, label_suffix: str
) -> list[tuple[str, Path, Path]]:
    """Every ``image_dir/*{image_suffix}`` with its ``label_dir/{id}{label_suffix}``, sorted by id."""
    _need(name, root, image_dir)
    _need(name, root, label_dir)
    images = sorted(image_dir.glob(f"*{image_suffix}"))
    if not images:
        raise _missing(name, root, image_dir / f"*{image_suffix}", "the image folder is empty; fill it")
    pairs = []
    for image_path in images:
        item_id = image_path.name[: -len(image_suffix)]
        pairs.append((item_id, image_path, _need(name, root, label_dir / f"{item_id}{label_suffix}")))
    return pairs


def _voc(root: Path, split: str, image_size: int | None, limit: int | None) -> SegmentationDataset:
    base = root / "VOCdevkit" / "VOC2012"
    split_file = _need("voc", root, base / "ImageSets" / "Segmentation" / f"{split}.txt")
    ids = sorted({line.strip() for line in split_file.read_text().splitlines() if line.strip()})
    if not ids:
        raise DatasetFormatError(f"{split_file}: no ids (expected one image id per line)")
    pairs = [
        (
            item_id,
            _need("voc", root, base / "JPEGImages" / f"{item_id}.jpg"),
            _need("voc", root, base / "SegmentationClass" / f"{item_id}.png"),
        )
        for item_id in _apply_limit(ids, limit)
    ]
    return SegmentationDataset("voc", pairs, VOC_CLASSES, _VOC_LUT, image_size)


def _ade20k(root: Path, split: str, image_size: int | None, limit: int | None) -> SegmentationDataset:
    base = root / "ADEChallengeData2016"
    folder = {"train": "training", "val": "validation"}[split]
    pairs = _pair_by_stem("ade20k", root, base / "images" / folder, base / "annotations" / folder, ".jpg", ".png")
    return SegmentationDataset("ade20k", _apply_limit(pairs, limit), ADE20K_CLASSES, _ADE_LUT, image_size)


def _cityscapes(root: Path, split: str, image_size: int | None, limit: int | None) -> SegmentationDataset:
    image_root = _need("cityscapes", root, root / "leftImg8bit" / split)
    label_root = _need("cityscapes", root, root / "gtFine" / split)
    suffix = "_leftImg8bit.png"
    images = sorted(image_root.glob(f"*/*{suffix}"), key=lambda p: p.name)
    if not images:
        raise _missing("cityscapes", root, image_root / "CITY" / f"*{suffix}", "the image folder is empty; fill it")
    pairs = []
    for image_path in images:
        item_id = image_path.name[: -len(suffix)]
        label = label_root / image_path.parent.name / f"{item_id}_gtFine_labelIds.png"
        pairs.append((item_id, image_path, _need("cityscapes", root, label)))
    return SegmentationDataset(
        "cityscapes", _apply_limit(pairs, limit), CITYSCAPES_CLASSES, _CITYSCAPES_LUT, image_size
    )


def _cocostuff(
    root: Path, split: str, image_size: int | None, limit: int | None, *, coarse: bool
) -> SegmentationDataset:
    name = "cocostuff27" if coarse else "cocostuff"
    folder = f"{split}2017"
    pairs = _pair_by_stem(name, root, root / "images" / folder, root / "annotations" / folder, ".jpg", ".png")
    if coarse:
        return SegmentationDataset(name, _apply_limit(pairs, limit), COCOSTUFF27_CLASSES, _COCOSTUFF27_LUT, image_size)
    return SegmentationDataset(name, _apply_limit(pairs, limit), COCOSTUFF_CLASSES, _COCOSTUFF_LUT, image_size)


# --------------------------------------------------------------------------------------------------
# NYUv2 depth
# --------------------------------------------------------------------------------------------------

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


def _nyuv2(root: Path, split: str, image_size: int | None, limit: int | None) -> NYUv2Depth:
    folder = root / "nyuv2" / split
    if folder.is_dir():
        pairs = _pair_by_stem("nyuv2", root, folder / "rgb", folder / "depth", ".png", ".png")
        return NYUv2Depth(image_size, folder_pairs=_apply_limit(pairs, limit))
    for base in (root, root / "nyuv2"):
        if (base / _NYU_MAT).is_file():
            break
    else:
        raise _missing(
            "nyuv2",
            root,
            root / _NYU_MAT,
            f"put {_NYU_MAT} and {_NYU_SPLITS} in root (or root/nyuv2/), or the PNG layout in root/nyuv2/{split}/",
        )
    splits = _need(
        "nyuv2",
        root,
        base / _NYU_SPLITS,
        f"put the standard split file {_NYU_SPLITS} (trainNdxs / testNdxs, from the NYU Depth v2 site) next to "
        f"{_NYU_MAT}",
    )
    indices = _read_nyu_split(splits, split)
    return NYUv2Depth(image_size, mat_path=base / _NYU_MAT, mat_indices=_apply_limit(indices, limit))


# --------------------------------------------------------------------------------------------------
# DAVIS 2017
# --------------------------------------------------------------------------------------------------


class DAVIS2017(Dataset):
    """DAVIS 2017 semi-supervised video object segmentation, one item per sequence, at native size.

    ``__getitem__(i)`` returns ``{"frames": list of float32 [3, H, W] in [0, 1], "masks": list of int64
    [H, W] (every frame's ground truth: 0 = background, k = object k), "id": SEQ, "num_objects": int}``.
    ``num_objects`` is the largest object id in the first frame's mask (ids 255, DAVIS's void, excluded).
    """

    task = "video"
    name = "davis"

    def __init__(self, base: Path, sequences: Sequence[str]) -> None:
        self._base = base
        self.ids = list(sequences)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        seq = self.ids[index]
        frame_paths = sorted((self._base / "JPEGImages" / "480p" / seq).glob("*.jpg"))
        mask_paths = sorted((self._base / "Annotations" / "480p" / seq).glob("*.png"))
        if not frame_paths or [p.stem for p in frame_paths] != [p.stem for p in mask_paths]:
            raise DatasetFormatError(
                f"{self._base / 'Annotations' / '480p' / seq}: sequence {seq} has {len(frame_paths)} frames and "
                f"{len(mask_paths)} masks; every JPEGImages/480p/{seq}/NNNNN.jpg needs its Annotations/480p/"
                f"{seq}/NNNNN.png"
            )
        frames = [read_image(p) for p in frame_paths]
        masks = [torch.from_numpy(_read_index_png(p).astype(np.int64)) for p in mask_paths]
        first = masks[0][masks[0] != 255]
        num_objects = int(first.max()) if first.numel() else 0
        return {"frames": frames, "masks": masks, "id": seq, "num_objects": num_objects}

    def __repr__(self) -> str:
        return f"DAVIS2017({len(self)} sequences)"


def _davis(root: Path, split: str, limit: int | None) -> DAVIS2017:
    base = root / "DAVIS"
    if not base.is_dir() and (root / "JPEGImages").is_dir():
        base = root
    split_file = _need("davis", root, base / "ImageSets" / "2017" / f"{split}.txt")
    sequences = sorted({line.strip() for line in split_file.read_text().splitlines() if line.strip()})
    for seq in sequences:
        _need("davis", root, base / "JPEGImages" / "480p" / seq)
        _need("davis", root, base / "Annotations" / "480p" / seq)
    return DAVIS2017(base, _apply_limit(sequences, limit))


# --------------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------------


def make_dataset(
    name: str, root: str | Path, split: str, image_size: int | None = 448, *, limit: int | None = None
) -> Dataset:
    """The dataset ``name`` (one of :data:`DATASETS`) read from its standard layout under ``root``.

    Args:
        name: ``voc``, ``ade20k``, ``cityscapes``, ``cocostuff`` (171 classes), ``cocostuff27`` (27 coarse
            classes), ``nyuv2`` (depth) or ``davis`` (2017 video segmentation).
        root: the folder that holds the dataset's top folder (e.g. the one containing ``VOCdevkit/``).
        split: ``"train"`` or ``"val"`` (NYUv2's ``"val"`` is its 654-image test split).
        image_size: the protocol's output side ``S`` (see :func:`resize_and_crop`); None keeps native size.
            DAVIS always keeps native size.
        limit: keep only the first ``limit`` items (items are sorted by id, so this is deterministic).

    Raises:
        DatasetError: a folder or file of the layout is missing (the message shows the layout).
        ConfigError: an unknown ``name`` or ``split``, or a bad ``limit`` / ``image_size``.
    """
    key = name.lower()
    if key not in DATASETS:
        raise ConfigError(f"dataset: unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    _check_split(split)
    if image_size is not None and image_size < 1:
        raise ConfigError(f"image_size: must be a positive number of pixels or None, got {image_size}")
    _apply_limit([], limit)  # validates limit
    root = Path(root).expanduser()
    if not root.is_dir():
        raise _missing(key, root, root, "pass the folder that holds the dataset as root")
    if key == "voc":
        dataset: Dataset = _voc(root, split, image_size, limit)
    elif key == "ade20k":
        dataset = _ade20k(root, split, image_size, limit)
    elif key == "cityscapes":
        dataset = _cityscapes(root, split, image_size, limit)
    elif key in ("cocostuff", "cocostuff27"):
        dataset = _cocostuff(root, split, image_size, limit, coarse=key == "cocostuff27")
    elif key == "nyuv2":
        dataset = _nyuv2(root, split, image_size, limit)
    else:
        dataset = _davis(root, split, limit)
    logger.info("%s %s: %d items from %s", key, split, len(dataset), root)  # type: ignore[arg-type]
    return dataset
