"""featlift.eval.datasets: tiny synthetic datasets in each standard layout, with hand-written expectations."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featlift.errors import ConfigError, DatasetError, DatasetFormatError, MissingDependencyError
from featlift.eval import datasets as ds
from featlift.eval.datasets import IGNORE_INDEX, make_dataset, resize_and_crop

H, W = 20, 30


# ----------------------------------------------------------------------------------------------
# writers
# ----------------------------------------------------------------------------------------------


def _rgb(path: Path, seed: int = 0, h: int = H, w: int = W, fmt: str | None = None) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    Image.fromarray(array).save(path, format=fmt)
    return array


def _palette_png(path: Path, indices: np.ndarray) -> None:
    """A palette PNG whose pixel values are ``indices``; the palette maps index k to a colour unrelated to k."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.frombytes("P", (indices.shape[1], indices.shape[0]), indices.astype(np.uint8).tobytes())
    im.putpalette([(7 * k + 100) % 256 for k in range(256) for _ in range(3)])
    im.save(path)


def _grey_png(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8)).save(path)


def _blocks(*values: int) -> np.ndarray:
    """A 20x30 label map of vertical stripes, 30 / len(values) columns each, holding ``values`` left to right."""
    width = W // len(values)
    out = np.zeros((H, W), dtype=np.uint8)
    for k, v in enumerate(values):
        out[:, k * width : (k + 1) * width] = v
    return out


def _stripe_values(label: torch.Tensor, n: int) -> list[int]:
    """The value in the middle of each of ``n`` vertical stripes (the stripes must be constant)."""
    width = label.shape[1] // n
    values = []
    for k in range(n):
        stripe = label[:, k * width : (k + 1) * width]
        assert (stripe == stripe[0, 0]).all()
        values.append(int(stripe[0, 0]))
    return values


def _voc(root: Path, ids: list[str], labels: dict[str, np.ndarray], split: str = "val") -> None:
    base = root / "VOCdevkit" / "VOC2012"
    for k, item_id in enumerate(ids):
        _rgb(base / "JPEGImages" / f"{item_id}.jpg", seed=k)
        _palette_png(base / "SegmentationClass" / f"{item_id}.png", labels.get(item_id, _blocks(0)))
    (base / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")


# ----------------------------------------------------------------------------------------------
# resize_and_crop
# ----------------------------------------------------------------------------------------------


def test_resize_and_crop_label_hand_worked():
    # 4x6 label with value 10*row + col; shorter side 4 -> 2 gives 2x3, rows {1, 3}, cols {1, 3, 5}
    # (pixel-centre nearest: src = floor((dst + 0.5) * 2)); centre crop of width 3 -> 2 starts at (3-2)//2 = 0.
    label = torch.tensor([[10 * r + c for c in range(6)] for r in range(4)], dtype=torch.int64)
    image = torch.zeros(3, 4, 6)
    out_image, out_label = resize_and_crop(image, label, 2, target_mode="nearest")
    assert out_image.shape == (3, 2, 2)
    assert out_label.dtype == torch.int64
    assert out_label.tolist() == [[11, 13], [31, 33]]


def test_resize_and_crop_offset_crop_and_tall_input():
    # 4x10 -> 2x5 (cols 1,3,5,7,9), crop left = round((5-2)/2) = round(1.5) = 2 (CenterCrop) -> cols 5, 7.
    wide = torch.tensor([[10 * r + c for c in range(10)] for r in range(4)])
    assert resize_and_crop(torch.zeros(3, 4, 10), wide, 2)[1].tolist() == [[15, 17], [35, 37]]
    # 10x4 (tall): 5x2 -> rows 1,3,5,7,9, crop top = 2 -> rows 5, 7; cols 1, 3.
    tall = torch.tensor([[10 * r + c for c in range(4)] for r in range(10)])
    assert resize_and_crop(torch.zeros(3, 10, 4), tall, 2)[1].tolist() == [[51, 53], [71, 73]]


def test_resize_and_crop_image_is_antialiased_bilinear():
    # Columns 0..5, halved: an antialiased (triangle, support 2 px at scale 2) filter weights the 4 nearest
    # input pixels 1:3:3:1, renormalised where it leaves the image.
    # out col 0 covers inputs (-1), 0, 1, 2 -> (3*0 + 3*1 + 1*2) / 7 = 5/7
    # out col 1 covers inputs 1, 2, 3, 4    -> (1 + 6 + 9 + 4) / 8   = 2.5
    image = torch.arange(6, dtype=torch.float32).expand(3, 4, 6).clone()
    out, target = resize_and_crop(image, None, 2, target_mode="nearest")
    assert target is None
    expected = torch.tensor([5 / 7, 2.5]).expand(3, 2, 2)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_resize_and_crop_keeps_depth_values_and_rejects_mismatch():
    depth = torch.tensor([[0.0, 1.5], [2.25, 0.0]])
    _, up = resize_and_crop(torch.zeros(3, 2, 2), depth, 4)  # nearest upsampling invents no depths
    assert up.dtype == torch.float32
    assert up.tolist() == [[0.0, 0.0, 1.5, 1.5]] * 2 + [[2.25, 2.25, 0.0, 0.0]] * 2
    with pytest.raises(ValueError, match="does not match"):
        resize_and_crop(torch.zeros(3, 2, 2), torch.zeros(3, 3), 2)


# ----------------------------------------------------------------------------------------------
# VOC
# ----------------------------------------------------------------------------------------------


def test_voc_items_and_palette_indices(tmp_path):
    label = _blocks(0, 15, 20, 255, 3)  # 255 (the VOC border) is kept as ignore
    _voc(tmp_path, ["2007_000033"], {"2007_000033": label})
    data = make_dataset("voc", tmp_path, "val", image_size=None)
    assert (data.task, data.name, data.num_classes, data.ignore_index) == ("seg", "voc", 21, 255)
    assert data.class_names[15] == "person" and data.class_names[0] == "background"
    item = data[0]
    assert item["id"] == "2007_000033" and data.ids == ["2007_000033"]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, H, W)
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["label"].dtype == torch.int64 and item["label"].shape == (H, W)
    assert _stripe_values(item["label"], 5) == [0, 15, 20, 255, 3]


