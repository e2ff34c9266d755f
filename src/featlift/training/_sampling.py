"""Training's randomness: the data order (:class:`StreamSampler`), the per-step generators that every
random draw comes from (:func:`generator`), and the global RNG states a checkpoint carries
(:func:`rng_state`, :func:`set_rng_state`)."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch
from torch.utils.data import Sampler

from .._distributed import Dist

__all__ = ["StreamSampler", "derived_seed", "generator", "rng_state", "set_rng_state"]


class StreamSampler(Sampler[int]):
    """This process's share of the global batches from ``start_step`` on.

    The data order is a concatenation of seeded permutations, one per epoch (seed ``seed * 1000003 +
    epoch``), cut into global batches of B * world; process r takes the stream positions
    ``[step * B * world + r * B, ... + B)``. The permutation of the current epoch is built once and kept
    until the stream leaves the epoch; the indices are looked up for many steps at once, with tensor
    indexing, and handed out from a Python list.
    """

    WINDOW = 1 << 16  # indices looked up at a time

    def __init__(self, n: int, batch: int, d: Dist, seed: int, start_step: int, total_steps: int) -> None:
        self.n, self.batch, self.d, self.seed = n, batch, d, seed
        self.start, self.total = start_step, total_steps
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.int64)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            self._perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1000003 + epoch))
            self._epoch = epoch
        return self._perm

    def _lookup(self, positions: torch.Tensor) -> list[int]:
        """The dataset indices at increasing stream ``positions``."""
        epochs = positions // self.n
        first, last = int(epochs[0]), int(epochs[-1])
        if first == last:  # the usual case: the window lies inside one epoch
            return self._permutation(first)[positions - first * self.n].tolist()
        out: list[int] = []
        for epoch in range(first, last + 1):
            inside = positions[epochs == epoch]
            if len(inside):
                out += self._permutation(epoch)[inside - epoch * self.n].tolist()
        return out

    def __len__(self) -> int:
        return (self.total - self.start) * self.batch

    def __iter__(self):
        g = self.batch * self.d.world
        lanes = torch.arange(self.batch) + self.d.rank * self.batch
        per_window = max(1, self.WINDOW // self.batch)
        for first in range(self.start, self.total, per_window):
            steps = torch.arange(first, min(self.total, first + per_window))
            yield from self._lookup((steps[:, None] * g + lanes).flatten())


def derived_seed(seed: int, step: int, stream: str, rank: int = 0) -> int:
    """A 63-bit seed hashed from ``(seed, step, stream, rank)``: unrelated seeds for different streams."""
    key = f"featlift/{seed}/{step}/{stream}/{rank}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def generator(seed: int, step: int, stream: str, rank: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` for one stream of random draws at one step (and one process)."""
    return torch.Generator(device=device).manual_seed(derived_seed(seed, step, stream, rank))


def rng_state() -> dict:
    """The global RNG states of this process (torch, CUDA, ``random``, numpy), as plain data and tensors."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Put back the global RNG states that :func:`rng_state` captured (CUDA's only on as many GPUs)."""
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
