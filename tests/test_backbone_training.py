"""Training for every source, offline, on synthetic images: one tiny model per source (timm's stride-32
convolutional network, open_clip, transformers, torch.hub, a user's own module). ``config.json`` records
the source, name, stride, channels and normalisation; ``load_upsampler(dir)`` rebuilds the backbone (or is
given the user's module) and gives the trained model's output to 1e-5. The slow tier trains long enough to
beat bilinear upsampling on held-out images and runs ``featlift eval seg`` on the result."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import featlift
from featlift.backbones import UserModule, create_backbone
from featlift.training import TrainConfig, train

from . import zoo
from .configs import tiny_config
from .test_training import _shapes

IMAGE_SIZE = 64  # training crops; the stride-32 network takes 192 px (3 x 3 cells at depth 1's input)


@dataclass
class Case:
    """One source's backbone as training and loading name it."""

    spec: str | UserModule  # TrainConfig.backbone / --backbone
    source: str
    name: str  # what config.json records
    stride: int
    channels: int
    mean: tuple
    std: tuple
    weights: str | None = None  # --backbone-weights
    load: dict = field(default_factory=dict)  # extra load_upsampler keywords
    image_size: int = IMAGE_SIZE

    @property
    def options(self) -> dict:
        return {"weights": self.weights, "stride": self.stride if self.source == "timm" else None}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sources")
    _shapes(root / "images", 24, size=192)
    return root


def _case(kind: str, root: Path) -> Case:
    root.mkdir(parents=True, exist_ok=True)
    if kind == "timm":  # the stride-32 convolutional network
        torch.manual_seed(0)
        weights = root / "test_efficientnet.safetensors"
        save_file(timm.create_model("test_efficientnet").state_dict(), str(weights))
        imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        return Case(
            "timm:test_efficientnet", "timm", "test_efficientnet", 32, 64, *imagenet, str(weights), image_size=192
        )
    if kind == "open_clip":
        zoo.register_open_clip_configs(root / "open_clip")
        weights = zoo.save_open_clip_tower("featlift-test-vit", root / "open_clip.safetensors")
        stats = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
        return Case("open_clip:featlift-test-vit", "open_clip", "featlift-test-vit", 16, 32, *stats, str(weights))
    if kind == "transformers":
        folder = zoo.save_transformers_model("dinov2", root / "dinov2")
        return Case(f"transformers:{folder}", "transformers", str(folder), 14, 32, *zoo.HF_STATS, image_size=56)
    if kind == "hub":
        repo = zoo.hub_repo(root / "radio").resolve()
        identity = ((0.0,) * 3, (1.0,) * 3)
        return Case(f"hub:{repo}:radio_model,width=16", "hub", f"{repo}:radio_model,width=16", 16, 16, *identity)
    user = UserModule(
        module=zoo.TinyConvNet(), name="tiny-convnet", stride=8, channels=12, mean=(0.5,) * 3, std=(0.25,) * 3
    )
    return Case(user, "module", "tiny-convnet", 8, 12, user.mean, user.std, load={"backbone": user})


KINDS = ["timm", "open_clip", "transformers", "hub", "module"]


@pytest.fixture(scope="module", params=KINDS)
def case(request, workdir) -> Case:
    return _case(request.param, workdir / request.param)


def _train(case: Case, workdir: Path, out: Path, **changes) -> dict:
    settings = {"steps": 2, "lr": 3e-3, **changes}
    cfg = TrainConfig(
        backbone=case.spec,
        data=str(workdir / "images"),
        out=str(out),
        image_size=case.image_size,
        depths=1,
        batch_size=4,
        base=tiny_config(),
        backbone_weights=case.weights,
        stride=case.options["stride"],
        val_fraction=0.25,
        **settings,
    )
    return train(cfg)


