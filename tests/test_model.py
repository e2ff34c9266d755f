"""UPLiFT forward: shapes, odd sizes, dtypes, encoder sharing, noise, gradients and input errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import featlift
from featlift._registry import get_variant
from featlift.config import (
    BlockGroupConfig,
    DownConfig,
    EncoderConfig,
    EncoderStageConfig,
    RefinerConfig,
)
from featlift.modeling import _inference as inference
from featlift.modeling._inference import FoldedConv, fold_batchnorm
from featlift.modeling.guidance import RESAMPLES

from .configs import random_inputs, tiny_config


@pytest.mark.parametrize(("name", "patch"), [("dinov2_s14", 14), ("dinov3_splus16", 16)])
def test_default_iters_reach_pixel_density(name, patch):
    model = featlift.build_upsampler(name)
    image = torch.randn(1, 3, 2 * patch, 3 * patch)
    with torch.no_grad():
        out = model(image, torch.randn(1, 384, 2, 3))
    assert out.shape == (1, 384, 32, 48)


@pytest.mark.parametrize(("h", "w"), [(1, 1), (3, 5), (7, 2)])
@pytest.mark.parametrize("iters", [0, 1, 2, 3, 5])
def test_output_shape_for_odd_sizes_and_any_iteration_count(h, w, iters):
    cfg = tiny_config()
    model = featlift.UPLiFT(cfg).eval()
    image, features = random_inputs(cfg, h=h, w=w)
    with torch.no_grad():
        out = model(image, features, iters=iters)
    assert out.shape == (2, cfg.channels, h * 2**iters, w * 2**iters)
    if iters == 0:
        assert torch.equal(out, features)


def test_named_parts():
    model = featlift.UPLiFT(get_variant("sd15_vae").config)
    names = {name for name, _ in model.named_children()}
    assert names == {"guidance_encoder", "decoder_step", "attender", "refiner"}
    assert featlift.UPLiFT(get_variant("dinov2_s14").config).refiner is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_model_dtypes(dtype):
    cfg = tiny_config()
    model = featlift.UPLiFT(cfg).eval()
    image, features = random_inputs(cfg)
    with torch.no_grad():
        ref = model(image, features, iters=2)
        out = model.to(dtype)(image, features, iters=2)  # float32 inputs are cast to the model's dtype
    assert out.dtype == dtype
    tol = {torch.bfloat16: 0.1, torch.float16: 0.02, torch.float64: 1e-5}[dtype]
    assert (out.float() - ref).abs().max().item() <= tol * ref.abs().max().item()


def test_half_inputs_to_a_float32_model_compute_in_float32():
    cfg = tiny_config()
    model = featlift.UPLiFT(cfg).eval()
    image, features = random_inputs(cfg)
    with torch.no_grad():
        out = model(image.half(), features.half(), iters=1)
    assert out.dtype == torch.float32


def test_unshared_encoder_runs_once_per_iteration():
    cfg = tiny_config(share_encoder=False)
    model = featlift.UPLiFT(cfg).eval()
    calls = []
    model.guidance_encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[-2:]))
    image, features = random_inputs(cfg, h=2, w=3)
    with torch.no_grad():
        out = model(image, features, iters=3)
    assert out.shape[-2:] == (16, 24)
    # iteration i sees the image grown by 2**i, then pre-resized by 16/14
    assert [tuple(s) for s in calls] == [(32, 48), (64, 96), (128, 192)]

    shared = featlift.UPLiFT(dataclasses.replace(cfg, share_encoder=True)).eval()
    shared.load_state_dict(model.state_dict())
    calls.clear()
    shared.guidance_encoder.register_forward_hook(lambda m, i, o: calls.append(1))
    with torch.no_grad():
        shared(image, features, iters=3)
    assert calls == [1]


def test_guidance_patch_override_skips_the_pre_resize():
    cfg = tiny_config(guidance_patch=14)
    model = featlift.UPLiFT(cfg).eval()
    seen = []
    model.guidance_encoder.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[-2:])))
    image, features = random_inputs(cfg, h=2, w=2)
    with torch.no_grad():
        model(image, features, iters=1)
    assert seen == [(28, 28)]


def test_encoder_down_ops_run():
    stages = (
        EncoderStageConfig(blocks=BlockGroupConfig(widths=(4,))),
        EncoderStageConfig(
            blocks=BlockGroupConfig(widths=(8,)), down=DownConfig(op="conv", factor=0.5, residual="bilinear")
        ),
        EncoderStageConfig(
            blocks=BlockGroupConfig(widths=(8,), stride=2), down=DownConfig(op="max", factor=0.5, residual="bilinear")
        ),
    )
    cfg = dataclasses.replace(tiny_config(patch=16), encoder=EncoderConfig(stages=stages))
    model = featlift.UPLiFT(cfg).eval()
    image, features = random_inputs(cfg, h=2, w=3)
    maps = model.guidance_encoder(model.guidance_image(image))  # every map, not just those read
    assert [tuple(m.shape[-2:]) for m in maps] == [(32, 48), (16, 24), (4, 6)]
    with torch.no_grad():
        assert model(image, features).shape == (2, cfg.channels, 32, 48)


def _noisy_config(scale):
    base = tiny_config(patch=8, channels=4)
    dec = dataclasses.replace(base.decoder, noise_channels=3, noise_scale=scale)
    ref = RefinerConfig(
        blocks=BlockGroupConfig(norm="layer", widths=(8, 8)),
        noise_channels=2,
        noise_scale=scale,
        guidance_resample="nearest",
    )
    return dataclasses.replace(base, decoder=dec, refiner=ref)


def test_noise_channels_use_the_generator():
    model = featlift.UPLiFT(_noisy_config(1.0)).eval()
    image, features = random_inputs(model.config)
    with torch.no_grad():
        a = model(image, features, generator=torch.Generator().manual_seed(1))
        b = model(image, features, generator=torch.Generator().manual_seed(1))
        c = model(image, features, generator=torch.Generator().manual_seed(2))
    assert a.shape == (2, 4, 24, 32)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_zero_noise_scale_is_deterministic():
    model = featlift.UPLiFT(_noisy_config(0.0)).eval()
    image, features = random_inputs(model.config)
    with torch.no_grad():
        assert torch.equal(model(image, features), model(image, features))


def test_gradients_reach_every_parameter():
    cfg = tiny_config()
    model = featlift.UPLiFT(cfg).train()
    image, features = random_inputs(cfg)
    model(image, features, iters=2).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_outputs_are_convex_combinations_of_input_features():
    """Without a refiner, every output vector lies in the per-channel range of the input map."""
    cfg = tiny_config()
    model = featlift.UPLiFT(cfg).eval()
    image, features = random_inputs(cfg)
    with torch.no_grad():
        out = model(image, features, iters=3)
    lo = features.amin(dim=(2, 3), keepdim=True)
    hi = features.amax(dim=(2, 3), keepdim=True)
    assert torch.all(out >= lo - 1e-5) and torch.all(out <= hi + 1e-5)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda i, f: (i, f[:, :5]), ValueError, "features have 5 channels but this upsampler expects 6"),
        (lambda i, f: (i[:1], f), ValueError, "batch mismatch: image has 1 items, features 2"),
        (lambda i, f: (i[..., :-1], f), ValueError, "need an image of 42x56"),
        (lambda i, f: (i[:, :2], f), ValueError, "image must have 3 channels"),
        (lambda i, f: (i[0], f), ValueError, "image must be a 4-D tensor"),
        (lambda i, f: (i, f[0]), ValueError, "features must be a 4-D tensor \\[B, 6, h, w\\]"),
        (lambda i, f: (i, f.long()), TypeError, "features must be a floating-point tensor"),
        (lambda i, f: (i.numpy(), f), TypeError, "image must be a torch.Tensor"),
    ],
)
def test_bad_inputs_raise_clear_errors(make, error, match):
    cfg = tiny_config()
    model = featlift.UPLiFT(cfg).eval()
    image, features = make(*random_inputs(cfg))
    with pytest.raises(error, match=match):
        model(image, features, iters=1)


def test_bad_iters():
    cfg = tiny_config()
    model = featlift.UPLiFT(cfg).eval()
    with pytest.raises(ValueError, match="iters must be a non-negative integer"):
        model(*random_inputs(cfg), iters=-1)
    with pytest.raises(ValueError, match="iters must be a non-negative integer"):
        model(*random_inputs(cfg), iters=2.0)


def _random_batchnorm_statistics(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))


def test_deferred_deepest_map_equals_the_nearest_resampled_full_map():
    model = featlift.UPLiFT(get_variant("dinov2_s14").config).eval()
    _random_batchnorm_statistics(model)
    image = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        lean = model.guidance_encoder(image, keep=model.guidance_reads, lean=True)
        full = model.guidance_encoder(image)  # the plain path: every map at full resolution
    assert lean.deferred and not full.deferred
    for size in [(4, 3), (8, 6), (16, 12), (32, 24), (64, 48), (5, 7)]:
        want = F.interpolate(full[-1], size=size, mode="nearest")
        assert (lean.at(-1, size, RESAMPLES["nearest"]) - want).abs().max().item() <= 1e-5, size
    assert (lean[3] - full[3]).abs().max().item() <= 1e-5
    with pytest.raises(RuntimeError, match="was not kept"):
        lean[0]
    lean.release()
    with pytest.raises(RuntimeError, match="released"):
        lean[3]


def test_inference_path_matches_the_autograd_path_with_batchnorm_statistics():
    """Folded BatchNorm, split concatenations and in-place adds give the plain path's numbers."""
    model = featlift.UPLiFT(get_variant("dinov2_s14").config).eval()
    _random_batchnorm_statistics(model, seed=1)
    image, features = torch.randn(2, 3, 42, 56), torch.randn(2, 384, 3, 4)
    with torch.no_grad():
        lean = model(image, features, iters=3)
    plain = model(image, features, iters=3).detach()
    assert (lean - plain).abs().max().item() <= 1e-4 * max(1.0, plain.abs().max().item())


