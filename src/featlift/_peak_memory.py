"""Measured peak memory of a block of code: the demo's reading and the memory benchmark's.

On CUDA the allocator's peak (``max_memory_allocated``) above the allocation at the start; on Linux CPUs
the rise of the process's peak resident set (VmHWM, reset through /proc/self/clear_refs) above the
resident set at the start. Elsewhere nothing is measured (``peak`` stays None).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["PeakMemory"]

_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


def _status_bytes(field: str) -> int | None:
    """A memory field of /proc/self/status (e.g. VmRSS, VmHWM) in bytes; None where there is none."""
    try:
        with open(_STATUS) as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the process's peak-RSS mark (VmHWM) to the current RSS; False where Linux does not allow it."""
    try:
        with open(_CLEAR_REFS, "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """``with PeakMemory(device) as peak: ...`` then ``peak.peak`` (bytes, or None where it cannot be
    measured) and ``peak.method`` (how it was measured, in words)."""

    def __init__(self, device: torch.device | str) -> None:
        import torch

        self.device = torch.device(device)
        self.peak: int | None = None
        self.method = "not measured"
        self._base: int | None = None

    def __enter__(self) -> PeakMemory:
        import torch

        self._base = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif self.device.type == "cpu" and _reset_peak_rss():
            self._base = _status_bytes("VmRSS")
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self._base is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
            self.method = "CUDA allocator peak"
            return
        high = _status_bytes("VmHWM")
        if high is not None:
            self.peak = max(0, high - self._base)
            self.method = "rise of the process's peak resident memory"
