"""build_upsampler and weight files: every config form, strict loading, featlift's format (atomic saves,
directories without weights), bad files."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
from safetensors.torch import save_file

import featlift
from featlift._authors import convert_state_dict, read_yaml
from featlift._registry import get_variant
from featlift.config import UpliftConfig
from featlift.errors import CheckpointError, UnknownModelError
from featlift.weights import read_state_dict


def _run(model, case, iters=1):
    with torch.no_grad():
        return model(case.inputs["image"], case.inputs["features"], iters=iters)


def test_every_config_form_gives_the_same_model(tmp_path, dinov2_case):
    from_authors_yaml = featlift.build_upsampler(dinov2_case.config_path, weights=dinov2_case.weights_path)
    from_name = featlift.build_upsampler("dinov2_s14", weights=dinov2_case.weights_path)
    from_obj = featlift.build_upsampler(get_variant("dinov2_s14").config, weights=dinov2_case.weights_path)
    from_authors_yaml.save_pretrained(tmp_path / "model")
    from_dir = featlift.build_upsampler(tmp_path / "model")
    outputs = [_run(m, dinov2_case) for m in (from_authors_yaml, from_name, from_obj, from_dir)]
    for out in outputs[1:]:
        assert torch.equal(out, outputs[0])
    assert not from_dir.training


def test_save_and_load_round_trip_exactly(tmp_path, case):
    model = featlift.build_upsampler(case.config_path, weights=case.weights_path)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    again = featlift.build_upsampler(str(tmp_path))
    assert again.config == model.config
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert torch.equal(_run(model, case), _run(again, case))


def test_config_json_beside_foreign_weights(tmp_path, dinov2_case):
    featlift.build_upsampler("dinov2_s14").save_pretrained(tmp_path)
    model = featlift.build_upsampler(tmp_path / "config.json", weights=dinov2_case.weights_path)
    assert (_run(model, dinov2_case) - dinov2_case.outputs["iters_1"]).abs().max() <= 1e-4


def test_num_batches_tracked_is_optional(tmp_path, dinov2_case):
    weights = {k: v for k, v in dinov2_case.weights.items() if not k.endswith("num_batches_tracked")}
    assert len(weights) < len(dinov2_case.weights)
    save_file(weights, str(tmp_path / "w.safetensors"))
    model = featlift.build_upsampler("dinov2_s14", weights=tmp_path / "w.safetensors")
    assert (_run(model, dinov2_case) - dinov2_case.outputs["iters_1"]).abs().max() <= 1e-4


def test_converted_keys_cover_the_model_exactly(case):
    model = featlift.UPLiFT(read_yaml(case.config_path))
    converted = convert_state_dict(case.weights, model.config)
    assert converted.keys() == model.state_dict().keys()
    assert all(converted[k].shape == v.shape for k, v in model.state_dict().items())


def test_missing_tensor_is_listed_with_its_shape(tmp_path, dinov2_case):
    weights = dict(dinov2_case.weights)
    del weights["decoder.block_1.blocks.0.conv.3.weight"]
    save_file(weights, str(tmp_path / "w.safetensors"))
    with pytest.raises(
        CheckpointError,
        match=r"(?s)1 missing tensor.*decoder_step\.stages\.0\.blocks\.0\.conv2\.weight \(64, 64, 3, 3\)",
    ) as info:
        featlift.build_upsampler("dinov2_s14", weights=tmp_path / "w.safetensors")
    assert "does not match the model's config" in str(info.value)


def test_unexpected_tensor_is_listed(tmp_path, dinov2_case):
    weights = dict(dinov2_case.weights)
    weights["decoder.extra.weight"] = torch.zeros(3, 2)
    save_file(weights, str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match=r"(?s)1 unexpected tensor.*decoder\.extra\.weight \(3, 2\)"):
        featlift.build_upsampler("dinov2_s14", weights=tmp_path / "w.safetensors")


def test_weights_for_another_config_are_rejected(dinov2_case, vae_case):
    with pytest.raises(CheckpointError, match="does not match the model's config"):
        featlift.build_upsampler(vae_case.config_path, weights=dinov2_case.weights_path)


def test_wrong_neighbourhood_reports_the_shape_mismatch(tmp_path, dinov2_case):
    text = dinov2_case.config_path.read_text().replace("attender: 17", "attender: 9")
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(
        CheckpointError, match=r"attender\.to_logits\.weight: checkpoint \(17, 64, 1, 1\), model \(9, 64, 1, 1\)"
    ):
        featlift.build_upsampler(tmp_path / "c.yaml", weights=dinov2_case.weights_path)


def test_wrapped_and_ddp_prefixed_checkpoints(tmp_path, dinov2_case):
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in dinov2_case.weights.items()}, "epoch": 3}, tmp_path / "w.pth"
    )
    model = featlift.build_upsampler("dinov2_s14", weights=tmp_path / "w.pth")
    assert (_run(model, dinov2_case) - dinov2_case.outputs["iters_1"]).abs().max() <= 1e-4


def test_corrupt_files(tmp_path, dinov2_case):
    data = dinov2_case.weights_path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        featlift.build_upsampler("dinov2_s14", weights=tmp_path / "cut.safetensors")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        read_state_dict(tmp_path / "junk.pth")
    torch.save({"w": torch.zeros(2), "opt": object.__new__(_Opaque)}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        read_state_dict(tmp_path / "pickled.pth")
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"expected \.safetensors, \.pth, \.pt or \.pth\.tar"):
        read_state_dict(tmp_path / "w.npz")
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        read_state_dict(tmp_path / "absent.safetensors")


class _Opaque:
    pass


def test_non_finite_weights_are_rejected(tmp_path, dinov2_case):
    weights = dict(dinov2_case.weights)
    weights["attender.conv1.bias"] = torch.full((17,), float("nan"))
    save_file(weights, str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match="non-finite"):
        featlift.build_upsampler("dinov2_s14", weights=tmp_path / "w.safetensors")


def test_unknown_names_and_paths(tmp_path):
    with pytest.raises(UnknownModelError, match="registered names: dinov2_s14, dinov3_splus16, sd15_vae"):
        featlift.build_upsampler("dinov2_g14")
    with pytest.raises(CheckpointError, match="has no config.json"):
        featlift.build_upsampler(tmp_path)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(UnknownModelError, match="not a config file"):
        featlift.build_upsampler(tmp_path / "notes.txt")
    with pytest.raises(TypeError, match="config must be a name"):
        featlift.build_upsampler(17)


def test_dtype_and_device_arguments(dinov2_case):
    model = featlift.build_upsampler("dinov2_s14", weights=dinov2_case.weights_path, dtype=torch.float64, device="cpu")
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert (_run(model, dinov2_case).float() - dinov2_case.outputs["iters_1"]).abs().max() <= 1e-4
    with pytest.raises(TypeError, match="floating-point"):
        featlift.build_upsampler("dinov2_s14", dtype=torch.int32)


# -- save_pretrained writes atomically ---------------------------------------------------------------------


def _entries(folder):
    return sorted(p.name for p in folder.iterdir())


def test_interrupted_weights_save_leaves_the_previous_directory_intact(tmp_path, monkeypatch, dinov2_case):
    old = featlift.build_upsampler("dinov2_s14", weights=dinov2_case.weights_path)
    old.save_pretrained(tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in _entries(tmp_path)}

    def dies_halfway(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\x00" * 100)  # a torn write, then the process is interrupted
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        featlift.build_upsampler("dinov2_s14").save_pretrained(tmp_path)
    assert _entries(tmp_path) == ["config.json", "model.safetensors"], "no torn or temporary file is left"
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    monkeypatch.undo()
    again = featlift.build_upsampler(tmp_path)
    assert torch.equal(again.state_dict()["attender.to_logits.weight"], old.state_dict()["attender.to_logits.weight"])


def test_interrupted_config_save_leaves_the_previous_config(tmp_path, monkeypatch):
    featlift.build_upsampler("dinov2_s14").save_pretrained(tmp_path)
    before = (tmp_path / "config.json").read_text()

    def dies_halfway(self, path=None):
        with open(path, "w") as handle:
            handle.write('{"backbone": ')
        raise OSError("disk full")

    monkeypatch.setattr(UpliftConfig, "to_json", dies_halfway)
    with pytest.raises(OSError, match="disk full"):
        featlift.build_upsampler("dinov2_s14").save_pretrained(tmp_path)
    assert (tmp_path / "config.json").read_text() == before
    assert _entries(tmp_path) == ["config.json", "model.safetensors"]


def test_save_into_a_fresh_directory_that_fails_leaves_no_config(tmp_path, monkeypatch):
    """Weights are written first: a failed save never leaves a config.json without its weights."""

    def fails(tensors, filename, metadata=None):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", fails)
    with pytest.raises(OSError, match="disk full"):
        featlift.build_upsampler("dinov2_s14").save_pretrained(tmp_path / "new")
    assert _entries(tmp_path / "new") == []


# -- load_upsampler on a directory: pretrained=True needs its weights, pretrained=False does not ---------------


@pytest.fixture
def config_only_dir(tmp_path):
    featlift.build_upsampler("dinov2_s14").save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    return tmp_path


def test_directory_without_weights_and_pretrained_names_the_file_and_the_fixes(config_only_dir):
    with pytest.raises(CheckpointError) as info:
        featlift.load_upsampler(config_only_dir, device="cpu")
    message = str(info.value)
    assert str(config_only_dir / "model.safetensors") in message and "is missing" in message
    assert "pretrained=False" in message and "weights=PATH" in message


def test_directory_without_weights_and_not_pretrained_gives_random_weights(config_only_dir, dinov2_case):
    torch.manual_seed(5)
    up = featlift.load_upsampler(config_only_dir, pretrained=False, device="cpu")
    torch.manual_seed(5)
    fresh = featlift.build_upsampler(config_only_dir / "config.json")
    got, want = up.uplift.state_dict(), fresh.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), (
        "random init, as build_upsampler"
    )
    assert up(torch.rand(3, 28, 28)).shape == (1, 384, 28, 28)
    # Explicit weights still load with pretrained=False.
    loaded = featlift.load_upsampler(config_only_dir, pretrained=False, weights=dinov2_case.weights_path, device="cpu")
    reference = featlift.build_upsampler("dinov2_s14", weights=dinov2_case.weights_path).state_dict()
    assert torch.equal(loaded.uplift.state_dict()["attender.to_logits.weight"], reference["attender.to_logits.weight"])


def test_not_pretrained_ignores_the_directorys_weights(tmp_path, dinov2_case):
    """pretrained=False: random weights for everything not passed explicitly, model.safetensors included."""
    featlift.build_upsampler("dinov2_s14", weights=dinov2_case.weights_path).save_pretrained(tmp_path)
    saved = featlift.build_upsampler(tmp_path).state_dict()["attender.to_logits.weight"]
    up = featlift.load_upsampler(tmp_path, pretrained=False, device="cpu")
    assert not torch.equal(up.uplift.state_dict()["attender.to_logits.weight"], saved)
