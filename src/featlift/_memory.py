"""The memory guard: estimate what an upsampling call will hold at its peak, before it starts.

Pixel-dense features are big (a 4096x4096 photo gives 33.5 GB of DINOv2-S features in float32), and a
call that does not fit ends in an OOM kill or in swap, long after it started. :class:`Upsampler` asks
:func:`estimate_call` for the peak bytes of a call from the shapes alone and compares them with the
memory available on the device (:func:`available_bytes`: free CUDA memory plus what PyTorch's caching
allocator holds unused, or psutil's available RAM). A call that will not fit raises
:class:`InsufficientMemoryError` with the estimate and the arguments that make it fit.

The estimate follows the phases of the lean inference path (``modeling/``): the backbone, the guidance
encoder, then the last decoder step and the last attender, where the image-sized tensors live, then the
final resize. Each phase's live tensors are counted from the config's channel widths; the peak is the
largest phase plus the tensors held throughout. ``benchmarks/bench_memory.py`` compares the estimate
with the measured peak of real calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

__all__ = ["RESIZE_CHANNELS", "MemoryEstimate", "available_bytes", "estimate_call", "format_bytes"]

# Channels a half-precision antialiased resize takes to float32 at a time (PyTorch's antialiased kernel
# takes float32 only): the float32 copies stay a slice of the map (featlift._upsampler.resize_features).
RESIZE_CHANNELS = 32

# Headroom over the modelled peak: measured peaks lie within 10% of the model (benchmarks/bench_memory.py).
MARGIN = 1.15


def format_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


@dataclass
class MemoryEstimate:
    """Estimated peak bytes of one call, with the parts that make it up."""

    total: int
    output: int  # the returned tensor(s)
    parts: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        rest = ", ".join(f"{name} {format_bytes(v)}" for name, v in self.parts.items() if v)
        return f"about {format_bytes(self.total)} (output {format_bytes(self.output)}; {rest})"


def available_bytes(device: torch.device) -> int | None:
    """Bytes a new allocation can use on ``device``; None where featlift cannot tell (MPS, ...)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(cached, 0))
    if device.type == "cpu":
        import psutil

        return int(psutil.virtual_memory().available)
    return None


def _block_tensors(group) -> int:
    """Output-width tensors a block holds beside its input: conv output and 1x1 projection with
    BatchNorm (folded away at inference); LayerNorm adds its channels-last copy and the residual sum
    (4 measured for the SD-VAE layout)."""
    return 4 if group.norm == "layer" else 2


def _uplift_working_set(uplift, cells: tuple[int, int], iters: int, itemsize: int) -> dict[str, int]:
    """Peak bytes per image of UPLiFT itself on a grid of ``cells`` coarse cells (untiled), by phase:
    the guidance encoder, and the last iteration's decoder, attender and refiner (the image-sized ones)."""
    config, reads = uplift.config, uplift.guidance_reads
    h, w = cells
    c, f = config.channels, config.up_factor
    guide_px = h * config.resolved_guidance_patch * w * config.resolved_guidance_patch
    if not config.share_encoder:  # the encoder re-runs on the image grown for the last iteration
        guide_px *= f ** (2 * max(iters - 1, 0))
    out_px = h * f**iters * w * f**iters
    in_px = out_px // (f * f) if iters else out_px

    widths = config.encoder.out_channels(3)
    kept = sum(widths[i] for i in reads)
    encoder = 0
    for i, (stage, width) in enumerate(zip(config.encoder.stages, widths, strict=True)):
        before = sum(widths[j] for j in reads if j < i)
        encoder = max(encoder, before + ([3, *widths][i]) + _block_tensors(stage.blocks) * width)
    encoder *= guide_px

    # The last stage of the decoder step: the up op's output, its blocks, the noise channels.
    up_width, last = c, config.decoder.input_blocks
    for stage in config.decoder.stages:
        up_width, last = last.out_channels(up_width), stage.blocks
    dec = up_width + _block_tensors(last) * max(last.widths, default=c) + config.decoder.noise_channels
    phases = {
        "encoder": encoder,
        "decoder": in_px * c + out_px * dec + guide_px * kept,
        "attender": in_px * c + out_px * (config.attender + c),
    }
    if config.refiner is not None:
        blocks = config.refiner.blocks
        ref = _block_tensors(blocks) * max(blocks.widths, default=c) + config.refiner.noise_channels
        phases["refiner"] = out_px * (2 * c + ref) + guide_px * kept
    return {name: v * itemsize for name, v in phases.items()}


def estimate_call(
    uplift,
    *,
    backbone_bytes: int,
    batch: int,
    pixels: tuple[int, int],
    iters: int,
    itemsize: int,
    tile: tuple[int, int] | None,
    out_channels: int,
    output_size: tuple[int, int] | None,
    head: bool = False,
) -> MemoryEstimate:
    """Peak bytes of one :class:`~featlift.Upsampler` group call (``batch`` images of the same size).

    Args:
        uplift: the :class:`~featlift.UPLiFT` model (its config and tile halo are read).
        backbone_bytes: the backbone's own peak for this batch (its activations).
        pixels: the backbone-input size (H, W), multiples of the patch.
        itemsize: bytes per element of the model's dtype.
        tile: ``(rows, cols)`` cells per tile, or None.
        out_channels: channels of the result (C, or K with a head).
        output_size: the final (H, W) after the resize, or None when the native grid is returned.
        head: whether a per-pixel head maps the C-channel features to ``out_channels``.
    """
    config = uplift.config
    p, f = config.patch, config.up_factor
    h, w = pixels[0] // p, pixels[1] // p
    native = (h * f**iters) * (w * f**iters)
    guide_px = h * config.resolved_guidance_patch * w * config.resolved_guidance_patch
    image_px = pixels[0] * pixels[1]
    held = batch * (3 * image_px * (4 + itemsize) + 3 * guide_px * itemsize + config.channels * h * w * itemsize)
    out_native = batch * native * out_channels * itemsize
    if tile is None:
        phases = _uplift_working_set(uplift, (h, w), iters, itemsize)
        working = batch * max(phases.values())
        # The attender phase counts the C-channel output; a head's result lives beside it.
        uplift_peak = working + (out_native if head else 0)
    else:
        halo = uplift.tile_halo(iters)
        crop = (min(h, tile[0] + 2 * halo), min(w, tile[1] + 2 * halo))
        phases = _uplift_working_set(uplift, crop, iters, itemsize)
        working = batch * max(phases.values())
        uplift_peak = out_native + working
    resize = 0
    if output_size is not None and tuple(output_size) != (h * f**iters, w * f**iters):
        # The bilinear resize (resize_features) writes the output beside the native map. Antialiased (past 2x)
        # it goes one axis at a time in float32, half precision RESIZE_CHANNELS channels at a time.
        (oh, ow), (nh, nw) = output_size, (h * f**iters, w * f**iters)
        resize = out_native + batch * out_channels * itemsize * oh * ow
        if oh * 2 < nh or ow * 2 < nw:
            one_axis = max(oh * nw, nh * ow)
            if itemsize == 4:
                resize += batch * out_channels * 4 * one_axis
            else:  # per slice: its float32 copy, the one-axis pass, its float32 result
                resize += batch * min(out_channels, RESIZE_CHANNELS) * 4 * (nh * nw + one_axis + oh * ow)
    output = batch * out_channels * itemsize * (native if output_size is None else math.prod(output_size))
    total = MARGIN * (held + max(backbone_bytes, uplift_peak, resize))
    return MemoryEstimate(
        total=int(total),
        output=int(output),
        parts={
            "inputs": int(held),
            "backbone": int(backbone_bytes),
            "upsampler working set": int(working),
            "final resize": int(resize),
        },
    )
