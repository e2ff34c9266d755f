"""CUDA checks: the compiled Triton kernel against the oracle in every variant a call can take, the model
on CUDA end to end, torch.compile, CUDA graphs, the memory guard.

Marked ``gpu`` (skipped by default); run with ``python -m pytest -m gpu`` on a machine with CUDA (no
network needed: every model is randomly initialised). Tests of the kernel force it (``impl="triton"`` or
a forced :class:`~featlift.ops.AttendPolicy`), so they can never pass on the fused fallback.
"""

from __future__ import annotations

import os

import pytest
import torch

import featlift
import featlift.ops._triton as triton_kernel
from featlift._registry import get_variant
from featlift.ops import AttendPolicy, local_attend, local_attend_reference, neighbourhood_offsets, use_attend_policy
from featlift.ops._fused import fused_forward

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="compiled kernels, not the interpreter"),
    pytest.mark.skipif(triton_kernel.triton is None, reason="needs triton"),
]


def _close(got, want, dtype=torch.float32):
    """Within one rounding of ``dtype`` of the float64 oracle (absolute 1e-5 for float32)."""
    got, want = got.double(), want.double()
    if dtype in (torch.float16, torch.bfloat16):
        eps = torch.finfo(dtype).eps
        return bool(torch.all((got - want).abs() <= eps * want.abs() + eps * 1e-2))
    return (got - want).abs().max().item() <= 1e-5


