"""The Triton kernel compiles for real GPUs in every variant a call can take, with no GPU here.

Triton compiles through its own compiler and ptxas (shipped with it); only the launch needs a driver. A
stub driver that reports a CUDA ``GPUTarget`` (sm_80, sm_90) lets ``JITFunction.warmup`` specialise the
arguments exactly as a launch would (an integer equal to 1 becomes a compile-time constant, multiples of
16 are marked) and compile down to a cubin. The interpreter never specialises, so this is the only test
here that sees what a GPU's first call will compile.

The arguments come from :func:`featlift.ops._triton.kernel_launches`, the function that builds the real
launches, on small CPU tensors of each dtype and shape.
"""

from __future__ import annotations

import contextlib
import itertools

import pytest
import torch

import featlift.ops._triton as triton_kernel
from featlift.ops import neighbourhood_offsets

triton = pytest.importorskip("triton", reason="Triton is not installed: there is no kernel to compile")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime.driver import driver  # noqa: E402
from triton.runtime.jit import MockTensor  # noqa: E402

ARCHS = (80, 90)
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class _StubCudaDriver:
    """Just enough of a Triton driver to compile: a CUDA target, device 0, the null stream."""

    def __init__(self, arch: int) -> None:
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0


@contextlib.contextmanager
def _compiling_for(arch: int):
    """A fresh JIT function whose launches compile for ``sm_{arch}`` (the active driver is put back after)."""
    previous = driver._active
    driver.set_active(_StubCudaDriver(arch))
    try:
        yield triton.jit(triton_kernel._local_attend_kernel)
    finally:
        driver._active = previous


def _variants():
    """(dtype, wide, batch, channels, h, w, scale): each dtype and index width on a general map, and the
    shapes whose arguments specialise differently: sides of 1, batch 1 and 3, one channel, the VAE's 4
    channels, scale 1, and a grid whose sizes are multiples of 16."""
    shapes = [
        (3, 67, 5, 7, 2),  # general: two channel blocks, pixels not a multiple of the block
        (1, 4, 1, 7, 2),  # the SD VAE's 4 channels on a map one cell high
        (3, 384, 9, 1, 2),  # a map one cell wide
        (1, 1, 1, 1, 2),  # one channel, one cell
        (3, 384, 8, 8, 1),  # scale 1 (specialised to a constant), sizes multiples of 16
    ]
    for dtype, wide in itertools.product(DTYPES, (False, True)):
        for shape in shapes:
            yield (dtype, wide, *shape)


def _compile(fn, dtype, wide, batch, channels, h, w, scale, arch):
    offsets = neighbourhood_offsets(17)
    values = torch.zeros(batch, channels, h, w, dtype=dtype)
    logits = torch.zeros(batch, len(offsets), h * scale, w * scale, dtype=dtype)
    out = torch.empty(batch, channels, h * scale, w * scale, dtype=dtype)
    compiled = []
    for grid, args, meta in triton_kernel.kernel_launches(logits, values, out, offsets, scale, wide=wide):
        compiled.append(fn.warmup(*args, grid=grid, **meta))
    return compiled


@pytest.mark.parametrize("arch", ARCHS)
def test_every_variant_compiles_to_a_cubin(arch):
    failures = []
    with _compiling_for(arch) as fn:
        for variant in _variants():
            try:
                for kernel in _compile(fn, *variant, arch):
                    assert kernel.metadata.target.arch == arch
                    assert kernel.asm["cubin"], "no machine code"
            except Exception as err:  # collect every failing variant, not just the first
                failures.append(f"{variant}: {type(err).__name__}: {str(err).strip().splitlines()[-1:]}")
    assert not failures, f"{len(failures)} variants failed for sm_{arch}:\n" + "\n".join(failures)


@pytest.mark.parametrize("arch", ARCHS)
def test_the_wide_kernel_compiles_with_64_bit_sizes(arch):
    """Past 2**31 output elements in one image, the pixel count itself is a 64-bit argument."""
    with _compiling_for(arch) as fn:
        pointer = MockTensor(torch.bfloat16)
        index = MockTensor(torch.int32)
        out_h, out_w = 2**16, 2**15 + 2  # 2**31 + 2**17 pixels
        kernel = fn.warmup(
            pointer, pointer, pointer, index, index, 4, out_h // 2, out_w // 2, out_w, out_h * out_w, 17, 2,
            BLOCK_P=1024, BLOCK_C=4, WIDE=True, ACC=triton_kernel.accumulator(torch.bfloat16),
            num_warps=triton_kernel.NUM_WARPS, grid=(1, 1, 1),
        )  # fmt: skip
        assert kernel.asm["cubin"]
        assert "i64" in kernel.asm["ttir"]


def test_the_stub_compiles_what_a_launch_would_not():
    """Negative control: the kernel as it was (scalar arguments cast with ``.to(tl.int64)``) fails on a
    side of 1, because that argument is specialised to a Python int. The stub sees what the interpreter
    cannot."""
    import triton.language as tl

    source = triton_kernel._local_attend_kernel

    def broken(logits_ptr, values_ptr, out_ptr, dy_ptr, dx_ptr, channels, h, w, out_w, out_hw, n, scale,
               BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, WIDE: tl.constexpr, ACC: tl.constexpr):  # fmt: skip
        pix = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        if WIDE:
            h = h.to(tl.int64)
        tl.store(out_ptr + pix, tl.full([BLOCK_P], h, ACC))

    triton_kernel._local_attend_kernel = broken
    try:
        with _compiling_for(90) as fn:
            with pytest.raises(Exception, match="no attribute 'to'"):
                _compile(fn, torch.float32, True, 1, 4, 1, 7, 2, 90)
            assert _compile(fn, torch.float32, True, 1, 4, 5, 7, 2, 90)
    finally:
        triton_kernel._local_attend_kernel = source
