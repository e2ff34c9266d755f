"""What the benchmark scripts share: timing on the device being benchmarked, and the dinov2_s14 upsampler
variants with their random inputs.

Every CUDA call here names the device. ``torch.cuda.synchronize()`` without one waits for the *current*
device, and ``torch.cuda.Event.record()`` without a stream records on the current device's stream, so
a run on ``cuda:1`` while ``cuda:0`` is current would wait for, and time, the wrong GPU.

torch is imported inside the functions, so a script's ``--help`` answers at once.
"""

from __future__ import annotations

import time
from typing import Any

CHANNELS = 384  # dinov2_s14's feature channels
PATCH = 14  # and its patch
VARIANTS = ("featlift", "plain", "convs", "tiled")


def synchronize(device) -> None:
    """Wait until the work queued on ``device`` is done (CUDA); nothing to wait for on the CPU."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """``with Stopwatch(device) as watch: ...``, then ``watch.seconds``.

    On CUDA: two timing events recorded on ``device``'s current stream around the block, read after
    waiting for ``device``; work queued before the block is waited for first. Elsewhere:
    ``time.perf_counter`` around the block.
    """

    def __init__(self, device) -> None:
        import torch

        self.device = torch.device(device)
        self.seconds = float("nan")
        self._events: tuple[Any, Any] | None = None
        self._t0 = 0.0

    def __enter__(self) -> Stopwatch:
        import torch

        synchronize(self.device)
        if self.device.type == "cuda":
            stream = torch.cuda.current_stream(self.device)
            self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            self._events[0].record(stream)
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        if self._events is not None:
            start, end = self._events
            end.record(torch.cuda.current_stream(self.device))
            synchronize(self.device)
            self.seconds = start.elapsed_time(end) / 1000
        else:
            self.seconds = time.perf_counter() - self._t0


def build_variant(variant: str, device, dtype, *, tile: int = 64, head_classes: int = 21):
    """The dinov2_s14 architecture (random weights) set up as ``variant``: (model, extra call kwargs).

    * ``featlift``: the library's default path.
    * ``plain``: the plain attender formulation (all n shifted copies stacked).
    * ``convs``: the network's convolutions alone (the floor): everything runs, logits included, but the
      attender's weighted sum is replaced by a nearest upsample of its values.
    * ``tiled``: ``tile=tile`` coarse cells with a ``head_classes``-wide linear head applied per tile.
    """
    import torch
    import torch.nn.functional as F

    import featlift

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    model = featlift.build_upsampler("dinov2_s14", device=device, dtype=dtype)
    kwargs = {}
    if variant == "plain":
        model.attender.impl = "reference"
    elif variant == "convs":
        # the output keeps the values' layout, channels_last on the CPU's lean path, as the attender's would
        model.attender.attend = lambda logits, values, channels_last=False: F.interpolate(
            values, size=logits.shape[-2:], mode="nearest"
        )
    elif variant == "tiled":
        head = torch.nn.Conv2d(CHANNELS, head_classes, 1).to(device, dtype)
        kwargs = {"tile": tile, "head": head}
    return model, kwargs


def random_inputs(size: int, device, dtype, seed: int = 0):
    """(image, features) for a ``size`` px input rounded down to whole patches: [1, 3, H, W] and
    [1, CHANNELS, H / PATCH, W / PATCH], standard normal, made on the CPU from ``seed``."""
    import torch

    cells = max(1, size // PATCH)
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 3, cells * PATCH, cells * PATCH, generator=gen).to(device, dtype)
    features = torch.randn(1, CHANNELS, cells, cells, generator=gen).to(device, dtype)
    return image, features