def test_whole_model_compiles_without_graph_breaks():
    """fullgraph=True raises on any graph break: the attender op and the lean path trace as one graph."""
    model = featlift.UPLiFT(tiny_config(patch=16)).eval()
    image, features = random_inputs(model.config, h=3, w=2)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        want = model(image, features, iters=2)
        got = compiled(image, features, iters=2)
    assert (got - want).abs().max().item() <= 1e-5


def _lean_and_plain(model, image, features, iters=2):
    with torch.no_grad():
        lean = model(image, features, iters=iters)
    plain = model(image, features, iters=iters).detach()  # autograd on: the plain path
    return lean, plain


def _assert_close(a, b, tol=1e-4):
    assert (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())


def test_blocks_take_the_path_they_are_told_not_the_grad_mode():
    """The lean path is chosen once per call (featlift.modeling._inference.plan) and passed down: a block
    called directly runs the plain path under no_grad, and the lean path (BatchNorm folded, so the norm
    module never runs) when asked, with autograd on or off."""
    model = featlift.UPLiFT(get_variant("dinov2_s14").config).eval()
    _random_batchnorm_statistics(model, seed=2)
    block = model.decoder_step.input_blocks[0]
    calls = []
    block.norm1.register_forward_hook(lambda *args: calls.append(1))
    x = [torch.randn(1, 384, 3, 4), torch.randn(1, 128, 3, 4)]
    with torch.no_grad():
        plain = block(x)
        assert calls == [1]
        lean = block(x, lean=True)
        assert calls == [1]
    _assert_close(lean, plain, 1e-5)


