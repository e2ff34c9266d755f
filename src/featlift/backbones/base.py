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

    def activation_bytes(self, batch: int, size: tuple[int, int], itemsize: int) -> int:
        """Rough peak bytes of one forward pass on ``batch`` images of ``size`` (H, W) pixels, beyond the
        input and output, for featlift's memory guard. The default fits a ViT with a memory-efficient
        attention kernel: about 12 token maps of ``channels`` wide (11 measured for timm's ViT-S/14 on
        the CPU, linear in the token count). Backbones of other shapes override it."""
        tokens = (size[0] // self.patch) * (size[1] // self.patch)
        return 12 * batch * tokens * self.channels * itemsize

    def forward(self, image: Tensor) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError
