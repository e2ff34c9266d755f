"""Large inputs on the CPU (marked ``slow``; run with ``python -m pytest -m slow``): 1344 px
pixel-dense features untiled, and a 4096 px image tiled with a 21-class head."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

_MEASURE = """
import json, resource, torch, featlift
torch.set_num_threads(2)
model = featlift.build_upsampler("dinov2_s14")
cells = {size} // 14
image, features = torch.randn(1, 3, cells * 14, cells * 14), torch.randn(1, 384, cells, cells)
head = torch.nn.Conv2d(384, 21, 1) if {tile} else None
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
with torch.inference_mode():
    out = model(image, features, tile={tile}, head=head)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
print(json.dumps({{"shape": list(out.shape), "peak": peak, "finite": bool(torch.isfinite(out).all()),
                   "features": 384 * (cells * 16) ** 2 * 4, "out": out.numel() * out.element_size()}}))
"""


def _measure(size: int, tile: int | None) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    code = textwrap.dedent(_MEASURE.format(size=size, tile=tile))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_1344px_pixel_dense_untiled_fits_with_little_overhead():
    data = _measure(1344, None)
    assert data["shape"] == [1, 384, 1536, 1536] and data["finite"]
    assert data["peak"] <= 2.5 * data["out"], data


def test_4096px_tiled_with_a_21_class_head():
    data = _measure(4096, 64)
    assert data["shape"] == [1, 21, 4672, 4672] and data["finite"]
    # The 384-channel map would be 33 GB; the run must stay far below it.
    assert data["peak"] <= 0.3 * data["features"], data


def test_inductor_compiles_the_whole_model_on_cpu():
    """Default torch.compile backend (needs a C++ compiler): the custom op's fake kernel must agree with
    the real one on layouts even when inductor picks its own for intermediates."""
    import torch

    import featlift

    model = featlift.build_upsampler("dinov2_s14")
    image, features = torch.randn(1, 3, 112, 98), torch.randn(1, 384, 8, 7)
    compiled = torch.compile(model, fullgraph=True)
    with torch.inference_mode():
        assert (compiled(image, features) - model(image, features)).abs().max().item() <= 1e-4