def test_voc_protocol_size_and_limit(tmp_path):
    ids = ["2008_000002", "2007_000129", "2007_000033"]  # written unsorted
    _voc(tmp_path, ids, {i: _blocks(1, 2, 3) for i in ids})
    data = make_dataset("voc", tmp_path, "val", image_size=8, limit=2)
    assert data.ids == ["2007_000033", "2007_000129"]
    assert len(data) == 2
    item = data[1]
    assert item["id"] == "2007_000129"
    assert item["image"].shape == (3, 8, 8) and item["label"].shape == (8, 8)
    # 20x30 -> 8x12 -> crop cols 2..9 of 12; stripes of 4 output cols each: [1]*2 + [2]*4 + [3]*2
    assert item["label"][0].tolist() == [1, 1, 2, 2, 2, 2, 3, 3]


def test_voc_missing_layout_names_tree_and_path(tmp_path):
    with pytest.raises(DatasetError) as info:
        make_dataset("voc", tmp_path, "train")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "VOCdevkit/VOC2012/" in message and "SegmentationClass/ID.png" in message
    assert str(tmp_path / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt") in message


def test_voc_missing_label_file_is_named(tmp_path):
    _voc(tmp_path, ["a", "b"], {})
    (tmp_path / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"SegmentationClass/b\.png does not exist"):
        make_dataset("voc", tmp_path, "val")


def test_rgb_label_map_is_refused(tmp_path):
    _voc(tmp_path, ["a"], {})
    _rgb(tmp_path / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "a.png", fmt="PNG")
    with pytest.raises(DatasetFormatError, match="mode RGB"):
        make_dataset("voc", tmp_path, "val")[0]


def test_bad_name_split_limit(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset 'pascal'"):
        make_dataset("pascal", tmp_path, "val")
    with pytest.raises(ConfigError, match="split"):
        make_dataset("voc", tmp_path, "test")
    with pytest.raises(ConfigError, match="limit"):
        make_dataset("voc", tmp_path, "val", limit=0)


# ----------------------------------------------------------------------------------------------
# ADE20K, Cityscapes, COCO-Stuff
# ----------------------------------------------------------------------------------------------


def test_ade20k_other_is_class_zero_by_default_and_mmseg_ignores_it(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    for k, stem in enumerate(["ADE_val_00000002", "ADE_val_00000001"]):
        _rgb(base / "images" / "validation" / f"{stem}.jpg", seed=k)
        _grey_png(base / "annotations" / "validation" / f"{stem}.png", _blocks(0, 1, 13, 150, 3))
    # JAFAR / NAF: 151 classes, label 0 ("other") is class 0 and counts; labels keep their value
    data = make_dataset("ade20k", tmp_path, "val", image_size=None)
    assert data.num_classes == 151 and len(data.class_names) == 151
    assert data.class_names[0] == "other" and data.class_names[1] == "wall" and data.class_names[150] == "flag"
    assert data.ids == ["ADE_val_00000001", "ADE_val_00000002"]
    assert _stripe_values(data[0]["label"], 5) == [0, 1, 13, 150, 3]
    # mmseg: 150 classes, label 0 ignored, the rest shifted down by one
    mmseg = make_dataset("ade20k", tmp_path, "val", image_size=None, ade20k_classes=150)
    assert mmseg.num_classes == 150 and mmseg.class_names[0] == "wall" and mmseg.class_names[12] == "person"
    assert mmseg.class_names[149] == "flag"
    assert _stripe_values(mmseg[0]["label"], 5) == [255, 0, 12, 149, 2]
    with pytest.raises(ConfigError, match="ade20k_classes"):
        make_dataset("ade20k", tmp_path, "val", ade20k_classes=149)
    with pytest.raises(DatasetError, match="ADEChallengeData2016/"):
        make_dataset("ade20k", tmp_path, "train")


def test_cityscapes_labelids_to_trainids(tmp_path):
    image = tmp_path / "leftImg8bit" / "val" / "aachen" / "aachen_000000_000019_leftImg8bit.png"
    _rgb(image, fmt="PNG")
    label = tmp_path / "gtFine" / "val" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png"
    # road, car, bicycle, unlabeled (0), ground (6: not evaluated), 34 (beyond the table)
    _grey_png(label, _blocks(7, 26, 33, 0, 6, 34))
    data = make_dataset("cityscapes", tmp_path, "val", image_size=None)
    assert data.num_classes == 19 and data.class_names[13] == "car"
    assert data.ids == ["aachen_000000_000019"]
    assert _stripe_values(data[0]["label"], 6) == [0, 13, 18, 255, 255, 255]
    assert ds.CITYSCAPES_LABELID_TO_TRAINID[24] == 11 and ds.CITYSCAPES_LABELID_TO_TRAINID[31] == 16


def _coco(root: Path, raw: np.ndarray) -> None:
    _rgb(root / "images" / "val2017" / "000000000139.jpg")
    _grey_png(root / "annotations" / "val2017" / "000000000139.png", raw)


def test_cocostuff_171_map(tmp_path):
    # raw (id - 1): person 0, street sign 11 (unused), stop sign 12, banner 91, sky-other 156, wood 181, 255
    _coco(tmp_path, _blocks(0, 11, 12, 91, 156, 181, 255, 90, 89, 82))
    data = make_dataset("cocostuff", tmp_path, "val", image_size=None)
    assert data.num_classes == 171
    # 11 thing ids are unused: 0..10 keep their index, stop sign is the 12th used class, banner the 81st
    assert _stripe_values(data[0]["label"], 10) == [0, 255, 11, 80, 145, 170, 255, 255, 79, 255]
    assert data.class_names[11] == "stop sign" and data.class_names[79] == "toothbrush"
    assert data.class_names[80] == "banner" and data.class_names[145] == "sky-other"
    assert data.class_names[170] == "wood"


def test_cocostuff27_map(tmp_path):
    _coco(tmp_path, _blocks(0, 11, 2, 71, 91, 156, 100, 181, 255, 52))
    data = make_dataset("cocostuff27", tmp_path, "val", image_size=None, coco_images="all")
    assert data.num_classes == 27 and data.name == "cocostuff27"
    names = data.class_names
    got = _stripe_values(data[0]["label"], 10)
    expected = ["person", None, "vehicle", "electronic", "textile", "sky", "floor", "solid", None, "food-things"]
    assert got == [255 if n is None else names.index(n) for n in expected]
    # STEGO/PiCIE numbering: things 0..11 then stuff 12..26
    assert got[:8] == [9, 255, 11, 0, 17, 23, 13, 24] and got[9] == 2


def test_cocostuff27_curated_list_selects_exactly_its_images(tmp_path, caplog):
    ids = ["000000000139", "000000000285", "000000000632", "000000000724"]
    for k, item in enumerate(ids):
        _rgb(tmp_path / "images" / "val2017" / f"{item}.jpg", seed=k)
        _grey_png(tmp_path / "annotations" / "val2017" / f"{item}.png", _blocks(0, 156))
    with pytest.raises(
        DatasetError, match=r"(?s)curated/val2017/Coco164kFull_Stuff_Coarse.txt.*IIC.*--coco-images all"
    ):
        make_dataset("cocostuff27", tmp_path, "val")
    curated = tmp_path / "curated" / "val2017" / "Coco164kFull_Stuff_Coarse.txt"
    curated.parent.mkdir(parents=True)
    curated.write_text("000000000724\n000000000285\n\n")
    with caplog.at_level("WARNING", logger="featlift.eval.datasets"):
        data = make_dataset("cocostuff27", tmp_path, "val", image_size=None)
    assert data.ids == ["000000000285", "000000000724"]  # the listed ones, sorted; the other two left out
    assert "4172" in caplog.text  # fewer than the published curated val set: evaluated, with a warning
    assert make_dataset("cocostuff27", tmp_path, "val", coco_images="all").ids == ids
    # a listed image that is not there (a partial download) is left out and said, never refused
    curated.write_text("000000000724\n000000099999\n")
    caplog.clear()
    with caplog.at_level("WARNING", logger="featlift.eval.datasets"):
        assert make_dataset("cocostuff27", tmp_path, "val").ids == ["000000000724"]
    assert "1 items found, the published set has 2" in caplog.text


# ----------------------------------------------------------------------------------------------
# NYUv2
# ----------------------------------------------------------------------------------------------


def _depth_png(path: Path, millimetres: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(millimetres.astype(np.uint16)).save(path)


def test_nyuv2_folder_millimetres_to_metres(tmp_path):
    mm = np.zeros((H, W), dtype=np.uint16)
    mm[:, 10:20] = 1234
    mm[:, 20:] = 65000
    for k, item in enumerate(["0003", "0001"]):
        _rgb(tmp_path / "nyuv2" / "train" / "rgb" / f"{item}.png", seed=k, fmt="PNG")
        _depth_png(tmp_path / "nyuv2" / "train" / "depth" / f"{item}.png", mm)
    data = make_dataset("nyuv2", tmp_path, "train", image_size=None)
    assert data.task == "depth" and data.ids == ["0001", "0003"]
    item = data[0]
    assert item["image"].shape == (3, H, W) and item["depth"].dtype == torch.float32
    assert item["depth"].shape == (H, W)
    assert item["depth"][0, 0] == 0.0  # invalid stays 0
    torch.testing.assert_close(item["depth"][5, 15], torch.tensor(1.234))
    torch.testing.assert_close(item["depth"][5, 25], torch.tensor(65.0))
    small = make_dataset("nyuv2", tmp_path, "train", image_size=10, limit=1)
    assert len(small) == 1 and small[0]["depth"].shape == (10, 10) and small[0]["image"].shape == (3, 10, 10)


def _nyu_mat(
    root: Path,
    rgb: np.ndarray,
    depth: np.ndarray,
    train: list[int],
    test: list[int],
    raw: np.ndarray | None = None,
) -> None:
    """Write ``rgb [N, 3, H, W]`` / ``depth [N, H, W]`` (the in-painted ``depths``) and ``raw`` (``rawDepths``;
    default ``depth``) the way MATLAB v7.3 stores them (last two axes swapped), and the split file with
    column vectors (which h5py sees as [1, n]). ``raw=False`` leaves ``rawDepths`` out."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w") as f:
        f["images"] = rgb.transpose(0, 1, 3, 2)
        f["depths"] = depth.transpose(0, 2, 1)
        if raw is not False:
            f["rawDepths"] = (depth if raw is None else raw).transpose(0, 2, 1)
    with h5py.File(root / "splits.mat", "w") as f:
        f["trainNdxs"] = np.asarray(train, dtype=np.float64)[None, :]
        f["testNdxs"] = np.asarray(test, dtype=np.float64)[None, :]


def test_nyuv2_mat_transposed_layout_and_splits(tmp_path):
    n, h, w = 3, 4, 6
    rgb = np.zeros((n, 3, h, w), dtype=np.uint8)
    depth = np.zeros((n, h, w), dtype=np.float32)
    for k in range(n):
        rgb[k, 0] = np.arange(h * w).reshape(h, w) + 10 * k  # red: row-major counter, distinct per frame
        rgb[k, 2] = 255
        depth[k] = np.arange(h * w).reshape(h, w) / 4 + k
    _nyu_mat(tmp_path, rgb, depth, train=[3, 1], test=[2], raw=depth + 100)
    train = make_dataset("nyuv2", tmp_path, "train", image_size=None, train_frames="labelled")
    assert train.ids == ["0001", "0003"]
    item = train[1]  # frame 3 (1-based) = rgb[2]
    assert item["id"] == "0003" and item["image"].shape == (3, h, w) and item["depth"].shape == (h, w)
    # red of pixel (row 1, col 2) = 1*6 + 2 + 20
    assert round(float(item["image"][0, 1, 2]) * 255) == 28
    assert float(item["image"][2].min()) == 1.0
    # rawDepths by default (probe3d): 8 / 4 + 2 + 100; the in-painted depths with raw_depth=False
    assert float(item["depth"][1, 2]) == 8 / 4 + 2 + 100
    inpainted = make_dataset("nyuv2", tmp_path, "train", image_size=None, train_frames="labelled", raw_depth=False)
    assert float(inpainted[1]["depth"][1, 2]) == 8 / 4 + 2
    val = make_dataset("nyuv2", tmp_path, "val", image_size=2)
    assert val.ids == ["0002"] and val[0]["depth"].shape == (2, 2)
    assert float(val[0]["depth"].min()) >= 101  # frame 2's raw depths are 1 + 100 and up


def test_nyuv2_mat_without_raw_depths_names_the_fix(tmp_path):
    _nyu_mat(tmp_path, np.zeros((1, 3, 2, 2), np.uint8), np.ones((1, 2, 2), np.float32), [1], [1], raw=False)
    with pytest.raises(DatasetFormatError, match=r"no 'rawDepths' array.*pass raw_depth=False to read 'depths'"):
        make_dataset("nyuv2", tmp_path, "val")
    assert float(make_dataset("nyuv2", tmp_path, "val", raw_depth=False)[0]["depth"].min()) == 1.0


def test_nyuv2_mat_without_splits_names_fix(tmp_path):
    pytest.importorskip("h5py")
    _nyu_mat(tmp_path, np.zeros((1, 3, 2, 2), np.uint8), np.zeros((1, 2, 2), np.float32), [1], [1])
    (tmp_path / "splits.mat").unlink()
    with pytest.raises(DatasetError, match=r"(?s)splits\.mat does not exist.*Fix: put the standard split file"):
        make_dataset("nyuv2", tmp_path, "val")


def test_nyuv2_missing_everything_shows_both_layouts(tmp_path):
    with pytest.raises(DatasetError) as info:
        make_dataset("nyuv2", tmp_path, "val")
    assert "nyu_depth_v2_labeled.mat" in str(info.value) and "nyuv2/{train,val}/depth/ID.png" in str(info.value)


def test_nyuv2_without_h5py_names_extra(tmp_path, monkeypatch):
    pytest.importorskip("h5py")
    _nyu_mat(tmp_path, np.zeros((1, 3, 2, 2), np.uint8), np.zeros((1, 2, 2), np.float32), [1], [1])
    monkeypatch.setitem(__import__("sys").modules, "h5py", None)
    with pytest.raises(MissingDependencyError, match=r"featlift\[eval\]"):
        make_dataset("nyuv2", tmp_path, "val")


# ----------------------------------------------------------------------------------------------
# DAVIS
# ----------------------------------------------------------------------------------------------


def _davis(root: Path) -> None:
    base = root / "DAVIS"
    for seq, n_frames, objects in [("bear", 3, 1), ("camel", 2, 2), ("dog", 2, 1)]:
        for t in range(n_frames):
            _rgb(base / "JPEGImages" / "480p" / seq / f"{t:05d}.jpg", seed=t)
            mask = np.zeros((H, W), dtype=np.uint8)
            mask[:, t : t + 5] = 1
            if objects == 2:
                mask[10:, 20:] = 2
            _palette_png(base / "Annotations" / "480p" / seq / f"{t:05d}.png", mask)
    (base / "ImageSets" / "2017").mkdir(parents=True)
    (base / "ImageSets" / "2017" / "val.txt").write_text("camel\nbear\n")
    (base / "ImageSets" / "2017" / "train.txt").write_text("dog\n")


def test_davis_sequences(tmp_path):
    _davis(tmp_path)
    data = make_dataset("davis", tmp_path, "val")
    assert data.task == "video" and data.ids == ["bear", "camel"]
    bear = data[0]
    assert bear["id"] == "bear" and bear["num_objects"] == 1
    assert len(bear["frames"]) == 3 and len(bear["masks"]) == 3
    assert bear["frames"][0].shape == (3, H, W) and bear["frames"][0].dtype == torch.float32
    assert bear["masks"][2].dtype == torch.int64 and bear["masks"][2].shape == (H, W)
    assert bear["masks"][2][0].tolist() == [0, 0] + [1] * 5 + [0] * 23  # frame 2: columns 2..6
    camel = data[1]
    assert camel["num_objects"] == 2 and int(camel["masks"][1][15, 25]) == 2
    # root may also be the DAVIS folder itself; limit and the train list
    assert make_dataset("davis", tmp_path / "DAVIS", "val", limit=1).ids == ["bear"]
    assert make_dataset("davis", tmp_path, "train").ids == ["dog"]


def test_davis_missing_sequence_folder(tmp_path):
    _davis(tmp_path)
    (tmp_path / "DAVIS" / "ImageSets" / "2017" / "val.txt").write_text("bear\nhorse\n")
    with pytest.raises(DatasetError, match=r"JPEGImages/480p/horse does not exist(.|\n)*ImageSets/2017"):
        make_dataset("davis", tmp_path, "val")


def test_class_tables_are_consistent():
    assert ds.SEGMENTATION_DATASETS == ("voc", "ade20k", "cityscapes", "cocostuff", "cocostuff27")
    assert IGNORE_INDEX == 255
    assert [raw for raw, _, _ in ds.COCOSTUFF_RAW] == list(range(182))
    unused = [name for _, name, coarse in ds.COCOSTUFF_RAW if coarse is None]
    assert unused == [
        "street sign", "hat", "shoe", "eye glasses", "plate", "mirror", "window", "desk", "door", "blender",
        "hair brush",
    ]  # fmt: skip
    assert len(ds.COCOSTUFF_CLASSES) == 171 and len(set(ds.ADE20K_CLASSES)) == 150


def test_nyuv2_v5_splits_without_scipy_names_fix(tmp_path, monkeypatch):
    pytest.importorskip("h5py")
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # as if scipy were not installed: import fails
    monkeypatch.setitem(sys.modules, "scipy", None)
    _nyu_mat(tmp_path, np.zeros((1, 3, 2, 2), np.uint8), np.zeros((1, 2, 2), np.float32), [1], [1])
    (tmp_path / "splits.mat").write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))  # not HDF5
    with pytest.raises(MissingDependencyError, match="pip install scipy"):
        make_dataset("nyuv2", tmp_path, "val")


def test_nyuv2_v5_splits_are_read_with_scipy(tmp_path):
    """The official splits.mat is a MATLAB v5 file: scipy (in the eval extra) reads it."""
    scipy_io = pytest.importorskip("scipy.io")
    rgb = np.zeros((3, 3, 2, 2), np.uint8)
    _nyu_mat(tmp_path, rgb, np.ones((3, 2, 2), np.float32), [1], [1])
    scipy_io.savemat(tmp_path / "splits.mat", {"trainNdxs": np.array([[3], [1]]), "testNdxs": np.array([[2]])})
    assert make_dataset("nyuv2", tmp_path, "train", train_frames="labelled").ids == ["0001", "0003"]
    assert make_dataset("nyuv2", tmp_path, "val").ids == ["0002"]
