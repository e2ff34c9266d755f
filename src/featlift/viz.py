"""Feature visualisation: PCA pictures of feature maps (the first three principal components as RGB).

:func:`pca_rgb` draws one map; :func:`fit_pca` fits one basis for several maps (any sizes, same channels)
so that equal features get equal colours in every picture (:func:`shared_pca`). The basis comes from the
covariance of a random sample of pixels (at most ``max_samples``, a fixed ``seed``: the same input always
gives the same picture), each component's sign is fixed (its largest-magnitude loading positive), and
maps are read in strips of rows (no full-size copy, channels-last maps included).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError

__all__ = ["PcaBasis", "fit_pca", "pca_rgb", "shared_pca"]

# Rows per chunk when a whole feature map is read: bounds the temporary copies to a strip of the image.
STRIP_ROWS = 64


def check_features(features: Tensor, what: str = "features") -> None:
    """A ConfigError unless ``features`` is one image's map, a tensor [C, H, W]."""
    if not isinstance(features, Tensor) or features.dim() != 3:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ConfigError(f"{what} must be a tensor [C, H, W] (channels first, one image), got {shape}")


def _sample_pixels(features: Tensor, count: int, gen: torch.Generator) -> Tensor:
    """Up to ``count`` random pixels of [C, H, W] as float32 rows [N, C] (all pixels when there are fewer)."""
    c, h, w = features.shape
    if h * w <= count:
        return features.detach().float().reshape(c, -1).T.cpu()
    index = torch.randperm(h * w, generator=gen)[:count].to(features.device)
    # Index rows and columns rather than reshaping: no copy of a (channels-last) map.
    return features.detach()[:, index // w, index % w].float().T.cpu()


@dataclass(frozen=True)
class PcaBasis:
    """The first ``k`` (at most 3) principal directions of a feature sample and the display range of each
    component (its 1st to 99th percentile over the sample)."""

    mean: Tensor  # [C]
    components: Tensor  # [k, C], orthonormal rows
    low: Tensor  # [k]
    high: Tensor  # [k]

    def project(self, features: Tensor) -> Tensor:
        """Features [C, H, W] -> their principal components [k, H, W] (float32, on the CPU), read in strips of
        rows so that no full-size copy of the features is made."""
        check_features(features)
        if features.shape[0] != self.mean.shape[0]:
            raise ConfigError(
                f"the basis was fitted on {self.mean.shape[0]} channels, got {features.shape[0]}: project maps "
                "of the backbone the basis was fitted on"
            )
        comps = self.components.to(features.device)
        offset = (comps @ self.mean.to(features.device)).view(-1, 1, 1)
        strips = []
        for top in range(0, features.shape[1], STRIP_ROWS):
            strip = features[:, top : top + STRIP_ROWS].float()
            # [rows, W, C] @ [C, k]: a plain matrix product, no copy for channels-last maps
            strips.append((torch.matmul(strip.permute(1, 2, 0), comps.T).permute(2, 0, 1) - offset).cpu())
        return torch.cat(strips, dim=1)

    def to_rgb(self, projection: Tensor) -> np.ndarray:
        """Components [k, H, W] -> uint8 [H, W, 3]: each component scaled to its display range (the same
        range for every map projected on this basis, so colours compare across pictures)."""
        k = self.components.shape[0]
        if projection.dim() != 3 or projection.shape[0] != k:
            raise ConfigError(f"expected a projection [{k}, H, W] (from project()), got {tuple(projection.shape)}")
        low, high = self.low.view(-1, 1, 1), self.high.view(-1, 1, 1)
        scaled = ((projection.float().cpu() - low) / (high - low).clamp_min(1e-8)).clamp(0, 1)
        if k < 3:
            scaled = torch.cat([scaled, scaled[:1].expand(3 - k, -1, -1)])
        return (scaled.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

    def rgb(self, features: Tensor) -> np.ndarray:
        """Features [C, H, W] -> uint8 [H, W, 3] (:meth:`project` then :meth:`to_rgb`)."""
        return self.to_rgb(self.project(features))


def fit_pca(features: Sequence[Tensor], *, max_samples: int = 20000, seed: int = 0) -> PcaBasis:
    """One PCA basis for several feature maps [C, H, W] (same C, any sizes): fitted on a pooled sample of
    up to ``max_samples // len(features)`` random pixels from each map, so each map weighs about alike."""
    if not features:
        raise ConfigError("fit_pca needs at least one feature map [C, H, W]; pass a list of them")
    for f in features:
        check_features(f)
    channels = {f.shape[0] for f in features}
    if len(channels) != 1:
        raise ConfigError(
            f"all feature maps need the same channel count, got {sorted(channels)}: fit one basis per backbone"
        )
    gen = torch.Generator().manual_seed(seed)
    per_map = max(1, max_samples // len(features))
    sample = torch.cat([_sample_pixels(f, per_map, gen) for f in features])  # [N, C]
    if not torch.isfinite(sample).all():
        raise ConfigError(
            "the features contain NaN or infinite values; cannot fit a PCA basis (compute them in float32)"
        )
    mean = sample.mean(0)
    k = min(3, sample.shape[1])
    centred = (sample - mean).double()
    _, vectors = torch.linalg.eigh(centred.T @ centred)  # eigenvalues ascending: the last k are the main ones
    components = vectors[:, -k:].flip(1).T.float()
    # A component's sign is arbitrary; fix it (largest-magnitude loading positive) so pictures are stable.
    signs = torch.sign(components.gather(1, components.abs().argmax(1, keepdim=True)))
    components = components * torch.where(signs == 0, torch.ones_like(signs), signs)
    proj = (sample - mean) @ components.T
    low = torch.quantile(proj, 0.01, dim=0)
    high = torch.quantile(proj, 0.99, dim=0)
    return PcaBasis(mean=mean, components=components, low=low, high=high)


def shared_pca(features: Sequence[Tensor], *, max_samples: int = 20000, seed: int = 0) -> list[np.ndarray]:
    """Feature maps [C, H, W] -> one uint8 RGB picture [H, W, 3] each, all on one PCA basis and one colour
    scale (:func:`fit_pca`), so equal features get equal colours in every picture."""
    basis = fit_pca(features, max_samples=max_samples, seed=seed)
    return [basis.rgb(f) for f in features]


def pca_rgb(features: Tensor, *, max_samples: int = 20000, seed: int = 0) -> np.ndarray:
    """Features [C, H, W] -> uint8 picture [H, W, 3] of their first three principal components (fitted on
    at most ``max_samples`` random pixels, each component scaled to its 1st-99th percentile range)."""
    return fit_pca([features], max_samples=max_samples, seed=seed).rgb(features)
