"""The public call under every kind of input: pre-processing rules, clear errors, the memory guard, and a
hypothesis fuzz of images, modes, dtypes, shapes, batches, output sizes and tiles.

A tiny network (strided-conv backbone, miniature UPLiFT) keeps each example in milliseconds; the real
timm backbone is covered in test_pipeline.py.
"""

from __future__ import annotations

import dataclasses
import os
import re
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import featlift
from featlift.config import BackboneConfig
from featlift.errors import InsufficientMemoryError

from .configs import tiny_config
from .conftest import ConvBackbone

PACKAGE = Path(featlift.__file__).resolve().parent
CHANNELS, PATCH = 6, 14
# The default suite replays a fixed set of examples (stable CI); FEATLIFT_FUZZ_EXAMPLES=N explores N new ones.
FUZZ_EXAMPLES = int(os.environ.get("FEATLIFT_FUZZ_EXAMPLES", "100"))
FUZZ_RANDOM = "FEATLIFT_FUZZ_EXAMPLES" in os.environ


@pytest.fixture(scope="module")
def up() -> featlift.Upsampler:
    torch.manual_seed(0)
    return featlift.Upsampler(ConvBackbone(), featlift.UPLiFT(tiny_config(channels=CHANNELS)).eval())


def _native(size: tuple[int, int]) -> tuple[int, int]:
    return tuple(max(1, round(d / PATCH)) * 16 for d in size)


# -- the pre-processing rules ---------------------------------------------------------------------------


def test_every_input_kind_of_the_same_pixels_gives_the_same_features(up):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (31, 45, 3), dtype=np.uint8)
    want = up(array)
    alpha = np.concatenate([array, np.full((31, 45, 1), 7, np.uint8)], axis=2)
    same = [
        Image.fromarray(array),
        Image.fromarray(alpha),  # RGBA: alpha dropped, not composited
        alpha,
        torch.from_numpy(array).permute(2, 0, 1).float() / 255,
        torch.from_numpy(array).permute(2, 0, 1),  # uint8 tensor
        array.astype(np.float64) / 255,
        torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255,
        [array],
    ]
    for item in same:
        assert (up(item) - want).abs().max().item() <= 1e-5, type(item)


def test_batches_and_lists_keep_order_and_split_mixed_sizes(up):
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 256, (20, 30, 3), dtype=np.uint8) for _ in range(2))
    c = rng.integers(0, 256, (15, 15), dtype=np.uint8)
    batch = up(np.stack([a, b]))
    assert batch.shape == (2, CHANNELS, 20, 30)
    assert torch.allclose(batch[1:], up(b), atol=1e-5)
    mixed = up([a, c, np.stack([b])])
    assert isinstance(mixed, list) and [tuple(m.shape[-2:]) for m in mixed] == [(20, 30), (15, 15), (20, 30)]
    assert torch.allclose(mixed[2], up(b), atol=1e-5)


@pytest.mark.parametrize(
    ("image", "error", "pattern"),
    [
        (torch.full((3, 20, 20), float("nan")), ValueError, "NaN or infinite"),
        (np.full((20, 20, 3), np.inf, np.float32), ValueError, "NaN or infinite"),
        (torch.rand(3, 0, 28), ValueError, "empty \\(0x28 pixels\\)"),
        (np.zeros((0, 5, 3), np.uint8), ValueError, "empty"),
        (torch.rand(0, 3, 8, 8), ValueError, "empty batch"),
        (torch.rand(3, 20, 20) * 255, ValueError, "divide 0-255 images by 255"),
        (torch.rand(3, 20, 20) * 4 - 2, ValueError, "un-normalised"),
        (np.zeros((3, 20, 20), np.uint8), ValueError, "looks channels-first"),
        (np.zeros((20, 20, 2), np.uint8), ValueError, "HxWx3 or HxWx4"),
        (np.zeros((20, 20), bool), TypeError, "unsupported numpy dtype bool"),
        (np.zeros((20, 20), np.int32), TypeError, "unsupported numpy dtype int32"),
        (torch.zeros(3, 20, 20, dtype=torch.int64), TypeError, "unsupported pixel dtype torch.int64"),
        (torch.zeros(3, 20, 20, dtype=torch.complex64), TypeError, "unsupported pixel dtype"),
        ("photo.jpg", TypeError, "unsupported image type str"),
        ([], ValueError, "empty list"),
    ],
)
def test_bad_images_get_errors_naming_the_problem(up, image, error, pattern):
    with pytest.raises(error, match=pattern):
        up(image)


