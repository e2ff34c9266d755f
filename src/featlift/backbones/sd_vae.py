"""The Stable Diffusion VAE encoder (diffusers ``AutoencoderKL``) as a backbone: latents are features."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from ..errors import CheckpointError, FeatliftError, require
from ._normalisation import IDENTITY, Stats
from .base import Backbone

__all__ = ["DiffusersVAE"]


def _autoencoder_kl():
    return require("diffusers", feature="the SD VAE backbone", extra="vae").AutoencoderKL


def _load_vae(autoencoder_kl, folder: Path):
    try:
        return autoencoder_kl.from_pretrained(str(folder), use_safetensors=True)
    except FeatliftError:
        raise
    except Exception as err:  # diffusers raises OSError, ValueError or safetensors' own error here
        detail = " ".join(str(err).split())[:1000] or "no details"
        files = ", ".join(sorted(p.name for p in folder.iterdir())) if folder.is_dir() else "not a folder"
        raise CheckpointError(
            f"cannot load the VAE from {folder} ({files}): {type(err).__name__}: {detail}. The folder needs "
            "config.json and diffusion_pytorch_model.safetensors from the VAE's diffusers repo; if a file is "
            "damaged, copy or download it again (in a Hugging Face cache, delete the broken entry first)."
        ) from None


class DiffusersVAE(Backbone):
    """``AutoencoderKL`` encoder: latent = mode of the latent distribution, no scaling factor.

    ``forward`` takes images in [0, 1] (the upsampler's guidance input) and maps them to [-1, 1] itself,
    so its :attr:`normalisation` is the identity.

    Args:
        name: diffusers pipeline id, used for messages.
        vae_dir: a local folder with the VAE's ``config.json`` and weights (as
            :func:`featlift.hub.download_diffusers_vae` returns), or None for a random initialisation with
            the SD1.5 VAE's default architecture.
        vae: an ``AutoencoderKL`` instance to use as is (tests, custom VAEs).

    Raises:
        MissingDependencyError: diffusers is not installed.
        CheckpointError: ``vae_dir`` lacks the files, or they are damaged (only safetensors weights are
            read, so nothing is unpickled).
    """

    source = "diffusers"
    example = "diffusers:stable-diffusion-v1-5/stable-diffusion-v1-5"

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
                vae = _load_vae(autoencoder_kl, Path(vae_dir))
        self.vae = vae
        self.name = name
        self.patch = 2 ** (len(vae.config.block_out_channels) - 1)
        self.channels = int(vae.config.latent_channels)
        self.normalisation = self.published_normalisation(name)
        self.freeze()

    @classmethod
    def published_normalisation(cls, name: str) -> Stats:
        """The identity: the VAE takes images in [0, 1] (it maps them to [-1, 1] itself)."""
        return IDENTITY

    @classmethod
    def published_weights(cls, name: str, *, cache_dir: str | os.PathLike | None = None) -> Path:
        """The ``vae`` folder of the diffusers pipeline ``name``, downloaded or found in the cache.

        Raises:
            DownloadError: the published files are neither downloadable nor in the cache.
        """
        from .. import hub

        return hub.download_diffusers_vae(name, cache_dir=cache_dir)

    def activation_bytes(self, batch: int, size: tuple[int, int], itemsize: int) -> int:
        """About 6 maps of the first block's width at full resolution (5 measured for SD1.5's encoder on
        the CPU); see :meth:`Backbone.activation_bytes`."""
        return 6 * batch * size[0] * size[1] * int(self.vae.config.block_out_channels[0]) * itemsize

    def forward(self, image: Tensor) -> Tensor:
        return self.vae.encode(image * 2 - 1).latent_dist.mode()

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents [B, 4, h, w] -> images [B, 3, 8h, 8w] in [0, 1]."""
        return ((self.vae.decode(latents).sample + 1) / 2).clamp(0, 1)
