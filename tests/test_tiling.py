"""Exact tiled inference: tiled output equals untiled output for every kind of config, the halo matters,
per-tile heads, and clear errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import featlift
from featlift._registry import get_variant
from featlift.config import (
    BlockGroupConfig,
    DecoderStageConfig,
    DownConfig,
    EncoderConfig,
    EncoderStageConfig,
    RefinerConfig,
    UpConfig,
    UpliftConfig,
)
from featlift.errors import UntileableError
from featlift.modeling import _tiling as tiling
from featlift.modeling._region import Region, corner_aligned_upsample
from featlift.modeling.blocks import ConvBlock

from .configs import random_inputs, tiny_config
from .test_bf16 import MAX_RELATIVE_ERROR, MIN_COSINE, PatchEmbedding, agreement

TOL = 2e-5


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights and BatchNorm statistics, so no layer is close to the identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=gen) * (0.3 if t.dim() > 1 else 0.5))
    return model.eval()


def _config(patch=16, channels=5, attender=17, **changes) -> UpliftConfig:
    return tiny_config(patch, channels, attender, encoder_widths=(4, 6, 8), decoder_width=8, **changes)


def _deeper_decoder(cfg: UpliftConfig) -> UpliftConfig:
    stage = DecoderStageConfig(
        up=UpConfig(op="tconv", factor=2, residual="bilinear"), blocks=BlockGroupConfig(widths=(8,))
    )
    dec = dataclasses.replace(cfg.decoder, stages=(cfg.decoder.stages[0], stage))
    return dataclasses.replace(cfg, decoder=dec, up_factor=4)


def _vae_like(cfg: UpliftConfig) -> UpliftConfig:
    dec = dataclasses.replace(cfg.decoder, noise_channels=2, noise_scale=0.7)
    ref = RefinerConfig(
        blocks=BlockGroupConfig(norm="layer", widths=(8,)),
        noise_channels=1,
        noise_scale=0.5,
        guidance_resample="nearest",
    )
    return dataclasses.replace(cfg, decoder=dec, refiner=ref, backbone=dataclasses.replace(cfg.backbone, patch=8))


CONFIGS = {
    "patch14-n17": _config(patch=14),
    "patch16-n5": _config(attender=5),
    "patch16-n25": _config(attender=25),
    "bilinear-guidance": _config(
        decoder=dataclasses.replace(_config().decoder, guidance_resample="bilinear"), attender=13
    ),
    "unshared-encoder": _config(share_encoder=False, attender=9),
    "two-stage-decoder": _deeper_decoder(_config()),
    "noise-and-refiner": _vae_like(_config()),
}


def _inputs(cfg: UpliftConfig, b: int, h: int, w: int, seed: int = 1):
    return random_inputs(cfg, b, h, w, seed)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize(("tile", "b", "h", "w", "iters"), [(3, 1, 7, 9, 2), ((2, 5), 2, 6, 11, 3)])
def test_tiled_equals_untiled(name, tile, b, h, w, iters):
    cfg = CONFIGS[name]
    model = _randomise(featlift.UPLiFT(cfg))
    image, features = _inputs(cfg, b, h, w)
    with torch.no_grad():
        full = model(image, features, iters=iters, generator=torch.Generator().manual_seed(5))
        tiled = model(image, features, iters=iters, generator=torch.Generator().manual_seed(5), tile=tile)
    assert tiled.shape == full.shape
    scale = max(1.0, full.abs().max().item())
    assert (tiled - full).abs().max().item() <= TOL * scale


def test_fixture_model_tiles_exactly(dinov2_case):
    """The published layout with the authors' fixture weights, at the default 4 iterations."""
    model = featlift.build_upsampler(dinov2_case.config_path, weights=dinov2_case.weights_path)
    image, features = _inputs(model.config, 1, 13, 10)
    with torch.no_grad():
        full = model(image, features)
        tiled = model(image, features, tile=(4, 6))
    assert (tiled - full).abs().max().item() <= TOL * max(1.0, full.abs().max().item())


def test_bfloat16_tiles_match_the_whole_bfloat16_image(dinov2_case, attended, monkeypatch):
    """A tiled bfloat16 call runs the attender in bfloat16 on every tile and matches the untiled bfloat16
    call as closely as bfloat16 matches float32 (per-pixel cosine and mean relative error of
    tests/test_bf16.py), on a strip long enough (20 cells; the halo is 8) that its end tiles see only part
    of it; with a quarter of the halo the same check fails."""
    model = featlift.build_upsampler(dinov2_case.config_path, weights=dinov2_case.weights_path)
    up = featlift.Upsampler(PatchEmbedding().eval(), model).to(torch.bfloat16)
    coarse = torch.rand(1, 3, 11, 2, generator=torch.Generator().manual_seed(0))
    image = torch.nn.functional.interpolate(coarse, size=(280, 28), mode="bicubic").clamp(0, 1)[0]  # smooth
    whole = up(image, output_size="native")
    attended.clear()
    tiled = up(image, output_size="native", tile=2)
    assert tiled.dtype == torch.bfloat16 and tiled.shape == whole.shape == (1, 384, 320, 32)
    assert len(attended) == 10 * 4 and set(attended) == {(torch.bfloat16,) * 3}  # 10 tiles, 4 steps each
    cosine, relative = agreement(tiled, whole)
    assert cosine >= MIN_COSINE and relative <= MAX_RELATIVE_ERROR, (cosine, relative)
    monkeypatch.setattr(featlift.UPLiFT, "tile_halo", lambda self, iters=None: 2)
    cosine, relative = agreement(up(image, output_size="native", tile=2), whole)
    assert cosine < MIN_COSINE or relative > MAX_RELATIVE_ERROR, (cosine, relative)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["bilinear-guidance", "unshared-encoder"])
def test_antialiased_resampling_runs_in_half_precision_on_the_cpu(name, dtype, attended):
    """PyTorch's antialiased bilinear has no half-precision CPU kernel, and these configs use it (guidance
    maps resampled bilinearly; an unshared encoder's grown images): they failed deep in torch. The resample
    now runs in float32 and rounds once; the rest of the model, tiles included, stays in ``dtype``."""
    from featlift.modeling.guidance import RESAMPLES

    model = _randomise(featlift.UPLiFT(CONFIGS[name])).to(dtype)
    image, features = _inputs(model.config, 1, 3, 4)
    with torch.no_grad():
        out = model(image, features, iters=2)
        tiled = model(image, features, iters=2, tile=2)
    assert out.dtype == tiled.dtype == dtype and torch.isfinite(out).all()
    assert attended and set(attended) == {(dtype,) * 3}
    maps = torch.randn(1, 4, 9, 7, generator=torch.Generator().manual_seed(0)).to(dtype)
    want = torch.nn.functional.interpolate(maps.float(), size=(4, 5), mode="bilinear", antialias=True).to(dtype)
    assert torch.equal(RESAMPLES["bilinear"](maps, (4, 5)), want)


def test_the_halo_is_needed(monkeypatch):
    """With too small a halo the tiles disagree with the whole image: the equality above is not vacuous."""
    model = _randomise(featlift.UPLiFT(CONFIGS["patch16-n5"]))
    image, features = _inputs(model.config, 1, 12, 12)
    with torch.no_grad():
        full = model(image, features, iters=2)
        monkeypatch.setattr(model, "tile_halo", lambda iters=None: 1)
        tiled = model(image, features, iters=2, tile=4)
    assert (tiled - full).abs().max().item() > 1e-3


def test_the_halo_is_composed_from_what_each_block_reports(monkeypatch):
    """The halo follows the blocks' own reach, not config strings: a block type that reached one cell
    further would get a wider halo; one that cannot say (not translation-equivariant) refuses tiling."""
    model = featlift.UPLiFT(get_variant("dinov2_s14").config)
    before = model.tile_halo(4)
    monkeypatch.setattr(ConvBlock, "reach", lambda self: 2 * (1 if self.conv2 is None else 2))
    assert model.tile_halo(4) > before

    def untileable(self):
        raise UntileableError("a block of a new kind")

    monkeypatch.setattr(ConvBlock, "reach", untileable)
    with pytest.raises(ValueError, match="a block of a new kind.*run it untiled"):
        model.check_tile(8)


@pytest.mark.parametrize("iters", [5, 6])
def test_bilinear_guidance_tiles_exactly_beyond_the_guidance_resolution(iters):
    """Past the guidance resolution (16 px per cell: 4 iterations) bilinear resampling enlarges the
    guidance maps and reads a whole guidance pixel, more than one cell of the finer grid."""
    cfg = CONFIGS["bilinear-guidance"]
    model = _randomise(featlift.UPLiFT(cfg), seed=3)
    image, features = _inputs(cfg, 1, 5, 4)
    with torch.no_grad():
        full = model(image, features, iters=iters)
        tiled = model(image, features, iters=iters, tile=2)
    assert (tiled - full).abs().max().item() <= TOL * max(1.0, full.abs().max().item())


def test_halo_bound_for_the_published_layout():
    """By hand for dinov2_s14 (errors in cells of each iteration's input grid): iteration 0 reaches
    5/16 (encoder) + 2 (DoubleConv) + 1 (bilinear) + 2/2 (DoubleConv at 2x) = 4.31 cells; each later
    iteration doubles the error so far and adds 4, giving 6.31, 7.31 and 7.81 coarse cells -> 8."""
    model = featlift.UPLiFT(get_variant("dinov2_s14").config)
    assert [model.tile_halo(i) for i in (1, 2, 3, 4)] == [5, 7, 8, 8]
    assert model.tile_halo() == 8