def test_sixteen_bit_and_float_pil_modes(up):
    rng = np.random.default_rng(2)
    deep = rng.integers(0, 65536, (20, 26), dtype=np.uint16)
    want = up(torch.from_numpy(deep.astype(np.float32) / 65535))
    assert (up(Image.fromarray(deep)) - want).abs().max().item() <= 1e-5
    assert (up(Image.fromarray(deep.astype(np.int32), mode="I")) - want).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="16-bit values"):
        up(Image.fromarray(np.full((20, 26), 70000, np.int32), mode="I"))
    floats = rng.random((20, 26), dtype=np.float32)
    assert (up(Image.fromarray(floats, mode="F")) - up(floats)).abs().max().item() <= 1e-5


def test_arguments_are_checked_before_any_work(up):
    image = np.zeros((20, 20, 3), np.uint8)
    for bad in [(0, 5), (-1, 4), (2.5, 3), "big", (3,), (True, 4)]:
        with pytest.raises(ValueError, match="output_size"):
            up(image, output_size=bad)
    assert up(image, output_size=(np.int64(7), 9)).shape == (1, CHANNELS, 7, 9)
    for bad in [0, -2, (1, 0), 1.5, True, (2, 2, 2)]:
        with pytest.raises(ValueError, match="tile"):
            up(image, tile=bad)
    with pytest.raises(TypeError, match="head must be a callable"):
        up(image, head="pca")


def test_non_finite_backbone_features_are_refused(up):
    broken = featlift.Upsampler(ConvBackbone(), up.uplift)
    with torch.no_grad():
        broken.backbone.conv.bias[0] = float("inf")
    with pytest.raises(ValueError, match="backbone returned NaN or infinite features"):
        broken(np.zeros((20, 20, 3), np.uint8))


def test_normalisation_follows_timm_for_timm_configs_and_the_config_when_stated():
    import timm

    clip = "vit_base_patch16_clip_224.openai"
    cfg = tiny_config(channels=CHANNELS, patch=PATCH)
    named = dataclasses.replace(cfg, backbone=BackboneConfig(channels=CHANNELS, patch=PATCH, name=clip, source="timm"))
    up = featlift.Upsampler(ConvBackbone(), featlift.UPLiFT(named))
    assert up.mean.flatten().tolist() == pytest.approx(list(timm.models.get_pretrained_cfg(clip).mean))
    stated = dataclasses.replace(
        named, backbone=BackboneConfig(CHANNELS, PATCH, name=clip, source="timm", mean=(0.1, 0.2, 0.3), std=(1, 2, 3))
    )
    up = featlift.Upsampler(ConvBackbone(), featlift.UPLiFT(stated))
    assert up.mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])
    unknown = dataclasses.replace(named, backbone=BackboneConfig(CHANNELS, PATCH, name="vit_nonsense", source="timm"))
    with pytest.raises(featlift.ConfigError, match="state backbone.mean and backbone.std"):
        featlift.Upsampler(ConvBackbone(), featlift.UPLiFT(unknown))


# -- the memory guard -----------------------------------------------------------------------------------