def test_folded_batchnorm_never_goes_stale():
    """Folded weights are cached, and refolded after load_state_dict, .to(dtype), a round trip through
    half precision, an in-place edit and training steps: the lean path keeps equal to the plain one."""
    cfg = get_variant("dinov2_s14").config
    model = featlift.UPLiFT(cfg).eval()
    _random_batchnorm_statistics(model, seed=3)
    image, features = torch.randn(1, 3, 42, 56), torch.randn(1, 384, 3, 4)
    lean, plain = _lean_and_plain(model, image, features)
    _assert_close(lean, plain)
    block = model.decoder_step.input_blocks[0]

    other = featlift.UPLiFT(cfg).eval()
    _random_batchnorm_statistics(other, seed=4)
    model.load_state_dict(other.state_dict())
    lean, plain = _lean_and_plain(model, image, features)
    _assert_close(lean, plain)
    _assert_close(lean, _lean_and_plain(other, image, features)[1])

    model.to(torch.float64)
    lean, plain = _lean_and_plain(model, image.double(), features.double())
    assert lean.dtype == torch.float64
    _assert_close(lean, plain, 1e-9)

    model.half().float()  # the same dtype again, with rounded weights
    lean, plain = _lean_and_plain(model, image, features)
    _assert_close(lean, plain)

    with torch.no_grad():
        block.norm1.running_var.mul_(3.0)
        block.conv1.weight.mul_(-1.5)
    lean, plain = _lean_and_plain(model, image, features)
    _assert_close(lean, plain)

    block.norm1.running_var.data.add_(0.5)  # edits through .data (EMA updates) bypass version counters
    block.conv1.weight.data.mul_(0.5)
    lean, plain = _lean_and_plain(model, image, features)
    _assert_close(lean, plain)

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        model(image, features, iters=2).square().mean().backward()
        optimizer.step()
    model.eval()
    lean, plain = _lean_and_plain(model, image, features)
    _assert_close(lean, plain)


