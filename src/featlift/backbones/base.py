"""The interface every backbone implements."""

from __future__ import annotations

from torch import Tensor, nn


class Backbone(nn.Module):
    """A frozen feature extractor.

    ``forward(image)`` takes an image [B, 3, H, W] normalised as the upsampler's config says (ImageNet
    mean/std for DINO; [0, 1] for the SD VAE) with H and W multiples of ``patch``, and returns features
    [B, channels, H / patch, W / patch].
    """

    patch: int
    channels: int

    def freeze(self) -> Backbone:
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def forward(self, image: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError
