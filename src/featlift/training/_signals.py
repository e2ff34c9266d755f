"""Stopping a training run on SIGINT or SIGTERM at the end of a step, the same step on every process."""

from __future__ import annotations

import signal
import threading

import torch

from .._distributed import Dist

__all__ = ["StopSignals", "agreed_signal", "ignore_stop_signals"]


class StopSignals:
    """While active, SIGINT and SIGTERM only set :attr:`received`: the loop stops at the end of the
    step. A second signal raises ``KeyboardInterrupt`` at once. Handlers are installed only in the main
    thread (Python allows no other) and the previous ones are put back on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt(f"second signal ({signal.Signals(signum).name}): stopping without a checkpoint")
        self.received = signum


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGINT/SIGTERM sent to the whole process group (Ctrl-C, a scheduler) to
    the main process, which stops at the end of the step; a worker killed by it would crash the run."""
    for sig in StopSignals.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def agreed_signal(stop: StopSignals, d: Dist, device: torch.device) -> int:
    """The signal any process received (0: none), the same on every process (collective)."""
    return d.max(stop.received or 0, device)
