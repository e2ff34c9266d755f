"""The one resolver (featlift._lookup): every accepted kind of model reference through build_upsampler,
load_upsampler and training's base; Hub repo ids from an offline cache; one UnknownModelError listing what
was tried; and the package's import seams (no private names across modules, no package-root imports)."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

import featlift
from featlift._lookup import HubFile, resolve_model
from featlift._registry import get_variant
from featlift.config import UpliftConfig
from featlift.errors import CheckpointError, UnknownModelError
from featlift.training import TrainConfig
from featlift.training.trainer import build

from .conftest import FIXTURES, TIMM_NAME, add_to_cache, run_python

SRC = Path(__file__).resolve().parents[1] / "src" / "featlift"
WEIGHTS = FIXTURES / "dinov2_s14" / "weights.safetensors"
KINDS = ["registered", "directory", "yaml", "json", "config"]


def _reference_error(model, case) -> float:
    """Largest difference from the authors' reference output (one step) for the dinov2 fixture."""
    with torch.no_grad():
        out = model(case.inputs["image"], case.inputs["features"], iters=1)
    return (out - case.outputs["iters_1"]).abs().max().item()


def _dinov2_reference(kind: str, tmp_path: Path):
    """The dinov2_s14 architecture as a reference of ``kind`` (a directory holds the fixture weights)."""
    if kind == "registered":
        return "dinov2_s14"
    if kind == "yaml":
        return FIXTURES / "dinov2_s14" / "config.yaml"
    if kind == "config":
        return get_variant("dinov2_s14").config
    if kind == "json":
        path = tmp_path / "dinov2.json"
        path.write_text(get_variant("dinov2_s14").config.to_json())
        return path
    model = featlift.build_upsampler("dinov2_s14", weights=WEIGHTS)
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_builds_the_architecture_the_weights_fit(kind, tmp_path, dinov2_case):
    ref = _dinov2_reference(kind, tmp_path)
    source = resolve_model(ref)
    assert source.kind == kind and source.config.attender == 17 and source.config.backbone.channels == 384
    # Strict loading of the authors' weights and their reference output: the architecture is the published one.
    model = featlift.build_upsampler(ref, weights=WEIGHTS)
    assert _reference_error(model, dinov2_case) <= 1e-4
    if kind == "directory":  # the directory's own weights load by default
        assert _reference_error(featlift.build_upsampler(ref), dinov2_case) <= 1e-4
        assert source.weights == tmp_path / "model" / "model.safetensors" and source.bundles_weights
    elif kind == "registered":  # the published file is named, fetched only by load_upsampler
        assert source.weights == HubFile("UPLiFT-upsampler/uplift_dinov2-s14", "uplift_dinov2-s14.safetensors")
        assert not source.bundles_weights
    else:
        assert source.weights is None


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_loads_an_upsampler(kind, tmp_path, dinov2_case, backbone_file):
    ref = _dinov2_reference(kind, tmp_path)
    weights = None if kind == "directory" else WEIGHTS
    up = featlift.load_upsampler(ref, device="cpu", weights=weights, backbone_weights=backbone_file)
    assert _reference_error(up.uplift, dinov2_case) <= 1e-4
    mean, std = up.normalisation
    assert up.backbone.normalisation == up.normalisation
    assert mean == pytest.approx((0.485, 0.456, 0.406)) and std == pytest.approx((0.229, 0.224, 0.225))
    assert up(torch.rand(3, 28, 42)).shape == (1, 384, 28, 42)


@pytest.mark.parametrize("kind", ["yaml", "json", "config"])
def test_a_config_without_weights_needs_weights_or_pretrained_false(kind, tmp_path, backbone_file):
    ref = _dinov2_reference(kind, tmp_path)
    with pytest.raises(CheckpointError, match="no UPLiFT weights.*weights=PATH.*pretrained=False"):
        featlift.load_upsampler(ref, device="cpu", backbone_weights=backbone_file)
    up = featlift.load_upsampler(ref, device="cpu", pretrained=False, backbone_weights=backbone_file)
    assert up.uplift.config.attender == 17


def _distinct_config() -> UpliftConfig:
    """dinov2_s14's layout with a 9-offset attender: a base no default could be mistaken for."""
    return dataclasses.replace(get_variant("dinov2_s14").config, attender=9, description="distinct")


def _distinct_reference(kind: str, tmp_path: Path):
    cfg = _distinct_config()
    if kind == "config":
        return cfg
    if kind == "json":
        path = tmp_path / "distinct.json"
        path.write_text(cfg.to_json())
        return str(path)
    if kind == "directory":
        featlift.UPLiFT(cfg).save_pretrained(tmp_path / "distinct")
        return str(tmp_path / "distinct")
    raw = yaml.safe_load((FIXTURES / "dinov2_s14" / "config.yaml").read_text())
    raw["uplift"]["attender"] = 9
    path = tmp_path / "distinct.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.parametrize("kind", ["yaml", "json", "directory", "config"])
def test_training_base_takes_every_kind(kind, tmp_path):
    base = _distinct_reference(kind, tmp_path)
    cfg = TrainConfig(backbone=TIMM_NAME, data=".", out=str(tmp_path / "out"), steps=1, base=base)
    _, config = build(dataclasses.replace(cfg, pretrained_backbone=False), torch.device("cpu"))
    assert config.attender == 9, "the base's architecture, not the default dinov2_s14"
    assert config.encoder == get_variant("dinov2_s14").config.encoder
    assert config.backbone.name == TIMM_NAME


