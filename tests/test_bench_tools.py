"""The benchmark scripts' own machinery (benchmarks/): timing that waits for and times the device being
benchmarked, not the current one."""

from __future__ import annotations

import importlib
import json
import sys

import pytest
import torch

from .conftest import REPO


def _benchmark_module(name: str):
    """A module of benchmarks/ (whose scripts import each other by plain name, as when run there)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


_common = _benchmark_module("_common")


class _FakeCuda:
    """Records which device each CUDA call was given (no GPU needed)."""

    def __init__(self, monkeypatch) -> None:
        self.synchronized: list[object] = []
        self.streams: list[object] = []
        calls = self

        class Event:
            def __init__(self, enable_timing: bool = False) -> None:
                assert enable_timing
                self.stream = "current device's stream"

            def record(self, stream=None) -> None:
                self.stream = stream if stream is not None else "current device's stream"

            def elapsed_time(self, end) -> float:
                assert self.stream == end.stream, "start and end recorded on different streams"
                return 250.0

        monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.synchronized.append(device))
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: calls.stream(device))
        monkeypatch.setattr(torch.cuda, "Event", Event)

    def stream(self, device):
        self.streams.append(device)
        return f"stream of {device}"


def test_stopwatch_waits_for_and_records_on_the_device_it_was_given(monkeypatch):
    cuda = _FakeCuda(monkeypatch)
    with _common.Stopwatch("cuda:1") as watch:
        pass
    assert watch.seconds == 0.25
    # None would mean "the current device": the bug this guards against
    assert cuda.synchronized and all(d == torch.device("cuda:1") for d in cuda.synchronized)
    assert cuda.streams == [torch.device("cuda:1")] * 2


def test_synchronize_names_the_device_and_skips_the_cpu(monkeypatch):
    cuda = _FakeCuda(monkeypatch)
    _common.synchronize("cpu")
    assert cuda.synchronized == []
    _common.synchronize("cuda:1")
    assert cuda.synchronized == [torch.device("cuda:1")]


def test_stopwatch_on_the_cpu_reads_the_clock(monkeypatch):
    cuda = _FakeCuda(monkeypatch)
    ticks = iter([10.0, 10.5])
    monkeypatch.setattr(_common.time, "perf_counter", lambda: next(ticks))
    with _common.Stopwatch("cpu") as watch:
        pass
    assert watch.seconds == pytest.approx(0.5)
    assert cuda.synchronized == [] and cuda.streams == []


# -- bench_roofline: FLOPs counted by hand where FlopCounterMode cannot see, oneDNN's log read back ------

N, C = 17, 384  # dinov2_s14's neighbourhood and channels


def test_the_attenders_flops_are_added_by_hand_for_every_step():
    import featlift

    roofline = _benchmark_module("bench_roofline")
    model = featlift.build_upsampler("dinov2_s14")
    image, features = _common.random_inputs(28, "cpu", torch.float32)  # 2x2 cells
    flops = roofline.count_flops(model, image, features, iters=2)
    # steps at 4x4 and 8x8 output pixels: 2nC for the weighted sum and 5n for the softmax per pixel
    assert flops["by_hand"] == (4 * 4 + 8 * 8) * (2 * N * C + 5 * N)
    assert flops["counted"] > 0 and flops["total"] == flops["counted"] + flops["by_hand"]
    assert sum(flops["parts"].values()) == flops["total"]
    # the attender's 1x1 conv is counted under the attender, though only its to_logits' forward runs
    assert set(flops["parts"]) == {
        "guidance_encoder (FlopCounterMode)",
        "decoder_step (FlopCounterMode)",
        "attender (FlopCounterMode)",
        "attender weighted sum + softmax (by hand)",
    }
    assert "attend" not in vars(model.attender)  # the recording wrapper is gone again
    with torch.inference_mode():  # and the model still runs its own attender
        assert model(image, features, iters=1).shape == (1, C, 4, 4)


def test_per_part_flops_subtract_the_nearest_listed_submodules():
    roofline = _benchmark_module("bench_roofline")
    conv = "aten.convolution"
    counts = {
        "Global": {conv: 111},
        "M": {conv: 111},
        "M.encoder": {conv: 60},
        "M.encoder.stages.0": {conv: 50},  # inside encoder: not counted twice
        "M.attender.to_logits": {conv: 1},  # its parent never ran forward: still the attender's
    }
    assert roofline._by_part(counts) == {"encoder": 60, "attender": 1, "M itself": 50}


def test_the_hand_count_at_448_px_matches_the_issue():
    roofline = _benchmark_module("bench_roofline")
    steps = [((1, N, 32 * 2**s, 32 * 2**s), (1, C, 32 * 2 ** (s - 1), 32 * 2 ** (s - 1))) for s in range(1, 5)]
    by_hand = sum(roofline.attend_flops(lg, v) for lg, v in steps)
    assert by_hand == 348_160 * 13_141  # 64^2 + 128^2 + 256^2 + 512^2 pixels; about 4.6 GFLOP


VERBOSE_LOG = """\
onednn_verbose,v1,info,oneDNN v3.12.0 (commit 80afa71049cd69a3df32adcccb623b12cd7baa22)
onednn_verbose,v1,primitive,info,template:operation,engine,primitive,implementation,prop_kind,memory_descriptors,attributes,auxiliary,problem_desc,exec_time
onednn_verbose,v1,primitive,create:cache_miss,cpu,convolution,brg_conv_fwd:avx512_core_amx,forward_training,src:bf16::blocked:acdb::f0,,alg:convolution_direct,mb1_ic16oc32,0.5
onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_amx,forward_training,src:bf16::blocked:acdb::f0 wei:bf16:a:blocked:AcdB32a2b::f0 dst:bf16::blocked:acdb::f0,attr-scratchpad:user,alg:convolution_direct,mb1_ic16oc32_ih32oh32kh3sh1dh0ph1_iw32ow32kw3sw1dw0pw1,1.5
onednn_verbose,v1,1733400000123.5,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_amx,forward_training,src:bf16::blocked:acdb::f0 dst:bf16::blocked:acdb::f0,,alg:convolution_direct,mb1_ic32oc32,2.5
onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:bf16::blocked:acdb::f0 dst:bf16::blocked:AcdB32a2b::f0,attr-scratchpad:user,,32x16x3x3,0.25
dnnl_verbose,exec,cpu,convolution,gemm:ref,forward_inference,src_f32::blocked:abcd:f0 wei_f32::blocked:abcd:f0,,alg:convolution_direct,mb1_ic3oc8,4.0
onednn_verbose,v1,graph,exec,cpu,100002,sdp,,,,,,,9.0
a line the program printed, exec,cpu,convolution
"""


def test_the_onednn_log_is_summarised_by_implementation():
    roofline = _benchmark_module("bench_roofline")
    rows = roofline.summarise_onednn(VERBOSE_LOG.splitlines())
    assert rows == [
        {"kind": "convolution", "impl": "brg_conv_fwd:avx512_core_amx", "src": "bf16", "calls": 2, "ms": 4.0},
        {"kind": "convolution", "impl": "gemm:ref", "src": "f32", "calls": 1, "ms": 4.0},
        {"kind": "reorder", "impl": "jit:uni", "src": "bf16", "calls": 1, "ms": 0.25},
    ]


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")
def test_roofline_reports_oneDNN_kernels_of_a_real_call(tmp_path, capsys):
    roofline = _benchmark_module("bench_roofline")
    out = tmp_path / "roofline.json"
    argv = ["--size", "28", "--iters", "1", "--matmul-size", "64", "--repeats", "1", "--variants", "featlift"]
    results = roofline.main([*argv, "--dtypes", "bfloat16", "--onednn-verbose", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "| matmul 64x64: GFLOP/s (the roofline) |" in printed and "share of the roofline" in printed
    (report,) = results["onednn"]
    convolutions = [r for r in report["rows"] if r["kind"] in ("convolution", "deconvolution")]
    assert report["torch_convolutions"] > 0 and convolutions and all(r["src"] == "bf16" for r in convolutions)
    assert report["onednn_convolutions"] == sum(r["calls"] for r in convolutions)
    assert json.loads(out.read_text())["variants"]["featlift"]["share_of_roofline"]["bfloat16"] > 0
