"""Throughput of the training sampler (indices per second) at dataset scale.

Times featlift's sampler (one permutation per epoch, sliced per step) over a whole epoch of one process
at ImageNet-1k's size, and, in the same run, the old formulation (a fresh ``randperm(n)`` for every
index) over a few indices as the baseline. Both produce the same order; the benchmark checks that on
the indices the baseline computed.

    python benchmarks/bench_sampler.py                       # n = 1,281,167, batch 32, 1 process
    python benchmarks/bench_sampler.py --batch 4 --world 8 --rank 3
"""

from __future__ import annotations

import argparse
import time

import torch

from featlift._distributed import Dist
from featlift.training._sampling import StreamSampler


def old_index(position: int, n: int, seed: int) -> int:
    """The previous sampler's per-index formula: a new permutation of n for every position."""
    epoch, offset = divmod(position, n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000003 + epoch))
    return int(perm[offset])


def old_order(n: int, batch: int, world: int, rank: int, seed: int, start: int, count: int) -> list[int]:
    """The first ``count`` indices the old sampler yields for this process from step ``start`` on."""
    out: list[int] = []
    step = start
    while len(out) < count:
        first = step * batch * world + rank * batch
        for position in range(first, first + batch):
            out.append(old_index(position, n, seed))
            if len(out) == count:
                break
        step += 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1281167, help="dataset size (default: ImageNet-1k train)")
    parser.add_argument("--batch", type=int, default=32, help="images per process and step")
    parser.add_argument("--world", type=int, default=1, help="number of processes")
    parser.add_argument("--rank", type=int, default=0, help="the process to time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=float, default=1.0, help="length of the timed stream, in epochs")
    parser.add_argument("--old-indices", type=int, default=50, help="indices the old formulation computes")
    args = parser.parse_args()
    if not 0 <= args.rank < args.world:
        parser.error("--rank must be in [0, --world)")
    torch.set_num_threads(1)

    steps = max(1, round(args.epochs * args.n / (args.batch * args.world)))
    d = Dist(rank=args.rank, world=args.world)
    sampler = StreamSampler(args.n, args.batch, d, args.seed, 0, steps)
    t0 = time.perf_counter()
    count = 0
    head: list[int] = []
    for index in sampler:
        if count < args.old_indices:
            head.append(index)
        count += 1
    new_time = time.perf_counter() - t0
    new_rate = count / new_time

    t0 = time.perf_counter()
    baseline = old_order(args.n, args.batch, args.world, args.rank, args.seed, 0, min(args.old_indices, count))
    old_time = time.perf_counter() - t0
    old_rate = len(baseline) / old_time
    if baseline != head:
        raise SystemExit("the new sampler's order differs from the old formulation's")

    print(f"n={args.n} batch={args.batch} world={args.world} rank={args.rank} steps={steps}")
    print(f"new sampler: {count} indices in {new_time:.3f} s = {new_rate:,.0f} indices/s")
    print(f"old per-index randperm: {len(baseline)} indices in {old_time:.3f} s = {old_rate:,.1f} indices/s")
    print(f"speed-up: {new_rate / old_rate:,.0f}x (same order on the {len(baseline)} indices compared)")


if __name__ == "__main__":
    main()
