"""CUDA checks: the compiled Triton kernel against the oracle, half precision end to end, torch.compile.

Marked ``gpu`` (skipped by default); run with ``python -m pytest -m gpu`` on a machine with CUDA.
"""

from __future__ import annotations

import os

import pytest
import torch

import featlift
from featlift.ops import local_attend, local_attend_reference, neighbourhood_offsets

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="compiled kernels, not the interpreter"),
]


@pytest.mark.parametrize("size", [5, 9, 13, 17, 25])
@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_triton_kernel_matches_oracle_fp32(size, scale):
    gen = torch.Generator(device="cuda").manual_seed(size + scale)
    values = torch.randn(2, 100, 9, 13, device="cuda", generator=gen)
    logits = 3 * torch.randn(2, size, 9 * scale, 13 * scale, device="cuda", generator=gen)
    offsets = neighbourhood_offsets(size)
    got = local_attend(logits, values, offsets, scale, impl="triton")
    assert (got - local_attend_reference(logits, values, offsets, scale)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_kernel_half_precision_accumulates_in_fp32(dtype):
    values = torch.randn(1, 384, 64, 64, device="cuda").to(dtype)
    logits = torch.randn(1, 17, 128, 128, device="cuda").to(dtype)
    offsets = neighbourhood_offsets(17)
    ref = local_attend_reference(logits.double(), values.double(), offsets, 2)
    got = local_attend(logits, values, offsets, 2, impl="triton")
    assert got.dtype == dtype
    eps = torch.finfo(dtype).eps
    assert torch.all((got.double() - ref).abs() <= eps * ref.abs() + eps * 1e-2)


def test_auto_picks_triton_on_cuda():
    from featlift.ops import resolve_impl

    assert resolve_impl("auto", torch.zeros(1, device="cuda")) == "triton"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_model_end_to_end_in_half_precision(dtype):
    model32 = featlift.build_upsampler("dinov2_s14", device="cuda")
    model = featlift.build_upsampler("dinov2_s14", device="cuda", dtype=dtype)
    model.load_state_dict(model32.state_dict())
    image = torch.randn(1, 3, 224, 224, device="cuda")
    features = torch.randn(1, 384, 16, 16, device="cuda")
    with torch.inference_mode():
        want = model32(image, features)
        got = model(image.to(dtype), features.to(dtype))
    assert got.dtype == dtype and torch.isfinite(got).all()
    assert (got.float() - want).abs().max().item() <= 0.05 * max(1.0, want.abs().max().item())


def test_torch_compile_with_inductor_matches_eager():
    model = featlift.build_upsampler("dinov2_s14", device="cuda")
    image = torch.randn(1, 3, 224, 224, device="cuda")
    features = torch.randn(1, 384, 16, 16, device="cuda")
    compiled = torch.compile(model, fullgraph=True)
    with torch.inference_mode():
        assert (compiled(image, features) - model(image, features)).abs().max().item() <= 1e-4


def test_tiled_equals_untiled_on_cuda():
    model = featlift.build_upsampler("dinov2_s14", device="cuda")
    image = torch.randn(1, 3, 14 * 40, 14 * 36, device="cuda")
    features = torch.randn(1, 384, 40, 36, device="cuda")
    with torch.inference_mode():
        full = model(image, features)
        tiled = model(image, features, tile=16)
    assert (tiled - full).abs().max().item() <= 1e-4
