"""Parity with the UPLiFT authors' implementation (stored outputs) and with an independent oracle."""

from __future__ import annotations

import copy

import pytest
import torch

import featlift
from featlift.weights import read_state_dict

from .oracle import oracle_forward

TOL = 1e-4


def _iters_of(key: str) -> int:
    return int(key.split("_")[1])


def test_fixture_parity_at_every_stored_iteration(case):
    model = featlift.build_upsampler(case.config_path, weights=case.weights_path)
    assert model.num_parameters() > 0
    with torch.no_grad():
        for key, expected in case.outputs.items():
            got = model(case.inputs["image"], case.inputs["features"], iters=_iters_of(key))
            assert got.shape == expected.shape, key
            err = (got - expected).abs().max().item()
            assert err <= TOL, f"{case.name} {key}: max abs error {err:.3g}"


@pytest.mark.parametrize("mode", ["autograd", "reference-attender"])
def test_fixture_parity_off_the_inference_path(case, mode):
    """With autograd on (no BatchNorm folding, real concatenations, no deferred map) or with the plain
    attender, the model still reproduces the authors' numbers; the lean path is checked above."""
    model = featlift.build_upsampler(case.config_path, weights=case.weights_path)
    key = max(case.outputs, key=_iters_of)
    features = case.inputs["features"].clone().requires_grad_(mode == "autograd")
    if mode == "reference-attender":
        model.attender.impl = "reference"
    with torch.set_grad_enabled(mode == "autograd"):
        got = model(case.inputs["image"], features, iters=_iters_of(key))
    assert (got.detach() - case.outputs[key]).abs().max().item() <= TOL
    if mode == "autograd":
        got.sum().backward()
        assert features.grad is not None and torch.isfinite(features.grad).all()


def test_return_steps_matches_each_stored_iteration(case):
    model = featlift.build_upsampler(case.config_path, weights=case.weights_path)
    last = max(_iters_of(k) for k in case.outputs)
    with torch.no_grad():
        steps = model(case.inputs["image"], case.inputs["features"], iters=last, return_steps=True)
    assert len(steps) == last
    for key, expected in case.outputs.items():
        assert (steps[_iters_of(key) - 1] - expected).abs().max().item() <= TOL


def test_oracle_reproduces_fixtures(case):
    """Grounds the oracle used below: it must itself match the authors' stored outputs."""
    for key, expected in case.outputs.items():
        got = oracle_forward(
            case.raw_config, case.weights, case.inputs["image"], case.inputs["features"], _iters_of(key)
        )[-1]
        assert (got - expected).abs().max().item() <= TOL


@pytest.mark.parametrize(
    ("batch", "h", "w", "iters"),
    [(1, 1, 1, 3), (3, 2, 5, 2), (2, 5, 3, 3), (1, 7, 4, 1), (1, 3, 3, 4)],
)
def test_parity_at_other_sizes_and_batches(case, batch, h, w, iters):
    patch = case.raw_config["backbone"]["patch"]
    channels = case.raw_config["backbone"]["channel"]
    gen = torch.Generator().manual_seed(batch * 100 + h * 10 + w)
    image = torch.randn(batch, 3, h * patch, w * patch, generator=gen)
    features = torch.randn(batch, channels, h, w, generator=gen)
    model = featlift.build_upsampler(case.config_path, weights=case.weights_path)
    with torch.no_grad():
        got = model(image, features, iters=iters, return_steps=True)
    expected = oracle_forward(case.raw_config, case.weights, image, features, iters)
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert g.shape == (batch, channels, h * 2 ** (i + 1), w * 2 ** (i + 1))
        assert (g - e).abs().max().item() <= TOL, f"iteration {i + 1}"


@pytest.mark.parametrize("size", [5, 9, 13, 17, 25])
@pytest.mark.parametrize("case_name", ["dinov2_s14", "vae_mini"])
def test_parity_for_every_neighbourhood(tmp_path, size, case_name):
    from .conftest import Case

    case = Case(case_name)
    raw = copy.deepcopy(case.raw_config)
    raw["uplift"]["attender"] = size
    weights = dict(case.weights)
    gen = torch.Generator().manual_seed(size)
    guide = weights["attender.conv1.weight"].shape[1]
    weights["attender.conv1.weight"] = torch.randn(size, guide, 1, 1, generator=gen)
    weights["attender.conv1.bias"] = torch.randn(size, generator=gen)

    import yaml
    from safetensors.torch import save_file

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    save_file(weights, str(tmp_path / "w.safetensors"))
    model = featlift.build_upsampler(tmp_path / "c.yaml", weights=tmp_path / "w.safetensors")
    assert model.attender.size == size
    image, features = case.inputs["image"], case.inputs["features"]
    with torch.no_grad():
        got = model(image, features, iters=2)
    expected = oracle_forward(raw, weights, image, features, 2)[-1]
    assert (got - expected).abs().max().item() <= TOL


def test_pth_checkpoint_gives_the_same_output(tmp_path, dinov2_case):
    path = tmp_path / "uplift.pth"
    torch.save(dinov2_case.weights, path)
    assert read_state_dict(path).keys() == dinov2_case.weights.keys()
    model = featlift.build_upsampler(dinov2_case.config_path, weights=path)
    with torch.no_grad():
        got = model(dinov2_case.inputs["image"], dinov2_case.inputs["features"], iters=1)
    assert (got - dinov2_case.outputs["iters_1"]).abs().max().item() <= TOL


def test_registered_names_load_published_layout(dinov2_case):
    """The registered dinov2_s14 architecture takes the published key layout unchanged."""
    model = featlift.build_upsampler("dinov2_s14", weights=dinov2_case.weights_path)
    with torch.no_grad():
        got = model(dinov2_case.inputs["image"], dinov2_case.inputs["features"], iters=4)
    assert (got - dinov2_case.outputs["iters_4"]).abs().max().item() <= TOL
