"""bfloat16 keeps the answer: against float32, per-pixel cosine at least 0.999 and mean relative error at
most 1%, on the authors' fixture weights and on a real photo; a negative control shows the check fails
for a path that keeps fewer bits than bfloat16. A half-precision call computes in its dtype (no float32
copy of the pixel-dense map on the way) and needs about half float32's memory, by the guard's estimate."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import featlift
import featlift._upsampler
from featlift.backbones import Backbone
from featlift.modeling.blocks import ConvBlock

MIN_COSINE = 0.999
MAX_RELATIVE_ERROR = 0.01


def agreement(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    """(smallest per-pixel cosine, mean per-pixel relative error ``|got - want| / |want|``) over the
    channel vectors of two [B, C, H, W] maps, computed in float64."""
    got, want = got.double(), want.double()
    cosine = torch.nn.functional.cosine_similarity(got, want, dim=1)
    relative = (got - want).norm(dim=1) / want.norm(dim=1).clamp_min(1e-12)
    return cosine.min().item(), relative.mean().item()


def _fixture_models(case, dtype):
    return featlift.build_upsampler(case.config_path, weights=case.weights_path, dtype=dtype)


def test_bfloat16_agrees_with_float32_on_the_fixture_weights(case):
    want_model = _fixture_models(case, None)
    model = _fixture_models(case, torch.bfloat16)
    image, features = case.inputs["image"], case.inputs["features"]
    with torch.no_grad():
        want = want_model(image, features)
        got = model(image.bfloat16(), features.bfloat16())
    assert got.dtype == torch.bfloat16
    cosine, relative = agreement(got, want)
    assert cosine >= MIN_COSINE and relative <= MAX_RELATIVE_ERROR, (case.name, cosine, relative)


def _photo(size: int) -> np.ndarray:
    gradio = pytest.importorskip("gradio", reason="the photo ships with gradio (the dev extra)")
    path = Path(gradio.__file__).parent / "media_assets" / "images" / "cheetah1.jpg"
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC))


class PatchEmbedding(Backbone):
    """A stand-in backbone whose features vary over a photo as real ones do: a fixed random linear map of
    each 14x14 patch (a ViT's patch embedding). A randomly initialised ViT is no stand-in here: its tokens
    are uncorrelated between neighbours, so where the attender averages them the output nearly cancels
    (a third of the usual norm) and bfloat16's rounding of the weights turns the vector; pretrained
    features are smooth where the photo is."""

    patch, channels = 14, 384

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Conv2d(3, self.channels, self.patch, stride=self.patch)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(image)


def test_bfloat16_agrees_with_float32_on_a_photo(dinov2_case):
    """A real photo through the whole Upsampler (backbone, normalisation, guidance, attender, resize)."""
    backbone = PatchEmbedding().eval()
    want_up = featlift.Upsampler(backbone, _fixture_models(dinov2_case, None))
    up = featlift.Upsampler(copy.deepcopy(backbone), _fixture_models(dinov2_case, None)).to(torch.bfloat16)
    photo = _photo(224)
    with torch.no_grad():
        want = want_up(photo)
        got = up(photo)
    assert got.dtype == torch.bfloat16 and got.shape == want.shape == (1, 384, 224, 224)
    cosine, relative = agreement(got, want)
    assert cosine >= MIN_COSINE and relative <= MAX_RELATIVE_ERROR, (cosine, relative)


def _keep_mantissa_bits(t: torch.Tensor, bits: int) -> torch.Tensor:
    """``t`` (float32) with its mantissa cut to ``bits`` bits (bfloat16 keeps 7, float16 10)."""
    as_int = t.float().contiguous().view(torch.int32)
    return (as_int & ~((1 << (23 - bits)) - 1)).view(torch.float32).to(t.dtype)


def test_the_check_fails_for_a_path_that_keeps_too_few_bits(dinov2_case):
    """Negative control: every conv block's output truncated to 3 mantissa bits (a deliberately broken
    low-precision path) fails the same check; truncated to 10 bits (float16's) it passes."""
    want_model = _fixture_models(dinov2_case, None)
    image, features = dinov2_case.inputs["image"], dinov2_case.inputs["features"]

    def truncated_run(bits):
        model = _fixture_models(dinov2_case, None)
        for module in model.modules():
            if isinstance(module, ConvBlock):
                module.register_forward_hook(lambda m, args, out: _keep_mantissa_bits(out, bits))
        with torch.no_grad():
            return model(image, features)

    with torch.no_grad():
        want = want_model(image, features)
    cosine, relative = agreement(truncated_run(3), want)
    assert cosine < MIN_COSINE or relative > MAX_RELATIVE_ERROR, (cosine, relative)
    cosine, relative = agreement(truncated_run(10), want)
    assert cosine >= MIN_COSINE and relative <= MAX_RELATIVE_ERROR, (cosine, relative)


class Float32Copies(TorchDispatchMode):
    """Within the block, records every op that returns a float32 tensor of at least ``numel`` elements, or
    that reads a half-precision tensor that big with ``dtype=torch.float32`` (a reduction that converts
    its input inside the kernel): ``.seen``, a list of (op, what)."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.seen = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        big = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and t.numel() >= self.numel]
        if kwargs.get("dtype") == torch.float32 and any(t.dtype != torch.float32 for t in big):
            self.seen.append((str(func), "reads the map with dtype=float32"))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.numel() >= self.numel:
                self.seen.append((str(func), tuple(t.shape)))
        return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_call_makes_no_float32_copy_of_the_pixel_dense_map(dinov2_case, dtype, monkeypatch):
    """Whatever the output (own size: bilinear; native; a small size: antialiased; tiled), the map stays in
    the model's dtype: neither the final resize nor the finiteness check makes a float32 copy of it (each
    would have doubled the memory of a bfloat16 call), and it agrees with float32's. The finiteness
    check's strips are shrunk to this small map's scale."""
    monkeypatch.setattr(featlift._upsampler, "FINITE_STRIP", 384 * 48 * 8, raising=False)
    full = featlift.Upsampler(PatchEmbedding().eval(), _fixture_models(dinov2_case, None))
    up = copy.deepcopy(full).to(dtype)
    image = torch.rand(3, 28, 42, generator=torch.Generator().manual_seed(0))
    half_the_map = 384 * 32 * 48 // 2  # the native grid: 2x3 cells, 16x16 pixels each
    for kwargs in ({}, {"output_size": "native"}, {"output_size": (12, 20)}, {"tile": 1}):
        with Float32Copies(half_the_map) as spy:
            out = up(image, **kwargs)
        assert out.dtype == dtype and spy.seen == [], (kwargs, spy.seen)
        cosine, relative = agreement(out, full(image, **kwargs))
        assert cosine >= MIN_COSINE and relative <= MAX_RELATIVE_ERROR, (kwargs, cosine, relative)
    with Float32Copies(half_the_map) as spy:  # the spy sees both kinds of copy
        out.float()
        out.sum(dtype=torch.float32)
    assert [what for _, what in spy.seen] == [tuple(out.shape), "reads the map with dtype=float32"]


def test_the_memory_guard_expects_about_half_the_bytes_in_bfloat16(dinov2_case):
    """The estimate the guard compares with free memory, for a 448 px photo: bfloat16 about half of float32
    for the photo's own size (bilinear), the native grid and a small output (antialiased, past 2x)."""
    up = featlift.Upsampler(PatchEmbedding().eval(), _fixture_models(dinov2_case, None))
    half = copy.deepcopy(up).to(torch.bfloat16)
    for output_size in (None, "native", (120, 120)):
        want = up.estimate_memory(1, (448, 448), output_size=output_size).total
        got = half.estimate_memory(1, (448, 448), output_size=output_size).total
        assert 0.45 <= got / want <= 0.6, (output_size, got, want)


def test_a_dtype_no_model_computes_in_is_refused_by_name(dinov2_case):
    """A float8 type is floating point, but no convolution runs in it: refused when the model is built, not
    deep in its first call; so are names and integer types."""
    for dtype in (torch.float8_e4m3fn, "bfloat16", torch.int8):
        with pytest.raises(
            TypeError, match=r"dtype a model computes in, one of torch.float32, torch.bfloat16, torch.float16"
        ):
            _fixture_models(dinov2_case, dtype)
        with pytest.raises(TypeError, match=r"dtype a model computes in, one of"):
            featlift.load_upsampler(dinov2_case.config_path, pretrained=False, device="cpu", dtype=dtype)


@pytest.mark.parametrize(
    "command",
    [
        ["upsample", "photo.png", "--out", "feats"],
        ["demo"],
        ["eval", "seg", "--dataset", "voc", "--root", "data", "--upsampler", "dinov2_s14"],
    ],
)
def test_a_dtype_the_commands_do_not_take_is_refused_naming_the_choices(command, capsys):
    from featlift.cli import main

    with pytest.raises(SystemExit) as exited:
        main([*command, "--dtype", "bf16"])
    assert exited.value.code == 2
    assert re.search(
        r"argument --dtype: invalid choice: 'bf16' \(choose from .*float32.*bfloat16.*float16", capsys.readouterr().err
    )
