"""Named upsampler variants: the published UPLiFT checkpoints and their architectures.

Each :class:`Variant` records the architecture (an :class:`~featlift.config.UpliftConfig` equal to the
authors' published config file) and where its pretrained weights live on the Hugging Face Hub.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneConfig,
    BlockGroupConfig,
    DecoderConfig,
    DecoderStageConfig,
    EncoderConfig,
    EncoderStageConfig,
    RefinerConfig,
    UpConfig,
    UpliftConfig,
)
from .errors import UnknownModelError

__all__ = ["Variant", "get_variant", "list_upsamplers"]


@dataclass(frozen=True)
class Variant:
    """A published pretrained upsampler."""

    name: str  # featlift's name, e.g. "dinov2_s14"
    config: UpliftConfig  # the architecture, equal to the authors' published YAML
    hub_repo: str  # Hugging Face Hub repo holding the UPLiFT weights
    hub_filename: str  # safetensors file inside that repo
    license: str = "mit"


def _encoder(norm: str, widths: list[tuple[int, ...]]) -> EncoderConfig:
    return EncoderConfig(
        stages=tuple(
            EncoderStageConfig(blocks=BlockGroupConfig(block="SingleConv", norm=norm, widths=w)) for w in widths
        )
    )


def _dino_config(patch: int, backbone_name: str, description: str) -> UpliftConfig:
    """The DINO architecture (about 0.79 M parameters): BatchNorm, 5-stage encoder, DoubleConv decoder."""
    return UpliftConfig(
        backbone=BackboneConfig(
            channels=384, patch=patch, name=backbone_name, source="timm", mean=IMAGENET_MEAN, std=IMAGENET_STD
        ),
        encoder=_encoder("batch", [(16,), (32,), (64,), (128,), (128,)]),
        decoder=DecoderConfig(
            input_blocks=BlockGroupConfig(block="DoubleConv", norm="batch", widths=(64,)),
            stages=(
                DecoderStageConfig(
                    up=UpConfig(op="tconv", factor=2, residual="bilinear"),
                    blocks=BlockGroupConfig(block="DoubleConv", norm="batch", widths=(64,)),
                ),
            ),
            noise_channels=0,
            noise_scale=1.0,
            guidance_resample="nearest",
        ),
        attender=17,
        up_factor=2,
        share_encoder=True,
        description=description,
    )


def _sd15_vae_config() -> UpliftConfig:
    """The SD1.5 VAE architecture: LayerNorm blocks, noise channels and a 12-block refiner."""
    return UpliftConfig(
        backbone=BackboneConfig(
            channels=4, patch=8, name="stable-diffusion-v1-5/stable-diffusion-v1-5", source="diffusers"
        ),
        encoder=_encoder("layer", [(64, 64), (128, 128), (256, 256), (512, 512), (512, 512)]),
        decoder=DecoderConfig(
            input_blocks=BlockGroupConfig(block="SingleConv", norm="layer", widths=(512,)),
            stages=(
                DecoderStageConfig(
                    up=UpConfig(op="tconv", factor=2, residual="bilinear"),
                    blocks=BlockGroupConfig(block="SingleConv", norm="layer", widths=(512, 512)),
                ),
            ),
            noise_channels=4,
            noise_scale=1.0,
            guidance_resample="nearest",
        ),
        attender=17,
        refiner=RefinerConfig(
            blocks=BlockGroupConfig(block="SingleConv", norm="layer", widths=(512,) * 12),
            guidance_index=-1,
            noise_channels=4,
            noise_scale=1.0,
            guidance_resample="nearest",
        ),
        up_factor=2,
        share_encoder=True,
        description="UPLiFT model for SD1.5's VAE encoder features, trained on Unsplash-Lite",
    )


_VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            name="dinov2_s14",
            config=_dino_config(
                14,
                "vit_small_patch14_dinov2.lvd142m",
                "UPLiFT model for DINOv2-S/14 model features, trained on ImageNet",
            ),
            hub_repo="UPLiFT-upsampler/uplift_dinov2-s14",
            hub_filename="uplift_dinov2-s14.safetensors",
        ),
        Variant(
            name="dinov3_splus16",
            config=_dino_config(
                16,
                "vit_small_plus_patch16_dinov3.lvd1689m",
                "UPLiFT model for DINOv3-S+/16 model features, trained on ImageNet",
            ),
            hub_repo="UPLiFT-upsampler/uplift_dinov3-splus16",
            hub_filename="uplift_dinov3-splus16.safetensors",
        ),
        Variant(
            name="sd15_vae",
            config=_sd15_vae_config(),
            hub_repo="UPLiFT-upsampler/uplift_sd1.5vae",
            hub_filename="uplift_sd1.5vae.safetensors",
        ),
    )
}


def list_upsamplers() -> list[str]:
    """Names of the registered pretrained upsamplers."""
    return sorted(_VARIANTS)


def get_variant(name: str) -> Variant:
    """The registered variant ``name``; raises :class:`UnknownModelError` listing the known names."""
    try:
        return _VARIANTS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown upsampler {name!r}; known names: {', '.join(list_upsamplers())} "
            "(or pass a config file, a directory with config.json, or an UpliftConfig)"
        ) from None
