"""The benchmark scripts' own machinery (benchmarks/): timing that waits for and times the device being
benchmarked, not the current one."""

from __future__ import annotations

import importlib
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
