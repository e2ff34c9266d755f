"""The Stable Diffusion VAE encoder (diffusers ``AutoencoderKL``) as a backbone: latents are features."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from ..errors import MissingDependencyError
from .base import Backbone


def _autoencoder_kl():
    try:
        from diffusers import AutoencoderKL
    except ImportError as err:
        raise MissingDependencyError("the SD VAE backbone needs diffusers: pip install 'featlift[vae]'") from err
    return AutoencoderKL


class DiffusersVAE(Backbone):
    """``AutoencoderKL`` encoder: latent = mode of the latent distribution, no scaling factor.

    ``forward`` takes images in [0, 1] (the upsampler's guidance input) and maps them to [-1, 1] itself.

    Args:
        name: diffusers pipeline id, used for messages.
        vae_dir: a local folder with the VAE's ``config.json`` and weights (as
            :func:`featlift.hub.download_diffusers_vae` returns), or None for a random initialisation with
            the SD1.5 VAE's default architecture.
        vae: an ``AutoencoderKL`` instance to use as is (tests, custom VAEs).
    """

    def __init__(self, name: str, vae_dir: str | os.PathLike | None = None, vae=None) -> None:
        super().__init__()
        if vae is None:
            autoencoder_kl = _autoencoder_kl()
            if vae_dir is None:
                vae = autoencoder_kl(
                    block_out_channels=(128, 256, 512, 512),
                    down_block_types=("DownEncoderBlock2D",) * 4,
                    up_block_types=("UpDecoderBlock2D",) * 4,
                    layers_per_block=2,
                    latent_channels=4,
                    sample_size=512,
                )
            else:
                vae = autoencoder_kl.from_pretrained(str(Path(vae_dir)), use_safetensors=True)
        self.vae = vae
        self.name = name
        self.patch = 2 ** (len(vae.config.block_out_channels) - 1)
        self.channels = int(vae.config.latent_channels)
        self.freeze()

    def forward(self, image: Tensor) -> Tensor:
        return self.vae.encode(image * 2 - 1).latent_dist.mode()

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents [B, 4, h, w] -> images [B, 3, 8h, 8w] in [0, 1]."""
        return ((self.vae.decode(latents).sample + 1) / 2).clamp(0, 1)
