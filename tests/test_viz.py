"""featlift.viz: the PCA pictures (one basis for several maps, fixed component signs, deterministic)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featlift.errors import ConfigError
from featlift.viz import fit_pca, pca_rgb, shared_pca


def _features(seed: int = 0, channels: int = 12, size: tuple[int, int] = (40, 30)) -> torch.Tensor:
    """A map whose variance falls off across channels, so its principal components are well separated."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(channels, *size, generator=gen) * torch.linspace(4, 0.2, channels).view(-1, 1, 1)


def test_shared_pca_gives_equal_features_equal_colours_across_maps():
    gen = torch.Generator().manual_seed(0)
    big = torch.randn(16, 12, 10, generator=gen) * torch.linspace(3, 0.1, 16).view(-1, 1, 1)
    part = big[:, 2:8, 1:5]  # the same features, a crop
    other = torch.randn(16, 5, 7, generator=gen) + 2.0  # a different map, shifted away from the first
    pictures = shared_pca([big, part, other])
    assert [p.shape for p in pictures] == [(12, 10, 3), (6, 4, 3), (5, 7, 3)]
    assert all(p.dtype == np.uint8 for p in pictures)
    assert np.array_equal(pictures[1], pictures[0][2:8, 1:5])
    # Each map on its own basis would colour the crop differently: the basis really is shared.
    alone = shared_pca([part])[0]
    assert not np.array_equal(alone, pictures[0][2:8, 1:5])


def test_pca_colours_follow_the_main_directions():
    gen = torch.Generator().manual_seed(1)
    a, b, c = (torch.rand(40, 30, generator=gen) for _ in range(3))
    directions = torch.linalg.qr(torch.randn(8, 3, generator=gen))[0].T  # [3, 8] orthonormal
    features = (
        10 * a[None] * directions[0].view(-1, 1, 1)
        + 4 * b[None] * directions[1].view(-1, 1, 1)
        + 1.5 * c[None] * directions[2].view(-1, 1, 1)
        + 0.01 * torch.randn(8, 40, 30, generator=gen)
    )
    picture = shared_pca([features])[0].astype(np.float64)
    for channel, source in enumerate((a, b, c)):
        corr = np.corrcoef(picture[..., channel].ravel(), source.numpy().ravel())[0, 1]
        assert abs(corr) > 0.98, (channel, corr)


def test_pca_refuses_mixed_channels_and_bad_shapes():
    with pytest.raises(ConfigError, match="same channel count"):
        fit_pca([torch.randn(4, 3, 3), torch.randn(5, 3, 3)])
    with pytest.raises(ConfigError, match=r"\[C, H, W\]"):
        fit_pca([torch.randn(1, 4, 3, 3)])
    basis = fit_pca([torch.randn(4, 3, 3)])
    with pytest.raises(ConfigError, match="4 channels"):
        basis.project(torch.randn(5, 3, 3))


def test_pca_rgb_is_a_uint8_picture_and_the_same_for_the_same_input():
    features = _features()
    picture = pca_rgb(features)
    assert picture.shape == (40, 30, 3) and picture.dtype == np.uint8
    assert picture.std() > 20  # not a flat picture
    assert np.array_equal(picture, pca_rgb(features.clone()))
    # above max_samples the fit reads a random sample: a fixed seed keeps it deterministic
    assert np.array_equal(pca_rgb(features, max_samples=100), pca_rgb(features, max_samples=100))
    assert np.array_equal(pca_rgb(features), shared_pca([features])[0])
    assert pca_rgb(_features(channels=2)).shape == (40, 30, 3)  # fewer than three components: still RGB


def test_pca_component_signs_are_fixed():
    features = _features(1)
    basis = fit_pca([features])
    loadings = basis.components.gather(1, basis.components.abs().argmax(1, keepdim=True))
    assert (loadings > 0).all()  # each component's largest-magnitude loading is positive
    # The same features with their channels in another order: the same picture (an unfixed sign would
    # flip a colour channel wherever the eigen solver happened to return the other sign).
    order = torch.randperm(features.shape[0], generator=torch.Generator().manual_seed(2))
    shuffled = pca_rgb(features[order]).astype(int)
    assert np.abs(shuffled - pca_rgb(features).astype(int)).max() <= 1


def test_pca_rgb_reads_channels_last_maps_alike():
    features = _features(3)
    channels_last = features.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    assert not channels_last.is_contiguous()
    assert np.abs(pca_rgb(channels_last).astype(int) - pca_rgb(features).astype(int)).max() <= 1


def test_pca_rgb_refuses_other_shapes():
    with pytest.raises(ConfigError, match=r"\[C, H, W\]"):
        pca_rgb(torch.randn(1, 4, 5, 5))
    with pytest.raises(ConfigError, match="NaN"):
        pca_rgb(torch.full((4, 5, 5), float("nan")))