def test_autograd_path_tiles_exactly_too():
    model = _randomise(featlift.UPLiFT(CONFIGS["patch14-n17"]))
    image, features = _inputs(model.config, 1, 6, 7)
    full = model(image, features, iters=2)
    tiled = model(image, features, iters=2, tile=3)
    assert (tiled - full).abs().max().item() <= TOL * max(1.0, full.abs().max().item())


def test_head_runs_per_tile_and_matches_the_whole_image():
    cfg = CONFIGS["patch14-n17"]
    model = _randomise(featlift.UPLiFT(cfg))
    probe = torch.nn.Conv2d(cfg.channels, 3, 1)
    seen = []

    def head(x):
        seen.append(tuple(x.shape[-2:]))
        return probe(x)

    image, features = _inputs(cfg, 2, 8, 6)
    with torch.no_grad():
        want = probe(model(image, features, iters=2))
        got = model(image, features, iters=2, tile=(4, 3), head=head)
        untiled = model(image, features, iters=2, head=probe)
    assert got.shape == (2, 3, 32, 24)
    assert seen == [(16, 12)] * 4, "one call per tile, on the tile's own pixels"
    assert (got - want).abs().max().item() <= TOL * max(1.0, want.abs().max().item())
    assert torch.allclose(untiled, want)


def test_bad_head_and_tile_arguments():
    model = featlift.UPLiFT(CONFIGS["patch16-n5"]).eval()
    image, features = _inputs(model.config, 1, 4, 4)
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"head must map features \[B, C, H, W\] to \[B, K, H, W\]"):
            model(image, features, iters=1, tile=2, head=lambda x: x.mean(dim=(2, 3)))
        for bad in (0, -3, (2,), (2, 0), 1.5, "big"):
            with pytest.raises(ValueError, match="tile must be a positive number of coarse cells"):
                model(image, features, iters=1, tile=bad)
        with pytest.raises(ValueError, match="cannot be combined with tile"):
            model(image, features, iters=1, tile=2, return_steps=True)


def test_configs_that_downsample_are_refused():
    stages = (
        EncoderStageConfig(blocks=BlockGroupConfig(widths=(4,))),
        EncoderStageConfig(blocks=BlockGroupConfig(widths=(4,)), down=DownConfig(op="max", factor=0.5)),
    )
    model = featlift.UPLiFT(_config(encoder=EncoderConfig(stages=stages))).eval()
    image, features = _inputs(model.config, 1, 4, 4)
    with pytest.raises(ValueError, match="an encoder down op.*run it untiled"):
        model(image, features, iters=1, tile=2)


@pytest.mark.parametrize(("full", "origin", "size"), [(9, 0, 4), (9, 3, 5), (9, 6, 3), (1, 0, 1), (17, 5, 12)])
def test_corner_aligned_upsample_equals_cropping_the_full_resize(full, origin, size):
    x = torch.randn(2, 3, full, full + 2)
    region = Region((origin, 1), (size, full), (full, full + 2))
    crop = x[:, :, origin : origin + size, 1 : 1 + full]
    want = torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    want = want[:, :, 2 * origin : 2 * (origin + size), 2 : 2 * (1 + full)]
    got = corner_aligned_upsample(crop, region, 2)
    # Output rows/cols next to a cut edge may tap cells outside the crop (halo); compare the rest.
    rows = slice(0 if origin == 0 else 2, 2 * size if origin + size == full else 2 * size - 2)
    cols = slice(2, 2 * full - 2)  # the crop is cut on both sides horizontally
    assert got.shape == want.shape
    assert torch.allclose(got[:, :, rows, cols], want[:, :, rows, cols], atol=1e-6)


def test_tiling_is_geometry_over_any_crop_wise_iterate():
    """``tiled`` knows nothing of UPLiFT: with a per-pixel ``iterate`` (nearest 2x) and no halo it rebuilds
    the whole map exactly, each crop it is handed is the grown tile, and the head runs per tile."""
    features = torch.randn(2, 3, 7, 5)
    seen = []

    def nearest(crop, region):
        seen.append((region.origin, region.size))
        assert crop.shape[-2:] == region.size
        return crop.repeat_interleave(2, -2).repeat_interleave(2, -1)

    whole = nearest(features, tiling.Region((0, 0), (7, 5), (7, 5)))
    seen.clear()
    out = tiling.tiled(nearest, features, tile=(3, 2), halo=1, factor=2, channels_last=False, head=lambda x: x[:, :1])
    assert torch.equal(out, whole[:, :1])
    assert seen[0] == ((0, 0), (4, 3)) and ((2, 1), (5, 4)) in seen, seen  # rows 3-6 and cols 2-4, grown by 1
    assert len(seen) == 3 * 3
