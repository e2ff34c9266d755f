"""What the machine offers: whether this CPU computes bfloat16 natively.

On x86 CPUs with AMX (Intel Xeon from Sapphire Rapids on) or AVX512-BF16 (Intel Cooper Lake, AMD Zen 4
and later), oneDNN runs bfloat16 convolutions and matrix products on dedicated instructions, several
times faster than float32. Elsewhere PyTorch still runs bfloat16, but by converting to float32 and
back, usually slower than float32 itself. :func:`cpu_supports_bf16` tells the two apart, so callers can
choose ``dtype=torch.bfloat16`` on the CPU only where it pays (``benchmarks/bench_roofline.py``
measures what it pays on a given machine).
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path

__all__ = ["cpu_supports_bf16"]

logger = logging.getLogger(__name__)

# platform.machine() of the x86 family, lower-cased (Linux, macOS and Windows spellings).
X86_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})
# The Linux CPU table read when torch cannot answer, and its flags that mean native bfloat16.
CPUINFO = Path("/proc/cpuinfo")
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# torch.cpu's own queries (cpuinfo-based; they also check that the OS enables the register state):
# AVX512-BF16, and AMX tiles (every CPU with AMX tiles so far also has AMX-BF16).
TORCH_QUERIES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bfloat16 arithmetic: AMX-BF16 or AVX512-BF16.

    How it decides, in order:

    1. Not an x86 machine (``platform.machine()``): False. Arm's BF16 extension is not considered;
       featlift has not measured bfloat16 there.
    2. torch's own queries, where this torch has them (``torch.cpu._is_avx512_bf16_supported`` and
       ``torch.cpu._is_amx_tile_supported``, present in recent releases; 2.14 has both): True if
       either says yes. They read CPUID and also check that the operating system enables the
       registers. ``torch.backends.cpu.get_cpu_capability()`` is not used: it names the vector width
       of ATen's kernels ("AVX512"), not bfloat16 support.
    3. Otherwise (an older torch, or a query that raised), on Linux: True if a ``flags`` line of
       ``/proc/cpuinfo`` lists ``avx512_bf16`` or ``amx_bf16``. Without that file: False.

    It describes the hardware: settings that keep oneDNN or ATen off those instructions
    (``ONEDNN_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY``) are not looked at. Cheap enough to call per use
    (nothing is cached); the reason for the answer is logged at DEBUG level.
    """
    supported, reason = _bf16_support()
    logger.debug("native bfloat16 on this CPU: %s (%s)", supported, reason)
    return supported


def _bf16_support() -> tuple[bool, str]:
    """(answer, how it was reached) for :func:`cpu_supports_bf16`."""
    machine = platform.machine().lower()
    if machine not in X86_MACHINES:
        return False, f"{machine or 'unknown'} is not an x86 machine"
    answers = _torch_answers()
    if answers is not None:
        found = [name for name, yes in answers.items() if yes]
        return bool(found), f"torch.cpu says {_listed(found, answers)}"
    flags = _cpuinfo_flags(CPUINFO)
    if flags is None:
        return False, f"this torch has no bfloat16 query and there is no {CPUINFO}"
    found = sorted(flags & BF16_FLAGS)
    return bool(found), f"{CPUINFO} flags: {_listed(found, sorted(BF16_FLAGS))}"


def _listed(found: list[str], looked_for) -> str:
    return ", ".join(found) if found else "neither " + " nor ".join(looked_for)


def _torch_answers() -> dict[str, bool] | None:
    """The answers of the torch queries this torch has, by name; None when it has none or one raised."""
    import torch

    answers = {}
    for name in TORCH_QUERIES:
        query = getattr(torch.cpu, name, None)
        if query is None:
            continue
        try:
            answers[name.removeprefix("_is_").removesuffix("_supported")] = bool(query())
        except Exception as err:  # a query that fails on an exotic platform: fall back to the flags
            logger.debug("torch.cpu.%s() raised %s; reading the CPU flags instead", name, err)
            return None
    return answers or None


def _cpuinfo_flags(path: Path) -> set[str] | None:
    """Every flag on the ``flags`` lines of a Linux ``/proc/cpuinfo``; None when it cannot be read."""
    try:
        text = path.read_text()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return flags
