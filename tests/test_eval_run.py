"""featlift eval: the upsampler specs, the probe, and end-to-end runs on a synthetic VOC-layout dataset."""

from __future__ import annotations

import copy
import json
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from featlift import LoadOptions
from featlift.eval.probe import evaluate_probe, slug, train_probe
from featlift.eval.protocols import protocol as _protocol
from featlift.eval.upsamplers import FeatureSource, make_source

from .configs import tiny_config
from .conftest import FIXTURES, TIMM_NAME, ConvBackbone
from .test_bf16 import MAX_RELATIVE_ERROR, MIN_COSINE, agreement

SEG = _protocol(None, "seg")  # the default segmentation protocol (naf)

RANDOM = LoadOptions(pretrained=False)  # random weights everywhere, nothing downloaded


SIZE = 28  # two DINOv2 patches a side: fast on the CPU


@pytest.fixture(scope="module")
def bilinear():
    return make_source("bilinear", backbone=TIMM_NAME, options=RANDOM)


def test_interpolation_sources_upsample_the_backbone_features(bilinear):
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    feats = bilinear.features(images)
    assert feats.shape == (2, 384, SIZE, SIZE) and bilinear.channels == 384
    backbone = bilinear.backbone
    lowres = backbone(backbone.normalise(images))
    want = F.interpolate(lowres, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    assert torch.allclose(feats, want, atol=1e-5)
    nearest = make_source("nearest", backbone=TIMM_NAME, options=RANDOM)
    nearest.backbone.load_state_dict(backbone.state_dict())
    near = nearest.features(images)
    assert torch.equal(near[:, :, :14, :14], lowres[:, :, :1, :1].expand(-1, -1, 14, 14))


def test_specs_that_need_a_backbone_or_are_malformed_say_so():
    with pytest.raises(ValueError, match="name the backbone with --backbone"):
        make_source("bilinear")
    with pytest.raises(ValueError, match="expected hub:REPO:ENTRY"):
        make_source("hub:only-a-repo", backbone=TIMM_NAME, options=RANDOM)


def test_hub_spec_loads_a_local_repo_with_the_anyup_calling_convention(tmp_path, bilinear):
    """``hub:REPO:ENTRY`` through a local torch.hub checkout, called as model(image, lowres, size)."""
    repo = tmp_path / "myup"
    repo.mkdir()
    (repo / "hubconf.py").write_text(
        textwrap.dedent(
            """
            import torch.nn.functional as F
            from torch import nn

            dependencies = ["torch"]


            class Doubling(nn.Module):
                def forward(self, image, lowres, output_size):
                    assert image.shape[-2:] == (28, 28)
                    return 2 * F.interpolate(lowres, size=output_size, mode="bilinear", align_corners=False)


            def doubling(**kwargs):
                return Doubling()
            """
        )
    )
    source = make_source(f"hub:{repo}:doubling", backbone=TIMM_NAME, options=RANDOM)
    source.backbone.load_state_dict(bilinear.backbone.state_dict())
    images = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(source.features(images), 2 * bilinear.features(images), atol=1e-5)


def test_a_callable_is_an_upsampler_and_a_wrong_output_is_refused(bilinear):
    def half(image, lowres, size):
        return F.interpolate(lowres, size=size, mode="bilinear", align_corners=False) / 2

    source = make_source(half, backbone=TIMM_NAME, options=RANDOM)
    source.backbone.load_state_dict(bilinear.backbone.state_dict())
    images = torch.rand(1, 3, SIZE, SIZE)
    assert source.name == "half"
    assert torch.allclose(source.features(images), bilinear.features(images) / 2, atol=1e-5)
    with pytest.raises(ValueError, match="returned .* it must be called as f\\(image, lowres, \\(H, W\\)\\)"):
        make_source(lambda image, lowres, size: lowres, backbone=TIMM_NAME, options=RANDOM, name="broken")


def test_featlift_models_are_sources_and_run_the_probe_per_tile():
    source = make_source("dinov2_s14", options=RANDOM, tile=1)
    images = torch.rand(1, 3, 56, 42, generator=torch.Generator().manual_seed(2))
    feats = source.features(images)
    assert feats.shape == (1, 384, 56, 42) and not feats.is_inference()
    head = torch.nn.Conv2d(384, 5, 1)
    with torch.no_grad():
        want = head(feats)
    got = source.predict(images, head)
    assert got.shape == (1, 5, 56, 42)
    assert (got - want).abs().max().item() <= 1e-3 * max(1.0, want.abs().max().item())


class _Colours(FeatureSource):
    """Features = the pixel colour itself (3 channels): a probe can separate colour-coded classes."""

    name, channels, device = "colours", 3, torch.device("cpu")

    def features(self, images):
        return images.float()


class _Squares(torch.utils.data.Dataset):
    """Images whose class is coded by colour: red squares (1) and blue squares (2) on grey (0)."""

    num_classes, ignore_index, class_names, task = 3, 255, ["background", "red", "blue"], "seg"

    def __init__(self, n: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            image = torch.full((3, 16, 16), 0.5)
            label = torch.zeros(16, 16, dtype=torch.int64)
            for cls, colour in ((1, (1.0, 0.1, 0.1)), (2, (0.1, 0.1, 1.0))):
                y, x = (int(v) for v in torch.randint(0, 10, (2,), generator=gen))
                image[:, y : y + 6, x : x + 6] = torch.tensor(colour).view(3, 1, 1)
                label[y : y + 6, x : x + 6] = cls
            label[0, 0] = 255
            self.items.append({"image": image, "label": label, "id": f"img{i}"})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_the_probe_learns_colour_coded_classes_and_saves_recomputable_predictions(tmp_path):
    from featlift.eval.metrics import SegmentationMetric

    source = _Colours()
    config = SEG.with_settings(epochs=30, lr=5e-2, batch_size=4)
    probe = train_probe(source, _Squares(12, 0), task="seg", outputs=3, protocol=config)
    val = _Squares(4, 1)
    metric = SegmentationMetric(3, 255, val.class_names)
    result, kept = evaluate_probe(
        source, probe, val, task="seg", metric=metric, protocol=config, save_dir=tmp_path, keep=2
    )
    assert result["miou"] > 0.9 and len(kept) == 2
    # the reported figure is recomputable from the written files (255 = ignored)
    confusion = np.zeros((3, 3), dtype=np.int64)
    for item in val.items:
        pred = np.array(Image.open(tmp_path / "colours" / f"{item['id']}.png"))
        target = np.array(Image.open(tmp_path / "target" / f"{item['id']}.png"))
        assert target[0, 0] == 255
        keep = target != 255
        np.add.at(confusion, (target[keep], pred[keep]), 1)
    tp = np.diag(confusion)
    iou = tp / (confusion.sum(0) + confusion.sum(1) - tp)
    assert abs(iou.mean() - result["miou"]) < 1e-9


def test_probe_runs_are_reproducible_from_the_seed():
    source, config = _Colours(), SEG.with_settings(epochs=2, lr=1e-2, batch_size=3, seed=4)
    a = train_probe(source, _Squares(6, 0), task="seg", outputs=3, protocol=config)
    b = train_probe(source, _Squares(6, 0), task="seg", outputs=3, protocol=config)
    assert torch.equal(a.weight, b.weight)


def test_slug_makes_one_folder_name():
    assert slug("hub:./repos/anyup:anyup") == "hub_._repos_anyup_anyup"
    assert slug("org/model") == "org_model"


@pytest.fixture(scope="module")
def synthetic_voc(tmp_path_factory):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    try:
        import synthetic_eval
    finally:
        sys.path.pop(0)
    root = tmp_path_factory.mktemp("synth")
    synthetic_eval.write(root, n_train=8, n_val=4, seed=0)
    return root


def test_featlift_eval_seg_end_to_end_on_a_synthetic_voc_layout(synthetic_voc, tmp_path, capsys):
    """The command line: two upsamplers side by side, the JSON report, the predictions (the reported mIoU
    recomputed from them), the picture, and a probe that beats a random guess."""
    from featlift.cli import main
    from featlift.eval.datasets import make_dataset

    out = tmp_path / "results.json"
    preds = tmp_path / "preds"
    argv = ["eval", "seg", "--dataset", "voc", "--root", str(synthetic_voc), "--image-size", "56"]
    argv += ["--upsampler", "bilinear", "--upsampler", "nearest", "--backbone", TIMM_NAME, "--no-pretrained"]
    argv += ["--epochs", "4", "--lr", "1e-2", "--device", "cpu", "--out", str(out), "--save-predictions", str(preds)]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "mIoU (%)" in table and "bilinear" in table and "nearest" in table
    report = json.loads(out.read_text())
    assert report["task"] == "seg" and report["dataset"] == "voc"
    settings = report["protocol"]["settings"]
    assert settings["epochs"] == {"value": 4, "source": "set by the user"} and settings["image_size"]["value"] == 56
    assert report["protocol"]["name"] == "naf" and settings["weight_decay"]["value"] == 1e-5
    assert settings["flip"]["source"].startswith("PaulCouairon/JAFAR@94d4d54")
    assert set(report["results"]) == {"bilinear", "nearest"}
    assert out.with_suffix(".png").is_file()

    val = make_dataset("voc", synthetic_voc, "val", 56)
    targets = {item: np.array(Image.open(preds / "target" / f"{item}.png")) for item in val.ids}
    for i, item in enumerate(val.ids):
        assert np.array_equal(targets[item], val[i]["label"].numpy())
    rng = np.random.default_rng(0)
    for name, result in report["results"].items():
        assert list(result["iou"]) == val.class_names
        confusion = np.zeros((21, 21), dtype=np.int64)
        guess = np.zeros((21, 21), dtype=np.int64)
        for item, target in targets.items():
            pred = np.array(Image.open(preds / name / f"{item}.png"))
            keep = target != 255
            np.add.at(confusion, (target[keep], pred[keep]), 1)
            np.add.at(guess, (target[keep], rng.integers(0, 5, size=int(keep.sum()))), 1)
        tp, union = np.diag(confusion), confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
        assert abs((tp[union > 0] / union[union > 0]).mean() - result["miou"]) < 1e-9
        for k, class_name in enumerate(val.class_names):  # classes absent from labels and predictions: None
            assert (result["iou"][class_name] is None) == (union[k] == 0)
        g_tp, g_union = np.diag(guess), guess.sum(0) + guess.sum(1) - np.diag(guess)
        chance = (g_tp[g_union > 0] / g_union[g_union > 0]).mean()
        assert result["miou"] > 1.5 * chance, (name, result["miou"], chance)


def test_eval_computes_featlift_models_in_the_dtype_asked_and_the_report_says_so(
    synthetic_voc, tmp_path, backbone_file, attended, capsys
):
    """--dtype bfloat16: the featlift model's attender runs in bfloat16, tiled too (the probe applied per
    tile in float32), and the report records the dtype asked for and what the upsampler computed in; its
    probes are not resumed in float32. A bfloat16 source's features (float32 for the probe) agree with
    float32's without being them."""
    import featlift
    from featlift.cli import main

    weights = FIXTURES / "dinov2_s14"
    model = tmp_path / "model"
    featlift.build_upsampler(weights / "config.yaml", weights=weights / "weights.safetensors").save_pretrained(model)
    out = tmp_path / "results.json"
    argv = ["eval", "seg", "--dataset", "voc", "--root", str(synthetic_voc), "--image-size", str(SIZE), "--tile", "1"]
    argv += ["--upsampler", str(model), "--epochs", "1", "--max-train", "2", "--max-val", "1", "--device", "cpu"]
    argv += ["--backbone-weights", str(backbone_file), "--out", str(out)]
    assert main([*argv, "--dtype", "bfloat16"]) == 0
    # 4 tiles of 4 steps, for the training batch (2 images) and the validation image
    assert len(attended) == 4 * 4 * 2 and set(attended) == {(torch.bfloat16,) * 3}
    report = json.loads(out.read_text())
    assert report["protocol"]["dtype"] == "bfloat16" and report["results"][str(model)]["compute_dtype"] == "bfloat16"
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 1  # float32 now: refused before any work
    assert "other settings {'dtype': ('bfloat16', 'float32')}" in capsys.readouterr().err

    full = make_source(str(model), options=LoadOptions(backbone_weights=backbone_file))
    half = make_source(copy.deepcopy(full.up).to(torch.bfloat16))
    image = torch.rand(1, 3, SIZE, 42, generator=torch.Generator().manual_seed(0))
    want, got = full.features(image), half.features(image)
    assert (full.compute_dtype, half.compute_dtype) == ("float32", "bfloat16")
    assert got.dtype == torch.float32 and not torch.equal(got, want)
    cosine, relative = agreement(got, want)
    assert cosine >= MIN_COSINE and relative <= MAX_RELATIVE_ERROR, (cosine, relative)


def test_sources_say_what_they_compute_in_and_a_loaded_upsampler_keeps_its_dtype(caplog):
    import featlift

    assert make_source("bilinear", backbone=ConvBackbone()).compute_dtype == "float32"
    up = featlift.Upsampler(ConvBackbone(), featlift.UPLiFT(tiny_config()).eval(), name="tiny")
    with caplog.at_level("WARNING", logger="featlift.eval.upsamplers"):
        source = make_source(up, dtype=torch.bfloat16)
    assert source.compute_dtype == "float32" and up.dtype == torch.float32
    assert "'tiny' computes in torch.float32, as it was loaded; dtype=torch.bfloat16 applies" in caplog.text


def _write_davis(root, frames: int = 5, size=(48, 72)):
    """One sequence: a red square moving right over a grey, noisy background (object 1)."""
    base = root / "DAVIS"
    (base / "ImageSets" / "2017").mkdir(parents=True)
    (base / "ImageSets" / "2017" / "val.txt").write_text("square\n")
    rng = np.random.default_rng(0)
    for t in range(frames):
        image = rng.normal(128, 10, size=(*size, 3)).clip(0, 255).astype(np.uint8)
        mask = np.zeros(size, dtype=np.uint8)
        y, x = 14, 8 + 6 * t
        image[y : y + 16, x : x + 16] = (230, 30, 30)
        mask[y : y + 16, x : x + 16] = 1
        for sub, data in (("JPEGImages", image), ("Annotations", mask)):
            folder = base / sub / "480p" / "square"
            folder.mkdir(parents=True, exist_ok=True)
            if sub == "JPEGImages":
                Image.fromarray(data).save(folder / f"{t:05d}.jpg", quality=98)
            else:
                png = Image.fromarray(data, mode="L").convert("P")
                png.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
                png.save(folder / f"{t:05d}.png")
    return root


def test_video_propagation_follows_an_object_with_colour_features(tmp_path, capsys):
    from featlift.cli import main
    from featlift.eval.protocols import protocol
    from featlift.eval.run import format_table
    from featlift.eval.video import evaluate_video

    root = _write_davis(tmp_path / "davis")

    def colours(image, lowres, size):  # features = the (normalised) pixel colour: objects are colours here
        return F.interpolate(image, size=size, mode="bilinear", align_corners=False)

    settings = protocol(None, "video").with_settings(image_size=48, stride=2, radius=24)  # 24 x 36 grid
    report = evaluate_video("davis", root, [colours], backbone=TIMM_NAME, options=RANDOM, protocol=settings)
    result = report["results"]["colours"]
    assert result["jf_mean"] > 0.8 and set(result["sequences"]) == {"square"} and set(result["objects"]) == {"square_1"}
    assert result["jf_mean"] == pytest.approx((result["j_mean"] + result["f_mean"]) / 2)
    assert report["protocol"]["objects"] == 1 and report["protocol"]["settings"]["radius"]["value"] == 24
    assert "J&F (%)" in format_table(report)
    out = tmp_path / "video.json"
    argv = ["eval", "video", "--dataset", "davis", "--root", str(root), "--upsampler", "bilinear"]
    argv += ["--backbone", TIMM_NAME, "--no-pretrained", "--image-size", "28", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    saved = json.loads(out.read_text())
    assert saved["task"] == "video" and 0.0 <= saved["results"]["bilinear"]["jf_mean"] <= 1.0
    assert set(saved["results"]["bilinear"]["objects"]) == {"square_1"}
    assert "bilinear" in capsys.readouterr().out


def test_depth_probe_end_to_end_on_the_nyuv2_folder_layout(tmp_path):
    """Depth is brightness here (near = bright): the probe must beat predicting the mean depth."""
    from featlift.eval.run import evaluate, format_table

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 3)):
        for sub in ("rgb", "depth"):
            (tmp_path / "nyuv2" / split / sub).mkdir(parents=True)
        for i in range(n):
            depth_m = rng.uniform(1.0, 4.0, size=(4, 4)).repeat(8, 0).repeat(8, 1)
            grey = (255 * (4.0 - depth_m) / 3.0).astype(np.uint8)
            Image.fromarray(np.stack([grey] * 3, axis=2)).save(tmp_path / "nyuv2" / split / "rgb" / f"{i}.png")
            Image.fromarray((depth_m * 1000).astype(np.uint16)).save(tmp_path / "nyuv2" / split / "depth" / f"{i}.png")

    def brightness(image, lowres, size):
        return F.interpolate(image, size=size, mode="bilinear", align_corners=False)

    config = _protocol(None, "depth").with_settings(epochs=60, lr=5e-2, batch_size=3, image_size=28)
    report = evaluate("depth", "nyuv2", tmp_path, [brightness], backbone=TIMM_NAME, options=RANDOM, protocol=config)
    result = report["results"]["brightness"]
    assert set(result) >= {"rmse", "abs_rel", "d1", "d2", "d3", "rmse_aligned", "d1_aligned"}
    assert result["rmse"] < 0.5 and result["d1"] > 0.8  # the mean-depth guess has an RMSE near 0.87
    assert report["protocol"]["name"] == "probe3d"
    assert report["protocol"]["settings"]["lr"] == {"value": 5e-2, "source": "set by the user"}
    assert report["protocol"]["settings"]["bins"]["source"].startswith("mbanani/probe3d")
    assert "RMSE" in format_table(report)


def test_an_upsampler_named_twice_is_refused_before_any_work(monkeypatch):
    from featlift.eval import _common

    monkeypatch.setattr(_common, "make_source", lambda *a, **k: pytest.fail("a source was built"))
    with pytest.raises(ValueError, match=r"\['bilinear'\] named twice"):
        next(_common.make_sources(["bilinear", "nearest", "bilinear"], {}))
