"""The attender operation: brute-force loop, oracle agreement for every implementation, properties,
dtypes, gradients, torch.compile and errors.

The Triton kernel runs in Triton's CPU interpreter here (``TRITON_INTERPRET=1``, set per test).
"""

from __future__ import annotations

import functools
import itertools
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import featlift.ops._bagged as bagged_path
import featlift.ops._triton as triton_kernel
from featlift.ops import local_attend, local_attend_reference, neighbourhood_offsets, resolve_impl

SIZES = [5, 9, 13, 17, 25]
LAYOUTS = (torch.contiguous_format, torch.channels_last)
FAST_IMPLS = ["fused", "bagged", "triton"]
needs_triton = pytest.mark.skipif(triton_kernel.triton is None, reason="triton is not installed")


@pytest.fixture(params=FAST_IMPLS)
def impl(request, monkeypatch):
    """A fast implementation's name; for Triton the kernel runs in the CPU interpreter."""
    if request.param == "triton":
        if triton_kernel.triton is None:
            pytest.skip("triton is not installed")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    return request.param


def brute_force(logits, values, offsets, scale):
    """One output element at a time, straight from the definition."""
    b, c, h, w = values.shape
    out = torch.zeros(b, c, h * scale, w * scale, dtype=torch.float64)
    for bi in range(b):
        for y in range(h * scale):
            for x in range(w * scale):
                weights = torch.softmax(logits[bi, :, y, x].double(), dim=0)
                for k, (dy, dx) in enumerate(offsets):
                    yy = min(max(y // scale + dy, 0), h - 1)
                    xx = min(max(x // scale + dx, 0), w - 1)
                    out[bi, :, y, x] += weights[k] * values[bi, :, yy, xx].double()
    return out


@pytest.mark.parametrize("size", SIZES)
def test_offsets_follow_the_published_shapes(size):
    offsets = neighbourhood_offsets(size)
    assert len(offsets) == len(set(offsets)) == size
    assert list(offsets) == sorted(offsets), "row-major: by dy, then dx"
    assert (0, 0) in offsets
    expected = {
        5: {(dy, dx) for dy in range(-1, 2) for dx in range(-1, 2) if abs(dy) + abs(dx) <= 1},
        9: {(dy, dx) for dy in range(-1, 2) for dx in range(-1, 2)},
        13: {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if abs(dy) + abs(dx) <= 2},
        17: {(dy, dx) for dy in range(-1, 2) for dx in range(-1, 2)}
        | {(dy, dx) for dy in (-2, 0, 2) for dx in (-2, 0, 2)},
        25: {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)},
    }[size]
    assert set(offsets) == expected


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("scale", [1, 2, 3])
@pytest.mark.parametrize("name", ["reference", "portable", *FAST_IMPLS])
def test_matches_brute_force_loop(size, scale, name, monkeypatch):
    if name == "triton":
        if triton_kernel.triton is None:
            pytest.skip("triton is not installed")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    gen = torch.Generator().manual_seed(size * 10 + scale)
    values = torch.randn(2, 3, 3, 4, generator=gen)
    logits = 3 * torch.randn(2, size, 3 * scale, 4 * scale, generator=gen)
    offsets = neighbourhood_offsets(size)
    got = local_attend(logits, values, offsets, scale, impl=name)
    assert got.shape == (2, 3, 3 * scale, 4 * scale)
    assert torch.allclose(got.double(), brute_force(logits, values, offsets, scale), atol=1e-5)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("h", "w", "scale"), [(1, 1, 2), (5, 3, 2), (4, 7, 4), (6, 2, 5)])
def test_fast_paths_equal_oracle(size, h, w, scale, impl):
    gen = torch.Generator().manual_seed(h * w * scale + size)
    values = torch.randn(2, 70, h, w, generator=gen)  # 70 channels: more than one Triton channel block
    logits = 4 * torch.randn(2, size, h * scale, w * scale, generator=gen)
    offsets = neighbourhood_offsets(size)
    a = local_attend(logits, values, offsets, scale, impl=impl)
    b = local_attend_reference(logits, values, offsets, scale)
    assert (a - b).abs().max().item() <= 1e-5


@settings(max_examples=40, deadline=None)
@given(
    size=st.sampled_from(SIZES),
    h=st.integers(1, 5),
    w=st.integers(1, 5),
    scale=st.integers(1, 4),
    c=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_outputs_stay_inside_the_neighbourhood_range(size, h, w, scale, c, seed):
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(1, c, h, w, generator=gen)
    logits = 5 * torch.randn(1, size, h * scale, w * scale, generator=gen)
    offsets = neighbourhood_offsets(size)
    out = local_attend(logits, values, offsets, scale)
    for y in range(h * scale):
        for x in range(w * scale):
            cells = torch.stack(
                [
                    values[0, :, min(max(y // scale + dy, 0), h - 1), min(max(x // scale + dx, 0), w - 1)]
                    for dy, dx in offsets
                ]
            )
            assert torch.all(out[0, :, y, x] >= cells.min(0).values - 1e-5)
            assert torch.all(out[0, :, y, x] <= cells.max(0).values + 1e-5)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_constant_features_give_constant_output(size, dtype):
    """In half precision too, exactly: the weights sum to 1 closely enough that the constant comes back
    after the output's rounding (weights rounded to bfloat16 moved 1 pixel in 40 by one unit)."""
    values = torch.full((2, 4, 3, 5), 0.0)
    values += torch.tensor([1.5, -2.0, 0.25, 100.0]).view(1, 4, 1, 1)
    logits = 10 * torch.randn(2, size, 6, 10)
    out = local_attend(logits.to(dtype), values.to(dtype), neighbourhood_offsets(size), 2)
    want = values[:, :, :1, :1].expand_as(out).to(dtype)
    assert torch.allclose(out, want, atol=1e-5) if dtype == torch.float32 else torch.equal(out, want)


def test_batch_items_are_independent():
    values = torch.randn(3, 4, 4, 4)
    logits = torch.randn(3, 17, 8, 8)
    offsets = neighbourhood_offsets(17)
    full = local_attend(logits, values, offsets, 2)
    for i in range(3):
        single = local_attend(logits[i : i + 1], values[i : i + 1], offsets, 2)
        assert torch.allclose(full[i : i + 1], single, atol=1e-6)
    changed = values.clone()
    changed[1] += 100
    out = local_attend(logits, changed, offsets, 2)
    assert torch.equal(out[0], full[0]) and torch.equal(out[2], full[2])
    assert not torch.allclose(out[1], full[1])


def with_weights(weights, values, offsets, scale):
    """The weighted sum for given (already normalised) weights [B, n, H, W], in the inputs' dtype."""
    _, _, h, w = values.shape
    rows = torch.arange(h * scale) // scale
    cols = torch.arange(w * scale) // scale
    out = torch.zeros((*values.shape[:2], h * scale, w * scale), dtype=values.dtype)
    for k, (dy, dx) in enumerate(offsets):
        shifted = values[:, :, (rows + dy).clamp(0, h - 1)][:, :, :, (cols + dx).clamp(0, w - 1)]
        out += weights[:, k : k + 1] * shifted
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_dtypes_match_float64_within_rounding(dtype, impl):
    """Half precision accumulates in float32 with float32 weights: the only error left is the output's own
    rounding (a sum of 17 terms rounded at each step, or with weights rounded to the values' dtype,
    misses this bound: the test below)."""
    gen = torch.Generator().manual_seed(3)
    values = torch.randn(1, 40, 5, 6, generator=gen)
    logits = 3 * torch.randn(1, 17, 10, 12, generator=gen)
    offsets = neighbourhood_offsets(17)
    if impl == "bagged" and dtype == torch.float64:
        with pytest.raises(RuntimeError, match="float32, bfloat16 or float16, not on cpu in torch.float64"):
            local_attend(logits.double(), values.double(), offsets, 2, impl=impl)
        return
    # The oracle sees the same rounded inputs, in float64.
    ref = local_attend_reference(logits.to(dtype).double(), values.to(dtype).double(), offsets, 2)
    out = local_attend(logits.to(dtype), values.to(dtype), offsets, 2, impl=impl)
    assert out.dtype == dtype
    eps = torch.finfo(dtype).eps if dtype != torch.float64 else 1e-12
    # One unit in the last place of each element (plus a floor near zero) is the output's rounding.
    assert torch.all((out.double() - ref).abs() <= eps * ref.abs() + eps * 1e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_paths_that_round_more_miss_that_bound(dtype):
    """Negative controls for the bound above: the same sum with its weights rounded to the values' dtype
    (what the embedding-bag kernel would do with one entry per offset), or accumulated in that dtype."""
    gen = torch.Generator().manual_seed(3)
    values = torch.randn(1, 40, 5, 6, generator=gen).to(dtype)
    logits = 3 * torch.randn(1, 17, 10, 12, generator=gen).to(dtype)
    offsets = neighbourhood_offsets(17)
    ref = local_attend_reference(logits.double(), values.double(), offsets, 2)
    weights = torch.softmax(logits.double(), dim=1)
    eps = torch.finfo(dtype).eps
    for wrong in (
        with_weights(weights.to(dtype).double(), values.double(), offsets, 2).to(dtype),  # rounded weights
        with_weights(weights.to(dtype), values, offsets, 2),  # every product and partial sum rounded
    ):
        assert not torch.all((wrong.double() - ref).abs() <= eps * ref.abs() + eps * 1e-2)


def test_bagged_reads_and_writes_the_values_dtype(monkeypatch):
    """What the kernel is handed in bfloat16: a bfloat16 table with contiguous rows (no float32 copy, no
    strided view that sends it to PyTorch's slow loop), bfloat16 weights, and bands of bounded size."""
    seen = []
    real = bagged_path.F.embedding_bag

    def spy(cells, table, **kwargs):
        seen.append((table.dtype, table.is_contiguous(), kwargs["per_sample_weights"].dtype, cells.shape))
        return real(cells, table, **kwargs)

    monkeypatch.setattr(bagged_path.F, "embedding_bag", spy)
    monkeypatch.setattr(bagged_path, "_BAND_PIXELS", 64)
    offsets = neighbourhood_offsets(17)
    for layout in LAYOUTS:
        values = torch.randn(2, 8, 5, 6).bfloat16().contiguous(memory_format=layout)
        out = local_attend(torch.randn(2, 17, 10, 12).bfloat16(), values, offsets, 2, impl="bagged")
        assert out.dtype == torch.bfloat16
    assert seen and all(s[:3] == (torch.bfloat16, True, torch.bfloat16) for s in seen)
    assert all(s[3][0] <= 64 for s in seen), "bands of at most _BAND_PIXELS output pixels (12-pixel rows)"


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_bagged_bands_and_wide_indices_give_the_same_numbers(monkeypatch, layout):
    """Bands of a few pixels (so bands split images at odd places), one band for the whole batch, and
    int64 indices (taken past 2**31 table rows) change nothing."""
    gen = torch.Generator().manual_seed(5)
    offsets = neighbourhood_offsets(25)
    values = torch.randn(3, 6, 4, 5, generator=gen).contiguous(memory_format=layout)
    logits = 3 * torch.randn(3, 25, 12, 15, generator=gen)
    want = local_attend_reference(logits, values, offsets, 3)
    # 7 and 40: bands of one and two rows (15 px); 75: five rows, so bands start mid-image and run into
    # the next (rows 10-14 of 12-row images); 10**6: one band for the whole batch
    for band, limit in ((7, 2**31), (40, 2**31), (75, 2**31), (10**6, 2**31), (7, 1), (75, 1)):
        monkeypatch.setattr(bagged_path, "_BAND_PIXELS", band)
        monkeypatch.setattr(bagged_path, "_INT32_LIMIT", limit)
        for channels_last in (False, True):
            got = local_attend(logits, values, offsets, 3, impl="bagged", channels_last=channels_last)
            assert (got - want).abs().max().item() <= 1e-5, (band, limit, channels_last)


def test_triton_and_fused_agree_on_rounded_half_outputs(monkeypatch):
    if triton_kernel.triton is None:
        pytest.skip("triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    values = torch.randn(2, 20, 4, 5, dtype=torch.float16)
    logits = torch.randn(2, 9, 8, 10, dtype=torch.float16)
    offsets = neighbourhood_offsets(9)
    a = local_attend(logits, values, offsets, 2, impl="triton").double()
    b = local_attend(logits, values, offsets, 2, impl="fused").double()
    assert torch.all((a - b).abs() <= torch.finfo(torch.float16).eps * b.abs() + 1e-6)


@needs_triton
def test_triton_64_bit_indexing_path(monkeypatch):
    """The int64 code path (taken for tensors past 2**31 elements) gives the same numbers."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton_kernel, "INT32_LIMIT", 1)
    values = torch.randn(2, 5, 3, 4)
    logits = torch.randn(2, 25, 9, 12)
    offsets = neighbourhood_offsets(25)
    got = local_attend(logits, values, offsets, 3, impl="triton")
    assert (got - local_attend_reference(logits, values, offsets, 3)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("size", [5, 17, 25])
def test_gradients_match_autograd_through_the_oracle(size, impl):
    gen = torch.Generator().manual_seed(size)
    offsets = neighbourhood_offsets(size)
    logits = torch.randn(2, size, 6, 9, generator=gen, requires_grad=True)
    values = torch.randn(2, 5, 2, 3, generator=gen, requires_grad=True)
    upstream = torch.randn(2, 5, 6, 9, generator=gen)
    grads = torch.autograd.grad(
        (local_attend(logits, values, offsets, 3, impl=impl) * upstream).sum(), (logits, values)
    )
    expected = torch.autograd.grad(
        (local_attend_reference(logits, values, offsets, 3) * upstream).sum(), (logits, values)
    )
    for got, want in zip(grads, expected, strict=True):
        assert (got - want).abs().max().item() <= 1e-5


def test_gradcheck_in_double():
    offsets = neighbourhood_offsets(13)
    logits = torch.randn(1, 13, 4, 6, dtype=torch.float64, requires_grad=True)
    values = torch.randn(1, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        functools.partial(local_attend, offsets=offsets, scale=2, impl="fused"), (logits, values)
    )


def test_torch_compile_sees_one_opaque_op():
    """fullgraph=True fails on any graph break, so this proves the op compiles as a single node."""
    offsets = neighbourhood_offsets(17)

    def attend(logits, values):
        return local_attend(logits * 2.0, values, offsets, 2) + 1.0

    compiled = torch.compile(attend, fullgraph=True, backend="aot_eager")
    logits, values = torch.randn(1, 17, 8, 6), torch.randn(1, 4, 4, 3, requires_grad=True)
    out = compiled(logits, values)
    assert torch.allclose(out, attend(logits, values), atol=1e-6)
    out.sum().backward()
    assert values.grad is not None and values.grad.shape == values.shape


def test_implementation_choice():
    values = torch.randn(1, 2, 2, 2)
    assert resolve_impl("auto", values) == "bagged"
    assert resolve_impl("auto", values.bfloat16()) == "bagged"
    assert resolve_impl("auto", values.double()) == "fused", "float64: the embedding-bag kernels do not serve it"
    with pytest.raises(ValueError, match="unknown local-attend implementation 'cuda'"):
        resolve_impl("cuda", values)


def test_triton_on_cpu_without_the_interpreter_is_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        local_attend(torch.randn(1, 17, 4, 4), torch.randn(1, 2, 2, 2), neighbourhood_offsets(17), 2, impl="triton")


@pytest.mark.parametrize(
    ("logits_shape", "values_shape", "scale", "match"),
    [
        ((1, 17, 8, 8), (1, 4, 4), 2, "logits \\[B, n, H, W\\]"),
        ((1, 9, 8, 8), (1, 4, 4, 4), 2, "9 channels but the neighbourhood has 17"),
        ((2, 17, 8, 8), (1, 4, 4, 4), 2, "batch mismatch"),
        ((1, 17, 8, 9), (1, 4, 4, 4), 2, "need logits of 8x8"),
        ((1, 17, 8, 8), (1, 4, 4, 4), 0, "positive integer"),
    ],
)
def test_bad_inputs_raise_clear_errors(logits_shape, values_shape, scale, match):
    with pytest.raises(ValueError, match=match):
        local_attend(torch.randn(*logits_shape), torch.randn(*values_shape), neighbourhood_offsets(17), scale)


@pytest.mark.parametrize("shape", [(1, 4, 0, 3), (1, 4, 3, 0), (1, 0, 3, 3)])
def test_empty_maps_are_refused(shape):
    b, _, h, w = shape
    with pytest.raises(ValueError, match="no channels or no cells"):
        local_attend(torch.randn(b, 17, 2 * h, 2 * w), torch.randn(*shape), neighbourhood_offsets(17), 2)


def test_a_recorded_bagged_choice_that_cannot_run_says_so():
    """A graph traced with impl='bagged' forced keeps that choice; run where it does not apply (float64
    here, another device elsewhere) the op raises the clear error, not a slow or failing kernel."""
    offsets = neighbourhood_offsets(9)
    flat = [v for pair in offsets for v in pair]
    logits, values = torch.randn(1, 9, 4, 6, dtype=torch.float64), torch.randn(1, 3, 2, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="recorded when the call was traced.*impl='fused' or 'auto'"):
        torch.ops.featlift.local_attend(logits, values, flat, 2, "bagged", False)


def test_unknown_neighbourhood_size():
    with pytest.raises(ValueError, match="must be one of \\(5, 9, 13, 17, 25\\)"):
        neighbourhood_offsets(7)


def test_default_path_never_builds_the_stacked_tensor():
    """Peak memory of one call stays near the output size (the oracle needs about 17x)."""
    script = textwrap.dedent(
        """
        import resource, torch
        from featlift.ops import local_attend, neighbourhood_offsets
        torch.set_num_threads(1)
        values = torch.randn(1, 384, 32, 32)
        logits = torch.randn(1, 17, 256, 256)
        out_bytes = 384 * 256 * 256 * 4
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out = local_attend(logits, values, neighbourhood_offsets(17), 8)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print((after - before) / out_bytes)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    growth = float(result.stdout.strip())
    assert growth < 1.3, f"peak memory grew by {growth:.2f}x the output size"


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("scale", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("impl", ["fused", "bagged"])
def test_fast_channels_last_layout(size, scale, dtype, impl):
    """channels_last output when asked (what the model's plan asks for on CPU), with the same numbers."""
    gen = torch.Generator().manual_seed(size + 7 * scale)
    values = torch.randn(2, 19, 5, 4, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)
    logits = 3 * torch.randn(2, size, 5 * scale, 4 * scale, generator=gen)
    logits = logits.to(dtype).contiguous(memory_format=torch.channels_last)
    offsets = neighbourhood_offsets(size)
    out = local_attend(logits, values, offsets, scale, impl=impl, channels_last=True)
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    ref = local_attend_reference(logits.double(), values.double(), offsets, scale)
    eps = torch.finfo(dtype).eps if dtype != torch.float32 else 1e-6
    assert torch.all((out.double() - ref).abs() <= eps * ref.abs() + max(eps * 1e-2, 1e-6))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize(("impl", "dtype"), [("fused", torch.float64), ("bagged", torch.float32)])
def test_custom_op_registration_passes_opcheck(layout, impl, dtype):
    """Schema, fake (meta) kernel strides, autograd registration and dispatch, checked by PyTorch."""
    offsets = neighbourhood_offsets(9)
    logits = torch.randn(2, 9, 6, 8, dtype=dtype).contiguous(memory_format=layout).requires_grad_()
    values = torch.randn(2, 3, 3, 4, dtype=dtype).contiguous(memory_format=layout).requires_grad_()
    flat = [v for pair in offsets for v in pair]
    channels_last = layout == torch.channels_last
    torch.library.opcheck(torch.ops.featlift.local_attend.default, (logits, values, flat, 2, impl, channels_last))


def test_output_layout_is_the_requested_one_whatever_the_input_layout():
    """What a compiler relies on: the layout argument, not the input strides, fixes the output layout."""
    offsets = neighbourhood_offsets(17)
    logits, values = torch.randn(1, 17, 8, 6), torch.randn(1, 5, 4, 3)
    flat = [v for pair in offsets for v in pair]
    ref = local_attend_reference(logits, values, offsets, 2)
    for want_cl, layout, impl in itertools.product((False, True), LAYOUTS, ("fused", "bagged")):
        v = values.contiguous(memory_format=layout)
        out = torch.ops.featlift.local_attend(logits, v, flat, 2, impl, want_cl)
        assert out.is_contiguous(memory_format=torch.channels_last if want_cl else torch.contiguous_format)
        assert (out - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("impl", ["fused", "bagged", "reference", "portable"])
def test_the_caller_alone_decides_the_output_layout(impl):
    """Plain NCHW strides unless channels_last=True, whatever layout the inputs arrive in."""
    offsets = neighbourhood_offsets(9)
    logits, values = torch.randn(1, 9, 6, 4), torch.randn(1, 5, 3, 2)
    for layout in (torch.contiguous_format, torch.channels_last):
        v, lg = values.contiguous(memory_format=layout), logits.contiguous(memory_format=layout)
        plain = local_attend(lg, v, offsets, 2, impl=impl)
        last = local_attend(lg, v, offsets, 2, impl=impl, channels_last=True)
        assert plain.is_contiguous() and last.is_contiguous(memory_format=torch.channels_last)
        assert not last.is_contiguous()
        assert (plain - last).abs().max().item() <= 1e-6


@needs_triton
@pytest.mark.parametrize("impl", ["triton", "fused", "bagged", "reference"])
def test_minus_infinity_logits_are_masked_out(monkeypatch, impl):
    """A -inf logit (a masked offset) gets weight 0 in every implementation, in the first offset too:
    the kernel's online softmax must not compute exp(-inf - -inf)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    gen = torch.Generator().manual_seed(3)
    offsets = neighbourhood_offsets(9)
    values = torch.randn(2, 5, 3, 4, generator=gen)
    logits = torch.randn(2, 9, 6, 8, generator=gen)
    logits[:, 0] = float("-inf")  # the first offset, everywhere
    logits[1, 1:4, 2:5] = float("-inf")  # more, in some pixels
    got = local_attend(logits, values, offsets, 2, impl=impl)
    assert torch.isfinite(got).all()
    # The same sum without those offsets: masked logits replaced by a very low finite value.
    want = local_attend_reference(logits.clamp_min(-1e4), values, offsets, 2)
    assert (got - want).abs().max().item() <= 1e-5


@needs_triton
def test_batches_past_the_grid_limit_launch_in_chunks(monkeypatch):
    """CUDA caps a grid's z axis at 65,535: larger batches launch in chunks (the limit lowered to 2 here)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton_kernel, "MAX_GRID_YZ", 2)
    gen = torch.Generator().manual_seed(4)
    offsets = neighbourhood_offsets(5)
    values = torch.randn(5, 3, 2, 3, generator=gen)
    logits = torch.randn(5, 5, 4, 6, generator=gen)
    launches = list(triton_kernel.kernel_launches(logits, values, torch.empty(5, 3, 4, 6), offsets, 2, wide=False))
    assert [grid[2] for grid, _, _ in launches] == [2, 2, 1]
    got = local_attend(logits, values, offsets, 2, impl="triton")
    assert (got - local_attend_reference(logits, values, offsets, 2)).abs().max().item() <= 1e-5


@needs_triton
@pytest.mark.parametrize(("channels", "block_c", "block_p"), [(1, 1, 1024), (4, 4, 1024), (67, 64, 64), (384, 64, 64)])
def test_the_channel_block_follows_the_channel_count(channels, block_c, block_p):
    """A 4-channel map (the SD VAE) gets 4-channel blocks with more pixels each, not 64-channel blocks
    that are mostly masked."""
    plan = triton_kernel.launch_plan(2, channels, 1000, wide=False)
    assert (plan.block_c, plan.block_p) == (block_c, block_p)
    assert plan.channel_blocks * plan.block_c >= channels > (plan.channel_blocks - 1) * plan.block_c
    assert plan.pixel_blocks * plan.block_p >= 1000


@needs_triton
def test_the_vae_channel_count_matches_the_oracle_in_the_kernel(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    gen = torch.Generator().manual_seed(5)
    offsets = neighbourhood_offsets(17)
    values = torch.randn(3, 4, 1, 9, generator=gen)
    logits = 3 * torch.randn(3, 17, 2, 18, generator=gen)
    got = local_attend(logits, values, offsets, 2, impl="triton")
    assert (got - local_attend_reference(logits, values, offsets, 2)).abs().max().item() <= 1e-5
