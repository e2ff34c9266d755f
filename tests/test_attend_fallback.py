"""The CUDA path cannot strand anyone: ``impl="auto"`` trusts the Triton kernel only after a self-test
against the fused path, once per device, and falls back with one warning when it fails.

No GPU here: the "is this device a Triton candidate" check is patched to say yes for the CPU, and the
kernel runs in Triton's CPU interpreter (``TRITON_INTERPRET=1``) or is replaced by a broken one.
"""

from __future__ import annotations

import importlib
import logging

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


@pytest.fixture
def cpu_is_candidate(monkeypatch):
    """The CPU counts as a Triton device, with the kernel in the interpreter and a fresh self-test cache."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv(la.ENV_VAR, raising=False)
    monkeypatch.setattr(la, "_triton_candidate", lambda device: True)
    monkeypatch.setattr(la, "_DEVICE_CHECKS", {})


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts calls of the real kernel (self-test and op alike)."""
    calls = []
    real = la.triton_forward

    def counted(*args, **kwargs):
        calls.append(args[1].dtype)
        return real(*args, **kwargs)

    monkeypatch.setattr(la, "triton_forward", counted)
    return calls


def _inputs(dtype=torch.float32):
    gen = torch.Generator().manual_seed(1)
    values = torch.randn(1, 5, 3, 4, generator=gen).to(dtype)
    logits = (3 * torch.randn(1, 9, 6, 8, generator=gen)).to(dtype)
    return logits, values


def _warnings(caplog):
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def _check_fallback(monkeypatch, caplog, broken, reason):
    calls = []

    def kernel(*args, **kwargs):
        calls.append(1)
        return broken(*args, **kwargs)

    monkeypatch.setattr(la, "triton_forward", kernel)
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


def test_kernel_that_raises_falls_back_to_fused_with_one_warning(cpu_is_candidate, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("PTX assembly failed\nlong compiler log")

    _check_fallback(monkeypatch, caplog, broken, "RuntimeError: PTX assembly failed")


def test_kernel_with_wrong_values_falls_back_to_fused_with_one_warning(cpu_is_candidate, monkeypatch, caplog):
    def wrong(logits, values, offsets, scale):
        return fused_forward(logits, values, offsets, scale, channels_last=False) + 0.01

    _check_fallback(monkeypatch, caplog, wrong, "differs from the fused path by up to 0.01")


def test_kernel_returning_nan_is_refused(cpu_is_candidate, monkeypatch, caplog):
    def nan(logits, values, offsets, scale):
        out = fused_forward(logits, values, offsets, scale, channels_last=False)
        out[0, 0, 0, 0] = float("nan")
        return out

    monkeypatch.setattr(la, "triton_forward", nan)
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


def test_self_test_never_records_autograd(cpu_is_candidate, monkeypatch):
    seen = []
    real = la.triton_forward

    def spy(logits, values, offsets, scale):
        seen.append(torch.is_grad_enabled())
        return real(logits, values, offsets, scale)

    monkeypatch.setattr(la, "triton_forward", spy)
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
    ],
)
def test_env_var_and_impl_force_the_choice_without_a_self_test(cpu_is_candidate, monkeypatch, env, impl, expected):
    """An explicit impl wins over the variable; the variable wins over auto; forcing skips the self-test
    (the kernel here is off by one, so a self-test would refuse it)."""
    monkeypatch.setenv(la.ENV_VAR, env)
    calls = []

    def off_by_one(logits, values, offsets, scale):
        calls.append(1)
        return fused_forward(logits, values, offsets, scale, channels_last=False) + 1.0

    monkeypatch.setattr(la, "triton_forward", off_by_one)
    logits, values = _inputs()
    assert resolve_impl(impl, values) == expected
    out = local_attend(logits, values, OFFSETS, 2, impl=impl)
    fused = fused_forward(logits, values, OFFSETS, 2, channels_last=False)
    if expected == "triton":
        assert calls == [1], "forced Triton runs the kernel, with no self-test first"
        assert torch.allclose(out, fused + 1.0)
    else:
        assert calls == []
        assert torch.allclose(out, fused, atol=1e-6)


@pytest.mark.parametrize("env", ["auto", " AUTO ", ""])
def test_env_var_set_to_auto_keeps_the_self_test(cpu_is_candidate, monkeypatch, caplog, env):
    monkeypatch.setenv(la.ENV_VAR, env)
    monkeypatch.setattr(la, "triton_forward", lambda *args: fused_forward(*args, channels_last=False) + 1.0)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert resolve_impl("auto", _inputs()[1]) == "fused"
    assert len(_warnings(caplog)) == 1


def test_invalid_env_value_names_the_variable_and_the_choices(monkeypatch):
    monkeypatch.setenv(la.ENV_VAR, "cuda")
    logits, values = _inputs()
    with pytest.raises(ValueError, match=r"FEATLIFT_ATTEND_IMPL='cuda'.*auto, reference, fused, triton"):
        local_attend(logits, values, OFFSETS, 2)
    with pytest.raises(ValueError, match="FEATLIFT_ATTEND_IMPL"):
        resolve_impl("auto", values)
    assert resolve_impl("fused", values) == "fused", "an explicit impl does not read the variable"


def test_forced_triton_that_cannot_run_says_who_forced_it(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv(la.ENV_VAR, "triton")
    logits, values = _inputs()
    with pytest.raises(RuntimeError, match=r"cannot run on cpu \(FEATLIFT_ATTEND_IMPL=triton\).*needs a CUDA device"):
        local_attend(logits, values, OFFSETS, 2)


def test_cpu_is_no_candidate_by_default(monkeypatch):
    """Without the patch the CPU never self-tests: auto is plain fused there, even under the interpreter."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv(la.ENV_VAR, raising=False)
    monkeypatch.setattr(la, "_DEVICE_CHECKS", {})
    assert resolve_impl("auto", _inputs()[1]) == "fused"
    assert la._DEVICE_CHECKS == {}
