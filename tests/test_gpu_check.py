"""benchmarks/gpu_check.sh, the one script for featlift's first window on a GPU: its ``--dry-run`` on the
CPU really starts every step and the report records each one's exit code; a failing or hanging step is
recorded and the next still runs; the official-code step runs a checkout it is given and compares its
output with featlift's."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
STEPS = ["environment", "gpu-tests", "attend-float32", "attend-bfloat16", "upsampler", "official", "roofline"]

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and coreutils' timeout"
)


def _check(tmp_path: Path, *args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, str]:
    """Run gpu_check.sh with ``args``; (the process, the report's text)."""
    out = tmp_path / "reports" / "report.md"
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # the script finds the repository itself
        env={**os.environ, "PYTHON": sys.executable, **(env or {})},
    )
    return proc, out.read_text() if out.exists() else ""


def _summary(report: str) -> dict[str, str]:
    """step -> exit code, from the report's summary table."""
    assert "## Summary" in report, report[-2000:]
    rows = re.findall(r"^\| ([\w-]+) \| (\w+) \| \d+ \| \d+ \|$", report.split("## Summary", 1)[1], re.M)
    return dict(rows)


def _section(report: str, step: str) -> str:
    return report.split(f"\n## {step}\n", 1)[1].split("\n## ", 1)[0]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, str]:
    return _check(tmp_path_factory.mktemp("dry_run"), "--dry-run")


def test_the_dry_run_starts_every_step_and_each_exits_0(dry_run):
    proc, report = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert _summary(report) == dict.fromkeys(STEPS, "0")
    for step in STEPS:
        assert "exit code: 0;" in _section(report, step)


def test_each_step_of_the_dry_run_did_its_work(dry_run):
    """Real output from every step, not an echo of its command."""
    _, report = dry_run
    assert "CUDA available: False" in _section(report, "environment")
    assert re.search(r"\d+ skipped, \d+ deselected", _section(report, "gpu-tests"))
    for dtype in ("float32", "bfloat16"):
        section = _section(report, f"attend-{dtype}")
        assert f"{dtype}, cpu" in section and "fused:" in section and "```json" in section
    assert re.search(r"28px\s+featlift\s+bfloat16", _section(report, "upsampler"))
    assert "official UPLiFT code: not found (no --uplift-root given)" in _section(report, "official")
    roofline = _section(report, "roofline")
    assert "share of the roofline" in roofline and "Self CPU" in roofline and "```json" in roofline


def test_a_failing_or_hanging_step_is_recorded_and_the_next_still_runs(tmp_path):
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\ncase "$*" in *bench_attend*) exec sleep 60 ;; *) exit 3 ;; esac\n')
    fake.chmod(0o755)
    t0 = time.monotonic()
    proc, report = _check(
        tmp_path, "--dry-run", "--only", "attend-float32,official", "--step-timeout", "2", env={"PYTHON": str(fake)}
    )
    assert time.monotonic() - t0 < 30
    assert proc.returncode == 1
    assert _summary(report) == {"attend-float32": "124", "official": "3"}
    assert "exit code: 124 (timed out after 2s)" in _section(report, "attend-float32")
    assert "some steps failed" in report


def test_steps_past_the_budget_are_skipped_not_started(tmp_path):
    proc, report = _check(tmp_path, "--dry-run", "--budget", "0", "--only", "environment,roofline")
    assert proc.returncode == 1
    assert _summary(report) == {"environment": "skipped", "roofline": "skipped"}
    assert "result: skipped, 0s of the budget left" in _section(report, "roofline")


def test_a_report_that_cannot_be_written_stops_it_at_once(tmp_path):
    (tmp_path / "reports").write_text("a file where the report's folder should be")
    proc, _ = _check(tmp_path, "--dry-run")
    assert proc.returncode == 2 and "cannot write the report" in proc.stderr


# A stand-in for a checkout of the official code: its module names and call convention, featlift inside.
STUB_UPLIFT = """
import torch
from torch import nn

import featlift
from featlift.weights import load_into


class UPLiFT(nn.Module):
    def __init__(self, in_channels, patch_size, cfg, dtype=torch.float32, low_mem=False):
        super().__init__()
        assert (in_channels, patch_size, cfg.attender, low_mem) == (384, 14, 17, False)
        self.inner = featlift.build_upsampler("dinov2_s14", dtype=dtype)
        self.iters = 4

    def load_state_dict(self, state, strict=True):
        load_into(self.inner, state, source="the official layout")

    def enable_iterative(self, iters):
        self.iters = iters

    def forward(self, img, x, outsize=None):
        return self.inner(img, x, iters=self.iters)
"""
STUB_FAST = """
import os


def make_fast(model, image_size=None, compile=True, compile_mode="max-autotune", warmup=True, device=None):
    assert not compile and not warmup
    off_by = float(os.environ.get("STUB_FAST_OFF_BY", "1"))
    return lambda img, x: off_by * model(img, x)
"""


@pytest.fixture
def checkout(tmp_path, monkeypatch) -> Path:
    package = tmp_path / "UPLiFT" / "uplift"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "uplift.py").write_text(textwrap.dedent(STUB_UPLIFT))
    (package / "fast.py").write_text(textwrap.dedent(STUB_FAST))
    monkeypatch.setattr(sys, "path", list(sys.path))  # bench_official puts the checkout first
    for name in ("uplift", "uplift.uplift", "uplift.fast"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    yield package.parent
    for name in ("uplift", "uplift.uplift", "uplift.fast"):
        sys.modules.pop(name, None)


def _official(checkout: Path, *extra: str) -> int:
    """bench_official's main, in this process (featlift and torch are imported already)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        bench_official = importlib.import_module("bench_official")
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    argv = ["--uplift-root", str(checkout), "--device", "cpu", "--size", "28", "--repeats", "1", "--warmup", "1"]
    return bench_official.main([*argv, "--no-compile", *extra])


def test_the_official_step_gets_the_path_and_says_what_it_lacks(tmp_path):
    proc, report = _check(tmp_path, "--dry-run", "--only", "official", str(tmp_path / "no-checkout"))
    assert proc.returncode == 0
    assert f"not found (no uplift/uplift.py under {tmp_path / 'no-checkout'})" in _section(report, "official")


def test_the_official_code_is_timed_and_compared_with_featlift(checkout, capsys):
    assert _official(checkout) == 0
    printed = capsys.readouterr().out
    for variant in ("featlift", "official", "official fast"):
        assert re.search(rf"^\| {variant} \| [\d.]+ \| [\d.]+ \| [\d.]+x \| ", printed, re.M), printed
    assert "all outputs agree with featlift" in printed


def test_the_official_step_fails_when_outputs_disagree(checkout, monkeypatch, capsys):
    monkeypatch.setenv("STUB_FAST_OFF_BY", "1.2")
    assert _official(checkout) == 3
    assert "MISMATCH: official fast differ(s) from featlift" in capsys.readouterr().out


def test_an_official_checkout_that_cannot_be_imported_is_exit_code_2(checkout, capsys):
    (checkout / "uplift" / "uplift.py").write_text("raise ImportError('needs omegaconf')\n")
    assert _official(checkout) == 2
    assert "cannot import uplift.uplift" in capsys.readouterr().out
