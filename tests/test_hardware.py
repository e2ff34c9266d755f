"""featlift.cpu_supports_bf16: torch's own queries decide where they exist, /proc/cpuinfo's flags where
they do not, and non-x86 machines are never reported as having native bfloat16."""

from __future__ import annotations

import platform

import pytest
import torch

import featlift
from featlift import hardware

QUERIES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
CPUINFO_HEAD = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse sse2 avx avx2 avx512f"


@pytest.fixture
def x86(monkeypatch):
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")


def _answers(monkeypatch, avx512_bf16: bool, amx: bool) -> None:
    answers = dict(zip(QUERIES, (avx512_bf16, amx), strict=True))
    for name, answer in answers.items():
        monkeypatch.setattr(torch.cpu, name, lambda answer=answer: answer, raising=False)


def _no_torch_queries(monkeypatch) -> None:
    for name in QUERIES:
        monkeypatch.delattr(torch.cpu, name, raising=False)


def _cpuinfo(monkeypatch, tmp_path, extra_flags: str) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(f"{CPUINFO_HEAD} {extra_flags}\n\nprocessor\t: 1\n{CPUINFO_HEAD} {extra_flags}\n")
    monkeypatch.setattr(hardware, "CPUINFO", path)


def test_the_package_root_exports_it():
    assert featlift.cpu_supports_bf16 is hardware.cpu_supports_bf16
    assert isinstance(featlift.cpu_supports_bf16(), bool)


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"),
    [(False, False, False), (True, False, True), (False, True, True), (True, True, True)],
)
def test_torch_queries_decide_when_torch_has_them(monkeypatch, tmp_path, x86, avx512_bf16, amx, expected):
    _answers(monkeypatch, avx512_bf16, amx)
    # the flags file says the opposite of the no-bf16 case: it must not be read while torch can answer
    _cpuinfo(monkeypatch, tmp_path, "avx512_bf16 amx_bf16 amx_tile")
    assert featlift.cpu_supports_bf16() is expected


@pytest.mark.parametrize(
    ("flags", "expected"),
    [("", False), ("avx512_bf16", True), ("amx_bf16 amx_tile", True), ("avx512_vnni avx512_fp16", False)],
)
def test_cpuinfo_flags_decide_without_torch_queries(monkeypatch, tmp_path, x86, flags, expected):
    _no_torch_queries(monkeypatch)
    _cpuinfo(monkeypatch, tmp_path, flags)
    assert featlift.cpu_supports_bf16() is expected


def test_a_query_that_raises_falls_back_to_the_flags(monkeypatch, tmp_path, x86):
    def broken():
        raise RuntimeError("cpuinfo failed to initialise")

    _answers(monkeypatch, False, False)
    monkeypatch.setattr(torch.cpu, QUERIES[0], broken)
    _cpuinfo(monkeypatch, tmp_path, "avx512_bf16")
    assert featlift.cpu_supports_bf16() is True


def test_no_query_and_no_cpuinfo_is_false(monkeypatch, tmp_path, x86):
    _no_torch_queries(monkeypatch)
    monkeypatch.setattr(hardware, "CPUINFO", tmp_path / "absent")
    assert featlift.cpu_supports_bf16() is False


@pytest.mark.parametrize("machine", ["aarch64", "arm64", "ppc64le", ""])
def test_non_x86_machines_are_false_whatever_torch_says(monkeypatch, tmp_path, machine):
    monkeypatch.setattr(platform, "machine", lambda: machine)
    _answers(monkeypatch, True, True)
    _cpuinfo(monkeypatch, tmp_path, "avx512_bf16")
    assert featlift.cpu_supports_bf16() is False


def test_the_reason_is_logged(monkeypatch, x86, caplog):
    _answers(monkeypatch, True, False)
    with caplog.at_level("DEBUG", logger="featlift.hardware"):
        assert featlift.cpu_supports_bf16()
    assert "torch.cpu says avx512_bf16" in caplog.text
