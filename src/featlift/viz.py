"""Feature visualisation: the first three principal components as an RGB image."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["pca_rgb"]


def pca_rgb(features: Tensor, *, max_samples: int = 20000, seed: int = 0) -> np.ndarray:
    """Features [C, H, W] -> uint8 image [H, W, 3] of the first three principal components.

    The projection is fitted on at most ``max_samples`` random pixels and each component is scaled to
    its 1st-99th percentile range.
    """
    if features.dim() != 3:
        raise ValueError(f"pca_rgb expects features [C, H, W], got shape {tuple(features.shape)}")
    c, h, w = features.shape
    flat = features.detach().float().reshape(c, -1).T  # [HW, C]
    gen = torch.Generator().manual_seed(seed)
    sample = flat[torch.randperm(flat.shape[0], generator=gen)[:max_samples].to(flat.device)]
    mean = sample.mean(0, keepdim=True)
    k = min(3, c)
    _, _, v = torch.linalg.svd(sample - mean, full_matrices=False)
    proj = (flat - mean) @ v[:k].T  # [HW, k]
    lo = torch.quantile(proj[torch.randperm(proj.shape[0], generator=gen)[:max_samples].to(proj.device)], 0.01, dim=0)
    hi = torch.quantile(proj[torch.randperm(proj.shape[0], generator=gen)[:max_samples].to(proj.device)], 0.99, dim=0)
    proj = ((proj - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)
    if k < 3:
        proj = torch.cat([proj, proj[:, :1].expand(-1, 3 - k)], dim=1)
    return (proj.reshape(h, w, 3).cpu().numpy() * 255).round().astype(np.uint8)
