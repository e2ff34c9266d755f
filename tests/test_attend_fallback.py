"""The CUDA path cannot strand anyone: ``impl="auto"`` trusts the Triton kernel only after a self-test
against the fused path, once per device, and falls back with one warning when it fails.

No GPU here: an injected :class:`AttendPolicy` counts the CPU as a Triton candidate, and the kernel runs
in Triton's CPU interpreter (``TRITON_INTERPRET=1``) or is replaced by a broken one.
"""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys

import pytest
import torch

import featlift.ops._triton as triton_kernel
from featlift.ops import local_attend, neighbourhood_offsets, resolve_impl
from featlift.ops._fused import fused_forward

# ``featlift.ops.local_attend`` the attribute is the function; the module is in sys.modules.
la = importlib.import_module("featlift.ops.local_attend")

pytestmark = pytest.mark.skipif(triton_kernel.triton is None, reason="triton is not installed")

LOGGER = "featlift.ops.local_attend"
OFFSETS = neighbourhood_offsets(9)


def _cpu_policy(environ=None, **options):
    """A policy under which the CPU counts as a Triton device (kernel in the interpreter), with no verdicts
    yet, forced by ``environ``'s FEATLIFT_ATTEND_IMPL where given."""
    return la.AttendPolicy.from_environment(environ or {}, candidate=lambda device: True, **options)


@pytest.fixture
def cpu_is_candidate(monkeypatch):
    """:func:`_cpu_policy` in force for the test."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with la.use_attend_policy(_cpu_policy()) as policy:
        yield policy


@pytest.fixture
def kernel_calls(cpu_is_candidate):
    """Counts calls of the real kernel (self-test and op alike)."""
    calls = []
    real = cpu_is_candidate.kernel

    def counted(*args, **kwargs):
        calls.append(args[1].dtype)
        return real(*args, **kwargs)

    cpu_is_candidate.kernel = counted
    return calls


def _inputs(dtype=torch.float32):
    gen = torch.Generator().manual_seed(1)
    values = torch.randn(1, 5, 3, 4, generator=gen).to(dtype)
    logits = (3 * torch.randn(1, 9, 6, 8, generator=gen)).to(dtype)
    return logits, values


def _warnings(caplog):
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def _check_fallback(policy, caplog, broken, reason):
    calls = []

    def kernel(*args, **kwargs):
        calls.append(1)
        return broken(*args, **kwargs)

    policy.kernel = kernel
    logits, values = _inputs()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert resolve_impl("auto", values) == "fused"
        out = local_attend(logits, values, OFFSETS, 2)
        again = local_attend(logits, values, OFFSETS, 2)
    assert torch.equal(out, fused_forward(logits, values, OFFSETS, 2, channels_last=False))
    assert torch.equal(again, out)
    warnings = _warnings(caplog)
    assert len(warnings) == 1, [w.getMessage() for w in warnings]
    message = warnings[0].getMessage()
    assert "self-test" in message and "cpu" in message and reason in message
    assert len(calls) == 1, "the self-test runs once per device, and the failed kernel is never used again"
    assert policy.verdict("cpu") is False


def test_kernel_that_raises_falls_back_to_fused_with_one_warning(cpu_is_candidate, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("PTX assembly failed\nlong compiler log")

    _check_fallback(cpu_is_candidate, caplog, broken, "RuntimeError: PTX assembly failed")


def test_kernel_with_wrong_values_falls_back_to_fused_with_one_warning(cpu_is_candidate, caplog):
    def wrong(logits, values, offsets, scale, **kwargs):
        return fused_forward(logits, values, offsets, scale, channels_last=False) + 0.01

    _check_fallback(cpu_is_candidate, caplog, wrong, "differs from the fused path by up to 0.01")


def test_kernel_returning_nan_is_refused(cpu_is_candidate, caplog):
    def nan(logits, values, offsets, scale, **kwargs):
        out = fused_forward(logits, values, offsets, scale, channels_last=False)
        out[0, 0, 0, 0] = float("nan")
        return out

    cpu_is_candidate.kernel = nan
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert resolve_impl("auto", _inputs()[1]) == "fused"
    assert len(_warnings(caplog)) == 1


def test_working_kernel_passes_the_self_test_and_auto_picks_triton(cpu_is_candidate, kernel_calls, caplog):
    logits, values = _inputs()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert resolve_impl("auto", values) == "triton"
        assert kernel_calls == [torch.float32], "one self-test run in float32"
        out = local_attend(logits, values, OFFSETS, 2)
    assert kernel_calls == [torch.float32, torch.float32], "the op itself ran the kernel"
    assert (out - fused_forward(logits, values, OFFSETS, 2, channels_last=False)).abs().max().item() <= 1e-5
    # A new dtype on the same device is tested once in that dtype; float32 is not tested again.
    half_values = _inputs(torch.bfloat16)[1]
    assert resolve_impl("auto", half_values) == "triton"
    assert resolve_impl("auto", half_values) == "triton"
    assert kernel_calls == [torch.float32, torch.float32, torch.bfloat16]
    assert not _warnings(caplog)


def test_auto_under_torch_compile_runs_the_self_test_outside_the_graph(cpu_is_candidate, kernel_calls):
    """fullgraph=True fails on any graph break: the self-test must not be traced."""

    def attend(logits, values):
        return local_attend(logits, values, OFFSETS, 2) * 2.0

    logits, values = _inputs()
    out = torch.compile(attend, fullgraph=True, backend="aot_eager")(logits, values)
    assert kernel_calls == [torch.float32, torch.float32], "self-test, then the op"
    assert (out - 2.0 * fused_forward(logits, values, OFFSETS, 2, channels_last=False)).abs().max().item() <= 1e-5


def test_self_test_never_records_autograd(cpu_is_candidate):
    seen = []
    real = cpu_is_candidate.kernel

    def spy(logits, values, offsets, scale, **kwargs):
        seen.append(torch.is_grad_enabled())
        return real(logits, values, offsets, scale, **kwargs)

    cpu_is_candidate.kernel = spy
    values = _inputs()[1].requires_grad_()
    assert resolve_impl("auto", values) == "triton"
    assert seen == [False]


@pytest.mark.parametrize(
    ("env", "impl", "expected"),
    [
        ("fused", "auto", "fused"),
        ("triton", "auto", "triton"),
        ("reference", "auto", "reference"),
        ("triton", "fused", "fused"),
        ("fused", "triton", "triton"),
        ("fused", "reference", "reference"),
        ("bagged", "auto", "bagged"),
        ("bagged", "fused", "fused"),
    ],
)
def test_env_var_and_impl_force_the_choice_without_a_self_test(monkeypatch, env, impl, expected):
    """An explicit impl wins over the variable; the variable wins over auto; forcing skips the self-test
    (the kernel here is off by one, so a self-test would refuse it)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    calls = []

    def off_by_one(logits, values, offsets, scale, **kwargs):
        calls.append(1)
        return fused_forward(logits, values, offsets, scale, channels_last=False) + 1.0

    logits, values = _inputs()
    with la.use_attend_policy(_cpu_policy({la.ENV_VAR: env}, kernel=off_by_one)) as policy:
        assert resolve_impl(impl, values) == expected
        out = local_attend(logits, values, OFFSETS, 2, impl=impl)
    assert policy.verdict("cpu") is None, "no self-test ran"
    fused = fused_forward(logits, values, OFFSETS, 2, channels_last=False)
    if expected == "triton":
        assert calls == [1], "forced Triton runs the kernel, with no self-test first"
        assert torch.allclose(out, fused + 1.0)
    else:
        assert calls == []
        assert torch.allclose(out, fused, atol=1e-6)