def test_memory_guard_names_the_estimate_and_a_tile_that_fits(up, monkeypatch):
    import featlift._upsampler as module

    side = 840  # 60 cells: tiles of 8 with their halo of 8 are much smaller than the image
    image = np.zeros((side, side, 3), np.uint8)
    estimate = up.estimate_memory(1, (side, side))
    tiled = up.estimate_memory(1, (side, side), tile=8)
    assert tiled.total < estimate.total and tiled.output == estimate.output
    monkeypatch.setattr(module, "available_bytes", lambda device: (estimate.total + tiled.total) // 2)
    with pytest.raises(InsufficientMemoryError, match=r"840x840 pixels needs about .* Fixes: tile=(\d+)") as info:
        up(image)
    suggested = int(re.search(r"tile=(\d+)", str(info.value)).group(1))
    assert up.estimate_memory(1, (side, side), tile=suggested).total <= (estimate.total + tiled.total) // 2
    assert up(image, tile=suggested).shape == (1, CHANNELS, side, side), "the suggested fix goes through"
    monkeypatch.setattr(module, "available_bytes", lambda device: estimate.output // 2)
    with pytest.raises(InsufficientMemoryError, match="head=.*output_size="):
        up(image)
    # No tile fits, but a narrow head with a tile does: the first message gives that combination (the
    # largest K and its tile), and following it goes through, where a head alone or a wider one does not.
    narrow = up.estimate_memory(1, (side, side), tile=8, head=torch.nn.Conv2d(CHANNELS, 1, 1))
    free = (narrow.total + tiled.total) // 2
    monkeypatch.setattr(module, "available_bytes", lambda device: free)
    pattern = r"head=.*with at most (\d+) channels, together with tile=(\d+)"
    with pytest.raises(InsufficientMemoryError, match=pattern) as info:
        up(image)
    assert "output_size=" in str(info.value)
    k, t = (int(v) for v in re.search(pattern, str(info.value)).groups())
    assert 1 <= k < CHANNELS
    head = torch.nn.Conv2d(CHANNELS, k, 1)
    with pytest.raises(InsufficientMemoryError):
        up(image, head=head)  # a head alone, untiled, is not enough
    assert up(image, head=head, tile=t).shape == (1, k, side, side), "the suggested fix goes through"
    with pytest.raises(InsufficientMemoryError):
        up(image, head=torch.nn.Conv2d(CHANNELS, k + 1, 1), tile=t)
    up.memory_guard = False
    try:
        assert up(image).shape == (1, CHANNELS, side, side)
    finally:
        up.memory_guard = True


def test_memory_estimate_counts_a_head_and_the_output_size(up):
    head = torch.nn.Conv2d(CHANNELS, 2, 1)
    plain = up.estimate_memory(1, (140, 140), output_size="native")
    assert plain.output == CHANNELS * 160 * 160 * 4
    assert up.estimate_memory(1, (140, 140), output_size="native", tile=3, head=head).output == 2 * 160 * 160 * 4
    assert up.estimate_memory(2, (140, 140), output_size=(50, 70)).output == 2 * CHANNELS * 50 * 70 * 4


# -- fuzzing the public call ----------------------------------------------------------------------------

PIL_MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "LA", "PA", "RGBX", "RGBa",
             "La", "I;16", "I;16B"]  # fmt: skip
NUMPY_DTYPES = [np.uint8, np.uint16, np.float16, np.float32, np.float64, np.int8, np.int32, np.int64, np.bool_,
                np.complex64]  # fmt: skip
ARGUMENT_NAMES = ("images", "output_size", "tile", "head", "memory")

sizes = st.one_of(
    st.tuples(st.integers(1, 48), st.integers(1, 48)),
    st.sampled_from([(1, 1), (1, 3000), (3000, 1), (2, 900), (13, 15), (14, 14), (15, 29), (0, 5), (7, 0)]),
)


@st.composite
def images(draw):
    h, w = draw(sizes)
    kind = draw(st.sampled_from(["pil", "numpy", "tensor"]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    if kind == "pil":
        mode = draw(st.sampled_from(PIL_MODES))
        base = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        if mode in ("I", "I;16", "I;16B"):
            return Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.int32), mode="I").convert(mode)
        if mode == "F":
            return Image.fromarray(rng.random((h, w), dtype=np.float32), mode="F")
        if mode in ("La", "PA", "P"):
            return base.convert("RGBA" if mode == "La" else "RGB").convert(mode)
        return base.convert(mode)
    dtype = np.dtype(draw(st.sampled_from(NUMPY_DTYPES)))
    layout = draw(st.sampled_from(["hw", "hw1", "hw3", "hw4", "hw2", "chw"]))
    shape = {"hw": (h, w), "hw1": (h, w, 1), "hw3": (h, w, 3), "hw4": (h, w, 4), "hw2": (h, w, 2), "chw": (3, h, w)}
    values = rng.random(shape[layout])
    if dtype.kind == "f":
        values = values * draw(st.sampled_from([1.0, 1.0, 255.0]))  # sometimes a 0-255 mistake
        if values.size and draw(st.integers(0, 9)) == 0:
            values.flat[0] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    elif dtype.kind in "iu":
        values = values * min(np.iinfo(dtype).max, 65535)
    array = values.astype(dtype)
    if kind == "numpy":
        return array
    if layout in ("hw", "chw"):
        tensor_like = array
    else:
        tensor_like = np.moveaxis(array, -1, 0)
    try:
        return torch.from_numpy(np.ascontiguousarray(tensor_like))
    except TypeError:  # numpy dtypes torch has no tensor type for: fuzz the numpy form instead
        return array


inputs = st.one_of(
    images(),
    st.lists(images(), min_size=1, max_size=3),
    st.builds(lambda t: t[None] if isinstance(t, torch.Tensor) else t, images()),
)
output_sizes = st.one_of(
    st.none(),
    st.just("native"),
    st.tuples(st.integers(-2, 40), st.integers(-2, 40)),
    st.sampled_from([(1, 2000), "big", (3.0, 4), (5,)]),
)
tiles = st.one_of(st.none(), st.integers(-1, 5), st.tuples(st.integers(0, 4), st.integers(1, 4)), st.just(2.5))


def _expected_sizes(images_arg, output_size) -> list[tuple[int, int]]:
    from featlift._images import image_batch

    sizes_in = [item.size for item in image_batch(images_arg)]
    if output_size == "native":
        return [_native(s) for s in sizes_in]
    return [tuple(output_size) if output_size is not None else s for s in sizes_in]


@settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=not FUZZ_RANDOM,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
@given(images_arg=inputs, output_size=output_sizes, tile=tiles)
def test_fuzz_public_call(up, images_arg, output_size, tile):
    """Every input gives finite features of the documented shape, or a featlift error raised by featlift
    itself (never from inside torch) whose message names the argument."""
    try:
        result = up(images_arg, output_size=output_size, tile=tile)
    except (ValueError, TypeError, MemoryError) as err:
        origin = Path(traceback.extract_tb(err.__traceback__)[-1].filename).resolve()
        assert PACKAGE in origin.parents, f"error raised from {origin}, not by featlift: {err!r}"
        assert any(name in str(err) for name in ARGUMENT_NAMES), f"message names no argument: {err}"
        return
    want = _expected_sizes(images_arg, output_size)
    outs = list(result.unbind(0)) if isinstance(result, torch.Tensor) else [r[0] for r in result]
    assert [tuple(o.shape) for o in outs] == [(CHANNELS, *s) for s in want]
    assert all(torch.isfinite(o).all() for o in outs)


# -- image files --------------------------------------------------------------------------------------------


def test_list_image_files_finds_the_formats_people_use_recursively(tmp_path):
    from featlift._images import list_image_files

    names = ["a.jpg", "b.JPEG", "c.png", "d.bmp", "e.gif", "f.webp", "g.tif", "h.TIFF", "i.ppm", "j.pgm"]
    for i, name in enumerate(names):
        folder = tmp_path / ("sub" if i % 2 else "")
        folder.mkdir(exist_ok=True)
        (folder / name).write_bytes(b"")
    (tmp_path / "notes.txt").write_bytes(b"")
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "dir.png").mkdir()  # a folder named like an image is not a file
    found = [p.relative_to(tmp_path).as_posix() for p in list_image_files(tmp_path)]
    want = sorted(("sub/" if i % 2 else "") + name for i, name in enumerate(names))
    assert found == want


def test_training_images_use_the_one_uint8_rule(tmp_path):
    from featlift.training import ImageDataset

    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    Image.fromarray(pixels[:, :, 0]).save(tmp_path / "grey.png")
    data = ImageDataset([tmp_path / "x.png", tmp_path / "grey.png"], 16)  # no resize at this size
    want = torch.tensor(pixels.astype(np.float64) / 255, dtype=torch.float32).permute(2, 0, 1)
    assert data[0].dtype == torch.float32 and torch.equal(data[0], want)
    grey = torch.tensor(pixels[:, :, 0].astype(np.float64) / 255, dtype=torch.float32)
    assert torch.equal(data[1], grey.expand(3, 16, 16))