def _inputs(batch, channels, h, w, scale, n, *, dtype=torch.float32, device="cuda", seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    values = torch.randn(batch, channels, h, w, generator=gen).to(device=device, dtype=dtype)
    logits = (3 * torch.randn(batch, n, h * scale, w * scale, generator=gen)).to(device=device, dtype=dtype)
    return logits, values


def _model(variant="dinov2_s14", device="cuda", dtype=None):
    model = featlift.UPLiFT(get_variant(variant).config).eval().to(device)
    return model if dtype is None else model.to(dtype)


@pytest.fixture
def triton_forced():
    """The Triton kernel wherever impl="auto" is asked (no self-test, no fallback)."""
    with use_attend_policy(AttendPolicy("triton")) as policy:
        yield policy


# -- the kernel ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [5, 9, 13, 17, 25])
@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_kernel_matches_oracle_fp32(size, scale):
    logits, values = _inputs(2, 100, 9, 13, scale, size, seed=size + scale)
    offsets = neighbourhood_offsets(size)
    got = local_attend(logits, values, offsets, scale, impl="triton")
    assert _close(got, local_attend_reference(logits.double(), values.double(), offsets, scale))


@pytest.mark.parametrize(
    "shape",
    [(3, 67, 5, 7), (1, 4, 1, 9), (3, 384, 9, 1), (1, 1, 1, 1), (4, 4, 16, 16), (5, 384, 8, 8)],
    ids=["general", "vae-side-1", "width-1", "one-cell", "vae", "batch-5"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("wide", [False, True], ids=["32-bit", "64-bit"])
def test_kernel_variants_match_oracle(shape, dtype, wide):
    """Every variant the compile test compiles, run: each dtype, 32/64-bit indexing (forced on small
    inputs), sides of 1, batch 1 to 5, the VAE's 4 channels."""
    logits, values = _inputs(*shape, 2, 17, dtype=dtype)
    offsets = neighbourhood_offsets(17)
    got = triton_kernel.triton_forward(logits, values, offsets, 2, wide=wide)
    assert got.dtype == dtype
    assert _close(got, local_attend_reference(logits.double(), values.double(), offsets, 2), dtype)


def test_kernel_past_2_to_the_31_elements():
    """A real 64-bit call: the output has more than 2**31 elements (bfloat16, about 14 GB in all)."""
    free, _ = torch.cuda.mem_get_info()
    if free < 24e9:
        pytest.skip(f"needs 24 GB of free GPU memory, {free / 1e9:.0f} GB free")
    offsets = neighbourhood_offsets(5)
    values = torch.randn(1, 8, 8192, 8200, device="cuda", dtype=torch.bfloat16)
    logits = torch.randn(1, 5, 16384, 16400, device="cuda", dtype=torch.bfloat16)
    assert triton_kernel.needs_wide(logits, values, 2)
    got = local_attend(logits, values, offsets, 2, impl="triton")
    # Check the far end (past the 2**31st element) against the oracle on the same crop plus a margin.
    crop = local_attend_reference(logits[:, :, -64:, -64:].double(), values[:, :, -32:, -32:].double(), offsets, 2)
    assert _close(got[:, :, -62:, -62:], crop[:, :, -62:, -62:], torch.bfloat16)
    del got, logits, values
    torch.cuda.empty_cache()


def test_minus_infinity_logits_in_the_compiled_kernel():
    logits, values = _inputs(2, 5, 3, 4, 2, 9)
    logits[:, 0] = float("-inf")
    offsets = neighbourhood_offsets(9)
    got = local_attend(logits, values, offsets, 2, impl="triton")
    want = local_attend_reference(logits.clamp_min(-1e4).double(), values.double(), offsets, 2)
    assert torch.isfinite(got).all() and _close(got, want)


def test_kernel_on_a_second_device():
    """The launch runs on the tensors' device, not the current one."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    logits, values = _inputs(2, 67, 5, 7, 2, 17, device="cuda:1")
    offsets = neighbourhood_offsets(17)
    with torch.cuda.device(0):
        got = local_attend(logits, values, offsets, 2, impl="triton")
        torch.cuda.synchronize(1)
    assert got.device == torch.device("cuda:1")
    assert _close(got, local_attend_reference(logits.double(), values.double(), offsets, 2))
    with use_attend_policy(AttendPolicy()) as policy:  # auto: the self-test passes on cuda:1 as well
        assert featlift.ops.resolve_impl("auto", values) == "triton"
        assert policy.verdict("cuda:1") is True


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_auto_takes_the_kernel_after_its_self_test(dtype):
    with use_attend_policy(AttendPolicy()) as policy:
        values = torch.zeros(1, 4, 2, 2, device="cuda", dtype=dtype)
        assert featlift.ops.resolve_impl("auto", values) == "triton"
        assert policy.verdict(values.device, dtype) is True


def test_kernel_agrees_with_the_fused_path_on_cuda():
    logits, values = _inputs(2, 384, 32, 32, 2, 17, dtype=torch.bfloat16)
    offsets = neighbourhood_offsets(17)
    a = local_attend(logits, values, offsets, 2, impl="triton").double()
    b = fused_forward(logits, values, offsets, 2, channels_last=False).double()
    eps = torch.finfo(torch.bfloat16).eps
    assert torch.all((a - b).abs() <= 2 * eps * b.abs() + 1e-3)


# -- the model on CUDA -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_model_end_to_end_in_half_precision(triton_forced, dtype):
    model32 = _model()
    model = _model(dtype=dtype)
    model.load_state_dict(model32.state_dict())
    image = torch.randn(3, 3, 224, 224, device="cuda")
    features = torch.randn(3, 384, 16, 16, device="cuda")
    with torch.inference_mode():
        want = model32(image, features)
        got = model(image.to(dtype), features.to(dtype))
    assert got.dtype == dtype and torch.isfinite(got).all()
    cosine = torch.nn.functional.cosine_similarity(got.float(), want, dim=1)
    assert cosine.mean().item() >= 0.995 and cosine.min().item() >= 0.95


def test_model_on_cuda_matches_the_cpu(triton_forced):
    cpu = _model(device="cpu")
    gpu = _model()
    gpu.load_state_dict(cpu.state_dict())
    image, features = torch.randn(2, 3, 14 * 12, 14 * 10), torch.randn(2, 384, 12, 10)
    with torch.inference_mode():
        want = cpu(image, features)
        got = gpu(image.cuda(), features.cuda()).cpu()
    assert (got - want).abs().max().item() <= 1e-3 * max(1.0, want.abs().max().item())


def test_channels_last_input_gives_the_same_answer(triton_forced):
    model = _model()
    image = torch.randn(2, 3, 224, 224, device="cuda")
    features = torch.randn(2, 384, 16, 16, device="cuda")
    with torch.inference_mode():
        plain = model(image, features)
        strided = model(
            image.contiguous(memory_format=torch.channels_last), features.contiguous(memory_format=torch.channels_last)
        )
    assert (plain - strided).abs().max().item() <= 1e-5


def test_a_lean_forward_never_waits_for_the_gpu(triton_forced):
    """No synchronising call in a lean forward after the first (CUDA's sync debug mode raises on one)."""
    model = _model()
    image = torch.randn(1, 3, 224, 224, device="cuda")
    features = torch.randn(1, 384, 16, 16, device="cuda")
    with torch.inference_mode():
        model(image, features)
        torch.cuda.set_sync_debug_mode("error")
        try:
            model(image, features)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_a_lean_forward_is_captured_in_a_cuda_graph(triton_forced):
    """No host read-back means the forward can be captured; replay follows edited weights (the fold is in
    the graph)."""
    model = _model()
    image = torch.randn(1, 3, 224, 224, device="cuda")
    features = torch.randn(1, 384, 16, 16, device="cuda")
    with torch.inference_mode():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                model(image, features)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = model(image, features)
        graph.replay()
        assert (captured - model(image, features)).abs().max().item() <= 1e-5
        norm = model.decoder_step.input_blocks[0].norm1
        norm.running_var.mul_(2.0)
        graph.replay()
        assert (captured - model(image, features)).abs().max().item() <= 1e-5


def test_backward_under_bf16_autocast(triton_forced):
    model = _model().train()
    image = torch.randn(2, 3, 112, 112, device="cuda")
    features = torch.randn(2, 384, 8, 8, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(image, features, iters=2)
    out.float().square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    reference = _model().train()
    reference.load_state_dict(model.state_dict())
    reference(image, features, iters=2).square().mean().backward()
    first = next(p for p in model.parameters() if p.requires_grad)
    ref_first = next(p for p in reference.parameters() if p.requires_grad)
    cosine = torch.nn.functional.cosine_similarity(first.grad.flatten(), ref_first.grad.flatten(), dim=0)
    assert cosine.item() >= 0.95


def test_torch_compile_with_inductor_matches_eager(triton_forced):
    model = _model()
    image = torch.randn(1, 3, 224, 224, device="cuda")
    features = torch.randn(1, 384, 16, 16, device="cuda")
    compiled = torch.compile(model, fullgraph=True)
    with torch.inference_mode():
        assert (compiled(image, features) - model(image, features)).abs().max().item() <= 1e-4


def test_tiled_equals_untiled_on_cuda(triton_forced):
    model = _model()
    image = torch.randn(1, 3, 14 * 40, 14 * 36, device="cuda")
    features = torch.randn(1, 384, 40, 36, device="cuda")
    with torch.inference_mode():
        full = model(image, features)
        tiled = model(image, features, tile=16)
    assert (tiled - full).abs().max().item() <= 1e-4


def test_the_memory_guard_bounds_the_real_peak(triton_forced):
    """The guard's estimate of a 448 px call is at least what CUDA's allocator measures (and not wildly
    more), so it refuses only calls that would not fit."""
    from featlift.backbones import TimmViT

    backbone = TimmViT("vit_small_patch14_dinov2.lvd142m").freeze()
    up = featlift.Upsampler(backbone, _model(device="cpu")).to("cuda")
    image = torch.rand(1, 3, 448, 448)
    estimate = up.estimate_memory(1, (448, 448))
    up(image)  # warm-up: kernels compiled, workspaces allocated
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = up(image)
    peak = torch.cuda.max_memory_allocated() - base
    assert out.shape[-2:] == (448, 448)
    assert peak <= estimate.total, f"measured {peak} B, estimated {estimate.total} B"
    assert estimate.total <= 4 * peak, f"measured {peak} B, estimated {estimate.total} B"