def _check_reload(case: Case, out: Path) -> featlift.Upsampler:
    """config.json states the backbone; load_upsampler rebuilds it and gives the trained model's output."""
    recorded = json.loads((out / "config.json").read_text())["backbone"]
    assert (recorded["source"], recorded["name"]) == (case.source, case.name)
    assert (recorded["patch"], recorded["channels"]) == (case.stride, case.channels)
    assert recorded["mean"] == pytest.approx(case.mean) and recorded["std"] == pytest.approx(case.std)
    up = featlift.load_upsampler(str(out), device="cpu", backbone_weights=case.weights, **case.load)
    assert (up.backbone.source, up.backbone.name, up.patch) == (case.source, case.name, case.stride)
    # the trained network on the features of the backbone as training built it
    backbone = create_backbone(case.spec, **case.options)
    net = featlift.build_upsampler(str(out))
    image = torch.rand(1, 3, 2 * case.stride, 3 * case.stride, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        normalised = backbone.normalise(image)
        want = net(normalised, backbone(normalised))
        got = up(image, output_size="native")
    assert (
        got.shape
        == want.shape
        == (1, case.channels, 2 * net.config.resolved_guidance_patch, 3 * net.config.resolved_guidance_patch)
    )
    assert (got - want).abs().max().item() <= 1e-5
    return up


def test_training_records_the_backbone_and_the_directory_reloads(case, workdir, tmp_path):
    metrics = _train(case, workdir, tmp_path / "run")
    assert set(metrics["heldout"]) == {"depth1"}
    _check_reload(case, tmp_path / "run")


def test_a_user_module_upsampler_asks_for_its_module(workdir, tmp_path):
    case = _case("module", workdir / "module-ask")
    _train(case, workdir, tmp_path / "run")
    card = (tmp_path / "run" / "README.md").read_text()
    assert 'UserModule(module=..., name="tiny-convnet", stride=8, channels=12' in card and "backbone=mine)" in card
    with pytest.raises(featlift.ConfigError, match=r"your own module 'tiny-convnet'.*backbone=.*stride=8, channels=12"):
        featlift.load_upsampler(str(tmp_path / "run"), device="cpu")
    other = UserModule(module=zoo.TinyConvNet(), name="another", stride=8, channels=12, mean=case.mean, std=case.std)
    with pytest.raises(
        featlift.ConfigError, match="trained for your module 'tiny-convnet', but the module given is named 'another'"
    ):
        featlift.load_upsampler(str(tmp_path / "run"), device="cpu", backbone=other)
    skewed = UserModule(
        module=zoo.TinyConvNet(), name="tiny-convnet", stride=8, channels=12, mean=(0.4,) * 3, std=case.std
    )
    with pytest.raises(ValueError, match="normalises images with mean .*0.4.* implies mean .*0.5"):
        featlift.load_upsampler(str(tmp_path / "run"), device="cpu", backbone=skewed)


def test_a_stride_32_network_trains_with_five_iterations_and_the_commands_take_it(workdir, tmp_path):
    """The derived guidance patch in config.json, five iterations, and featlift upsample and the demo's
    engine on the model directory."""
    from PIL import Image
    from safetensors.torch import load_file

    from featlift.cli import main
    from featlift.demo import DemoEngine

    case = _case("timm", workdir / "timm-iters")
    run = tmp_path / "run"
    _train(case, workdir, run)
    config = json.loads((run / "config.json").read_text())
    assert config["guidance_patch"] == 32
    up = featlift.load_upsampler(str(run), device="cpu", backbone_weights=case.weights)
    assert up.iters == 5
    image = torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(3))
    want = up(image)
    assert want.shape == (1, 64, 64, 96)
    photo = tmp_path / "photo.png"
    Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy()).save(photo)
    argv = [
        "upsample",
        str(photo),
        "--model",
        str(run),
        "--backbone-weights",
        case.weights,
        "--out",
        str(tmp_path / "f"),
    ]
    assert main([*argv, "--device", "cpu", "--workers", "0"]) == 0
    saved = next(iter(load_file(str(tmp_path / "f" / "photo.png.safetensors")).values()))
    assert saved.shape[-3:] == (64, 64, 96)
    result = DemoEngine(up).upsample(photo)
    assert result.output_shape == (1, 64, 64, 96) and result.lowres_shape == (1, 64, 2, 3)


# -- the slow tier: learning, and the benchmark command ------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_voc(tmp_path_factory) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    try:
        import synthetic_eval
    finally:
        sys.path.pop(0)
    root = tmp_path_factory.mktemp("voc")
    synthetic_eval.write(root, n_train=8, n_val=4, seed=0)
    return root


@pytest.mark.slow
def test_a_short_run_beats_bilinear_and_eval_seg_runs_it(case, workdir, synthetic_voc, tmp_path):
    from featlift.cli import main
    from featlift.eval import evaluate, protocol

    out = tmp_path / "run"
    heldout = _train(case, workdir, out, steps=80)["heldout"]["depth1"]
    print(f"{case.source}: held-out {heldout}")
    assert heldout["uplift"] < heldout["bilinear"], heldout
    up = _check_reload(case, out)
    results = tmp_path / "results.json"
    settings = {"image_size": 64, "epochs": 1}
    if case.source == "module":  # Python only: the loaded upsampler and the module itself
        seg = protocol(None, "seg").with_settings(**settings)
        report = evaluate("seg", "voc", synthetic_voc, [up, "bilinear"], backbone=case.spec, protocol=seg, out=results)
    else:
        argv = ["eval", "seg", "--dataset", "voc", "--root", str(synthetic_voc), "--image-size", "64", "--epochs", "1"]
        argv += ["--upsampler", str(out), "--upsampler", "bilinear", "--backbone", case.spec, "--device", "cpu"]
        argv += ["--out", str(results)]
        if case.weights:
            argv += ["--backbone-weights", case.weights]
        if case.source == "timm":
            argv += ["--backbone-stride", str(case.stride)]
        assert main(argv) == 0
        report = json.loads(results.read_text())
    assert set(report["results"]) == {str(out), "bilinear"}
    assert all(0 <= r["miou"] <= 1 for r in report["results"].values())
