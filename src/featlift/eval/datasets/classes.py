"""The class tables of the segmentation benchmarks, as data: names in label order and the raw-value ->
class-index lookups the readers apply.

Checked against each dataset's own definition files: VOC's 21 classes; ADE20K SceneParsing's
``objectInfo150`` (first name of each class; label 0 is "other"); Cityscapes' labelId -> trainId (19
evaluated classes); COCO-Stuff's 182 raw ids with the 171 used classes and the 27 coarse classes of IIC /
PiCIE / STEGO.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "ADE20K_CLASSES",
    "ADE20K_CLASSES_WITH_OTHER",
    "ADE20K_TABLE",
    "ADE20K_TABLE_WITH_OTHER",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_LABELID_TO_TRAINID",
    "CITYSCAPES_TABLE",
    "COCOSTUFF27_CLASSES",
    "COCOSTUFF27_TABLE",
    "COCOSTUFF_CLASSES",
    "COCOSTUFF_RAW",
    "COCOSTUFF_TABLE",
    "IGNORE_INDEX",
    "VOC_CLASSES",
    "VOC_TABLE",
    "lookup_table",
]

IGNORE_INDEX = 255
"""The label value left out of training and scoring (VOC's border value; every table maps unknowns to it)."""

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
_COCOSTUFF_IDS = """
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
    for raw, (name, coarse) in enumerate(line.split(":") for line in _COCOSTUFF_IDS.strip().splitlines())
]

# The 171 used classes (80 things + 91 stuff), in raw-id order.
COCOSTUFF_CLASSES = [name for _, name, coarse in COCOSTUFF_RAW if coarse is not None]


# ADE20K as JAFAR and NAF (and so UPLiFT and AnyUp) train and score it: 151 classes, label 0 ("other") being
# class 0. mmseg's convention (150 classes, label 0 ignored) is the alternative.
ADE20K_CLASSES_WITH_OTHER = ["other", *ADE20K_CLASSES]


def lookup_table(mapping: dict[int, int]) -> np.ndarray:
    """A 256-entry lookup from a label map's uint8 value to its class index: ``mapping`` where given,
    :data:`IGNORE_INDEX` elsewhere."""
    table = np.full(256, IGNORE_INDEX, dtype=np.int64)
    for src, dst in mapping.items():
        table[src] = dst
    return table


def _cocostuff_tables() -> tuple[np.ndarray, np.ndarray]:
    fine: dict[int, int] = {}
    coarse: dict[int, int] = {}
    for raw, _, coarse_name in COCOSTUFF_RAW:
        if coarse_name is None:
            continue
        fine[raw] = len(fine)
        coarse[raw] = COCOSTUFF27_CLASSES.index(coarse_name)
    return lookup_table(fine), lookup_table(coarse)


VOC_TABLE = lookup_table({i: i for i in range(len(VOC_CLASSES))})
ADE20K_TABLE = lookup_table({i: i - 1 for i in range(1, len(ADE20K_CLASSES) + 1)})  # 150: 0 ignored
ADE20K_TABLE_WITH_OTHER = lookup_table({i: i for i in range(len(ADE20K_CLASSES_WITH_OTHER))})  # 151
CITYSCAPES_TABLE = lookup_table(CITYSCAPES_LABELID_TO_TRAINID)
COCOSTUFF_TABLE, COCOSTUFF27_TABLE = _cocostuff_tables()