def test_stale_folds_would_be_caught(monkeypatch):
    """Negative control: with each fold kept from the first call, an in-place edit leaves the lean path
    behind."""
    model = featlift.UPLiFT(get_variant("dinov2_s14").config).eval()
    _random_batchnorm_statistics(model, seed=5)
    image, features = torch.randn(1, 3, 42, 56), torch.randn(1, 384, 3, 4)
    kept = {}
    real_get = FoldedConv.get

    def keep_forever(self, conv, norm):
        if id(self) not in kept:
            kept[id(self)] = real_get(self, conv, norm)
        return kept[id(self)]

    monkeypatch.setattr(FoldedConv, "get", keep_forever)
    _lean_and_plain(model, image, features)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.mul_(4.0)
    lean, plain = _lean_and_plain(model, image, features)
    assert (lean - plain).abs().max().item() > 1e-2


def test_each_conv_folds_once_per_call(monkeypatch):
    """The decoder's convs run once per iteration but fold once per call; the next call folds again
    (from the weights as they are then), and a block called outside a forward call folds on each use."""
    model = featlift.UPLiFT(get_variant("dinov2_s14").config).eval()
    _random_batchnorm_statistics(model, seed=7)
    image, features = torch.randn(1, 3, 42, 56), torch.randn(1, 384, 3, 4)
    folds = []
    monkeypatch.setattr(
        inference, "fold_batchnorm", lambda conv, norm: folds.append(conv) or fold_batchnorm(conv, norm)
    )
    with torch.no_grad():
        model(image, features, iters=3)
        first = list(folds)
        model(image, features, iters=3)
    assert first, "the lean path folded nothing"
    assert len({id(conv) for conv in first}) == len(first), "a conv folded twice in one call"
    decoder_convs = {id(m) for m in model.decoder_step.modules() if isinstance(m, torch.nn.Conv2d)}
    assert decoder_convs & {id(conv) for conv in first}, "the decoder's folds are among them"
    assert folds[len(first) :] == first, "the second call folds every conv again"

    folds.clear()
    block = model.decoder_step.input_blocks[0]
    x = [torch.randn(1, 384, 3, 4), torch.randn(1, 128, 3, 4)]
    with torch.no_grad():
        block(x, lean=True)
        block(x, lean=True)
    convs = [block.conv1] if block.conv2 is None else [block.conv1, block.conv2]
    assert folds == convs + convs


