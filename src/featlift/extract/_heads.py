"""Heads: a per-pixel linear map read from a ``.safetensors`` file, and the float32 wrapper that lets a
model computing in any dtype apply it."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from .._tensors import freeze
from ..errors import CheckpointError

__all__ = ["FloatHead", "load_head"]


def load_head(path: str | os.PathLike, channels: int | None = None) -> nn.Conv2d:
    """A per-pixel linear map from a ``.safetensors`` file: ``weight`` [K, C] or [K, C, 1, 1] and an
    optional ``bias`` [K] (a PCA basis, a trained linear probe). ``channels`` checks C."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--head {path}: no such file; pass a .safetensors file with 'weight' [K, C]")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"--head {path}: not a readable .safetensors file ({err})") from err
    weight = tensors.get("weight")
    if weight is None:
        raise CheckpointError(
            f"--head {path}: no 'weight' tensor (found {sorted(tensors)}); save the map as "
            "{'weight': [K, C] or [K, C, 1, 1], 'bias': [K] (optional)}"
        )
    if weight.dim() == 4 and weight.shape[-2:] == (1, 1):
        weight = weight[:, :, 0, 0]
    if weight.dim() != 2 or not weight.is_floating_point():
        raise CheckpointError(
            f"--head {path}: 'weight' must be a float [K, C] or [K, C, 1, 1], got {tuple(weight.shape)}"
        )
    k, c = weight.shape
    if channels is not None and c != channels:
        raise CheckpointError(f"--head {path}: 'weight' maps {c} channels, but this model's features have {channels}")
    bias = tensors.get("bias")
    if bias is not None and tuple(bias.shape) != (k,):
        raise CheckpointError(f"--head {path}: 'bias' must be [{k}] to match 'weight', got {tuple(bias.shape)}")
    unknown = sorted(set(tensors) - {"weight", "bias"})
    if unknown:
        raise CheckpointError(f"--head {path}: unexpected tensors {unknown}; only 'weight' and 'bias' are read")
    head = nn.Conv2d(c, k, 1, bias=bias is not None)
    with torch.no_grad():
        head.weight.copy_(weight.float()[:, :, None, None])
        if bias is not None:
            head.bias.copy_(bias.float())
    return freeze(head)


class FloatHead(nn.Module):
    """A float32 head for a model computing in any dtype: each tile's features enter as float32."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(x.float())
