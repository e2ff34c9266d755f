"""Small UPLiFT configs and random inputs shared by the model and tiling tests."""

from __future__ import annotations

import dataclasses

import torch

from featlift.config import (
    BackboneConfig,
    BlockGroupConfig,
    DecoderConfig,
    DecoderStageConfig,
    EncoderConfig,
    EncoderStageConfig,
    UpConfig,
    UpliftConfig,
)


def tiny_config(
    patch: int = 14,
    channels: int = 6,
    attender: int = 9,
    encoder_widths: tuple[int, ...] = (4, 8, 8),
    decoder_width: int = 12,
    **changes,
) -> UpliftConfig:
    """The published layout in miniature: SingleConv encoder stages, DoubleConv decoder input and stage,
    with the published choices for the fields the schema requires (bilinear up residual, nearest guidance
    resampling, shared encoder)."""
    cfg = UpliftConfig(
        backbone=BackboneConfig(channels=channels, patch=patch),
        encoder=EncoderConfig(
            stages=tuple(EncoderStageConfig(blocks=BlockGroupConfig(widths=(w,))) for w in encoder_widths)
        ),
        decoder=DecoderConfig(
            input_blocks=BlockGroupConfig(block="DoubleConv", widths=(decoder_width,)),
            stages=(
                DecoderStageConfig(
                    up=UpConfig(op="tconv", factor=2, residual="bilinear"),
                    blocks=BlockGroupConfig(block="DoubleConv", widths=(decoder_width,)),
                ),
            ),
            guidance_resample="nearest",
        ),
        attender=attender,
        share_encoder=True,
    )
    return dataclasses.replace(cfg, **changes)


def random_inputs(cfg: UpliftConfig, b: int = 2, h: int = 3, w: int = 4, seed: int = 0):
    """A random image [b, 3, h*patch, w*patch] and features [b, C, h, w]."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(b, 3, h * cfg.patch, w * cfg.patch, generator=gen)
    features = torch.randn(b, cfg.channels, h, w, generator=gen)
    return image, features