def test_training_takes_a_registered_backbone_through_the_resolver(tmp_path):
    cfg = TrainConfig(backbone="dinov3_splus16", data=".", out=str(tmp_path), steps=1, pretrained_backbone=False)
    backbone, config = build(cfg, torch.device("cpu"))
    assert config.backbone.name == "vit_small_plus_patch16_dinov3.lvd1689m" and config.backbone.patch == 16
    assert backbone.patch == 16 and backbone.channels == 384


# -- Hugging Face Hub repo ids (offline cache, real download code) --------------------------------------------


def test_hub_repo_ids_through_build_load_and_training(hf_home, tmp_path, backbone_file):
    home = tmp_path / "home"
    hub = home / "hub"
    model_dir = tmp_path / "distinct"
    torch.manual_seed(5)
    featlift.UPLiFT(_distinct_config()).save_pretrained(model_dir)
    for name in ("config.json", "model.safetensors"):
        add_to_cache(hub, "me/uplift-distinct", name, model_dir / name)
    add_to_cache(hub, "me/config-only", "config.json", model_dir / "config.json")
    add_to_cache(hub, f"timm/{TIMM_NAME}", "model.safetensors", backbone_file)
    code = f"""
        import json, torch, featlift
        from safetensors.torch import load_file
        from featlift.training import TrainConfig
        from featlift.training.trainer import build
        want = load_file(r"{model_dir / "model.safetensors"}")
        same = lambda sd: sorted(want) == sorted(sd) and all(torch.equal(want[k].float(), sd[k].float()) for k in want)
        report = {{}}
        built = featlift.build_upsampler("me/uplift-distinct")
        report["build"] = same(built.state_dict()) and built.config.attender == 9
        up = featlift.load_upsampler("me/uplift-distinct", device="cpu")
        report["load"] = same(up.uplift.state_dict()) and up(torch.rand(3, 28, 28)).shape == (1, 384, 28, 28)
        random = featlift.load_upsampler("me/config-only", device="cpu", pretrained=False)
        report["config_only"] = random.uplift.config.attender == 9
        try:
            featlift.load_upsampler("me/config-only", device="cpu")
        except featlift.DownloadError as err:
            report["missing_weights"] = str(err)
        try:
            featlift.build_upsampler("me/absent")
        except featlift.DownloadError as err:
            report["absent"] = str(err)
        cfg = TrainConfig(backbone="{TIMM_NAME}", data=".", out="unused", steps=1, base="me/uplift-distinct")
        report["train_base"] = build(cfg, torch.device("cpu"))[1].attender
        print(json.dumps(report))
    """
    result = run_python(code, home)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["build"] and report["load"] and report["config_only"]
    assert "model.safetensors" in report["missing_weights"] and "me/config-only" in report["missing_weights"]
    assert "config.json" in report["absent"] and "me/absent" in report["absent"]
    assert report["train_base"] == 9


# -- nothing matches -----------------------------------------------------------------------------------------


def test_one_unknown_model_error_lists_what_was_tried_and_the_fix(tmp_path):
    with pytest.raises(UnknownModelError) as info:
        featlift.load_upsampler("resnet50", pretrained=False)
    message = str(info.value)
    assert "registered names: dinov2_s14, dinov3_splus16, sd15_vae" in message
    assert str(Path("resnet50").absolute()) in message and "does not exist" in message
    assert "not of the form org/name" in message and "Fix:" in message
    # A missing config file is reported as a path, never sent to the Hub as a repo id.
    missing = tmp_path / "configs" / "mine.yaml"
    for call in (featlift.build_upsampler, featlift.load_upsampler, resolve_model):
        with pytest.raises(UnknownModelError, match=re.escape(str(missing)) + ".*does not exist"):
            call(str(missing))
    with pytest.raises(UnknownModelError, match="looks like a file path"):
        resolve_model("configs/mine.json")
    with pytest.raises(UnknownModelError, match="unknown upsampler"):
        base = TrainConfig(backbone=TIMM_NAME, data=".", out=str(tmp_path), steps=1, base="nope")
        build(dataclasses.replace(base, pretrained_backbone=False), torch.device("cpu"))
    with pytest.raises(TypeError, match="config must be a name"):
        resolve_model(3.5)


# -- seams ---------------------------------------------------------------------------------------------------


def test_no_module_imports_a_private_name_or_the_package_root():
    """Cross-module imports use public names only (an internal ``_module`` itself may be imported), and no
    submodule imports the package root (``from . import x`` must name a submodule)."""
    offenders = []
    for path in SRC.rglob("*.py"):
        package = path.parent
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                offenders += [f"{path.name}: import {a.name}" for a in node.names if a.name == "featlift"]
            elif isinstance(node, ast.ImportFrom):
                names = [a.name for a in node.names]
                if node.level == 0 and node.module == "featlift":
                    offenders.append(f"{path.name}: from featlift import {names}")
                folder = package.parents[node.level - 2] if node.level > 1 else package
                if node.level > 0:  # a private name, unless it is a module (internal modules start with _)
                    offenders += [
                        f"{path.name}: {n} from {node.module}"
                        for n in names
                        if n.startswith("_")
                        and not n.endswith("__")
                        and not (node.module is None and (folder / f"{n}.py").is_file())
                    ]
                if node.level > 0 and node.module is None:
                    for n in names:
                        if not ((folder / f"{n}.py").is_file() or (folder / n).is_dir()):
                            offenders.append(f"{path.name}: from {'.' * node.level} import {n} (package root)")
    assert not offenders, offenders
    trainer = (SRC / "training" / "trainer.py").read_text()
    assert "pretrained_cfg" not in trainer and "import timm" not in trainer