# Tensor reads that make the host wait for a CUDA device: a bool or number read back, or a comparison.
SYNCING_OPS = {
    torch.ops.aten.equal.default,
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.is_nonzero.default,
    torch.ops.aten.item.default,
    torch.ops.aten.nonzero.default,
    torch.ops.aten.allclose.default,
}


class _CountSyncs(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in SYNCING_OPS or (func is torch.ops.aten._to_copy.default and (kwargs or {}).get("device")):
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("variant", ["dinov2_s14", "sd15_vae"])
def test_a_lean_forward_reads_no_tensor_value_back(variant):
    """No synchronising read (torch.equal, .item(), bool(tensor), ...) in a lean forward after the first:
    on CUDA each would wait for the GPU. The counter sees them (checked on a deliberate .item())."""
    model = featlift.UPLiFT(get_variant(variant).config).eval()
    _random_batchnorm_statistics(model, seed=8)
    image, features = random_inputs(model.config, b=1)
    with torch.no_grad():
        model(image, features)
        with _CountSyncs() as counter:
            model(image, features)
            model(image, features, tile=2)
        assert counter.seen == []
        with _CountSyncs() as counter:
            features.sum().item()
        assert counter.seen == ["aten._local_scalar_dense.default"]


def test_a_model_made_under_inference_mode_runs_lean():
    """Parameters created or moved under torch.inference_mode() are inference tensors (no version
    counter): the folded-weight cache must still work for them."""
    cfg = get_variant("dinov2_s14").config
    reference = featlift.UPLiFT(cfg).eval()
    _random_batchnorm_statistics(reference, seed=6)
    image, features = torch.randn(1, 3, 42, 56), torch.randn(1, 384, 3, 4)
    with torch.inference_mode():
        model = featlift.UPLiFT(cfg).eval()
        model.load_state_dict(reference.state_dict())
        model.to(torch.float32)
        first = model(image, features, iters=2)
    with torch.no_grad():
        second = model(image, features, iters=2)
    plain = reference(image, features, iters=2).detach()
    _assert_close(first, plain)
    _assert_close(second, plain)


def test_a_submodule_left_in_training_mode_keeps_the_plain_path():
    """Lean needs every submodule in eval mode: a decoder left training uses its batch statistics, as
    the autograd path does, even under no_grad."""
    model = featlift.UPLiFT(get_variant("dinov2_s14").config).eval()
    _random_batchnorm_statistics(model, seed=7)
    model.decoder_step.train()
    image, features = torch.randn(2, 3, 42, 56), torch.randn(2, 384, 3, 4)
    with torch.no_grad():
        lean = model(image, features, iters=1)
    plain = model(image, features, iters=1).detach()
    _assert_close(lean, plain)
    model.eval()
    with torch.no_grad():
        running = model(image, features, iters=1)
    assert (running - plain).abs().max().item() > 1e-3, "batch and running statistics must differ here"


def test_step_takes_a_generator_or_a_noise_source():
    model = featlift.UPLiFT(_noisy_config(1.0)).eval()
    image, features = random_inputs(model.config)
    with torch.no_grad():
        guidance = model.encode_guidance(image)
        a = model.step(features, guidance, torch.Generator().manual_seed(3))
        b = model.step(features, model.encode_guidance(image), torch.Generator().manual_seed(3))
    assert a.shape == (2, 4, 6, 8) and torch.equal(a, b)


def test_every_config_string_maps_to_a_class():
    """The schema's choices (config.py) and the tables that turn them into modules at construction
    (modeling/) name the same strings, so a new choice cannot be accepted and then built wrongly."""
    from featlift import config
    from featlift.modeling import blocks, guidance

    assert set(blocks.NORMS) == set(config.NORM_TYPES)
    assert set(blocks.BLOCK_CONVS) == set(config.BLOCK_TYPES)
    assert set(blocks.DOWN_OPS) == set(config.DOWN_OPS)
    assert set(blocks.UP_OPS) == set(config.UP_OPS)
    assert set(blocks._BILINEAR_RESIDUAL) == set(config.RESIDUAL_MODES)
    assert set(guidance.RESAMPLES) == set(config.RESAMPLE_MODES)