@pytest.mark.parametrize("env", ["auto", " AUTO ", ""])
def test_env_var_set_to_auto_keeps_the_self_test(monkeypatch, caplog, env):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    wrong = _cpu_policy(
        {la.ENV_VAR: env}, kernel=lambda *args, **kwargs: fused_forward(*args, channels_last=False) + 1.0
    )
    with la.use_attend_policy(wrong), caplog.at_level(logging.WARNING, logger=LOGGER):
        assert resolve_impl("auto", _inputs()[1]) == "fused"
    assert len(_warnings(caplog)) == 1


def test_invalid_env_value_names_the_variable_and_the_choices():
    logits, values = _inputs()
    with la.use_attend_policy(la.AttendPolicy.from_environment({la.ENV_VAR: "cuda"})):
        with pytest.raises(ValueError, match=r"FEATLIFT_ATTEND_IMPL='cuda'.*auto, reference, fused, bagged, triton"):
            local_attend(logits, values, OFFSETS, 2)
        with pytest.raises(ValueError, match="FEATLIFT_ATTEND_IMPL"):
            resolve_impl("auto", values)
        assert resolve_impl("fused", values) == "fused", "an explicit impl does not read the variable"


def test_forced_triton_that_cannot_run_says_who_forced_it(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    logits, values = _inputs()
    with la.use_attend_policy(la.AttendPolicy.from_environment({la.ENV_VAR: "triton"})):
        with pytest.raises(
            RuntimeError, match=r"cannot run on cpu \(FEATLIFT_ATTEND_IMPL=triton\).*needs a CUDA device"
        ):
            local_attend(logits, values, OFFSETS, 2)


def test_cpu_is_no_candidate_by_default(monkeypatch):
    """Under the default candidate rule the CPU never self-tests: auto is the embedding-bag path there
    (fused in float64), even under the interpreter."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with la.use_attend_policy(la.AttendPolicy()) as policy:
        assert resolve_impl("auto", _inputs()[1]) == "bagged"
        assert resolve_impl("auto", _inputs(torch.float64)[1]) == "fused"
    assert policy.verdict("cpu") is None


def test_the_environment_is_read_once_per_policy(monkeypatch):
    """The process's policy reads FEATLIFT_ATTEND_IMPL when it is built; later changes do not reach it."""
    environ = {la.ENV_VAR: "reference"}
    policy = la.AttendPolicy.from_environment(environ)
    environ[la.ENV_VAR] = "fused"
    with la.use_attend_policy(policy):
        assert resolve_impl("auto", _inputs()[1]) == "reference"
        assert la.attend_policy() is policy
    assert la.attend_policy() is not policy, "the previous policy is back after the block"
    assert la.attend_policy() is la.attend_policy(), "one process policy, built once"


def test_the_process_policy_traces_under_a_fullgraph_compile():
    """Reading the process's policy is a plain global read: in a fresh process, torch.compile(fullgraph=True)
    traces local_attend with no graph break, before anything else has asked for the policy."""
    code = (
        "import torch\n"
        "from featlift.ops import local_attend, neighbourhood_offsets\n"
        "offsets = neighbourhood_offsets(9)\n"
        "f = torch.compile(lambda l, v: local_attend(l, v, offsets, 2) * 2.0, fullgraph=True, backend='eager')\n"
        "print(tuple(f(torch.randn(1, 9, 6, 8), torch.randn(1, 5, 3, 4)).shape))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != la.ENV_VAR}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "(1, 5, 6, 8)"


def test_verdicts_are_kept_per_dtype_and_index_width(cpu_is_candidate, monkeypatch, caplog):
    """A kernel that fails only in bfloat16, or only with 64-bit indexing, loses only those calls: float32
    and 32-bit calls keep the kernel."""
    real = cpu_is_candidate.kernel
    calls = []

    def bad_in_bf16_and_wide(logits, values, offsets, scale, *, wide):
        calls.append((values.dtype, wide))
        out = real(logits, values, offsets, scale, wide=wide)
        return out + 1.0 if values.dtype == torch.bfloat16 or wide else out

    cpu_is_candidate.kernel = bad_in_bf16_and_wide
    logits, values = _inputs()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert resolve_impl("auto", values.bfloat16()) == "fused"
        assert resolve_impl("auto", values) == "triton"
        assert resolve_impl("auto", values.bfloat16()) == "fused"
        monkeypatch.setattr(triton_kernel, "INT32_LIMIT", 1)  # every call now needs 64-bit indexing
        wide_out = local_attend(logits, values, OFFSETS, 2)
    assert calls == [(torch.bfloat16, False), (torch.float32, False), (torch.float32, True)]
    assert cpu_is_candidate.verdict("cpu", torch.bfloat16) is False
    assert cpu_is_candidate.verdict("cpu", torch.float32) is True
    assert cpu_is_candidate.verdict("cpu", torch.float32, wide=True) is False
    assert torch.equal(wide_out, fused_forward(logits, values, OFFSETS, 2, channels_last=False))
    messages = [w.getMessage() for w in _warnings(caplog)]
    assert len(messages) == 2 and "bfloat16 with 32-bit" in messages[0] and "float32 with 64-bit" in messages[1]


def test_a_graph_traced_on_the_cpu_chooses_its_implementation_when_it_runs(cpu_is_candidate):
    """``impl="auto"`` reaches the op as "auto", whatever the device at tracing: a .pt2 exported on the CPU
    takes the Triton kernel when it runs on CUDA."""

    class Attend(torch.nn.Module):
        def forward(self, logits, values):
            return local_attend(logits, values, OFFSETS, 2)

    with la.use_attend_policy(la.AttendPolicy()):  # the default: the CPU is no candidate
        exported = torch.export.export(Attend(), _inputs())
    impls = [n.args[4] for n in exported.graph.nodes if n.target is torch.ops.featlift.local_attend.default]
    assert impls == ["auto"]
    logits, values = _inputs()
    got = exported.module()(logits, values)  # cpu_is_candidate is in force again: the op takes the kernel
    assert cpu_is_candidate.verdict("cpu") is True
    assert (got - fused_forward(logits, values, OFFSETS, 2, channels_last=False)).abs().max().item() <= 1e-5
