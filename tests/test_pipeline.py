"""load_upsampler end to end: offline Hub cache, torch.hub, CLI, input kinds, output sizes, VAE path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

import featlift
from featlift.backbones import TimmViT
from featlift.errors import MissingDependencyError, UnknownModelError

from .conftest import FIXTURES

REPO = Path(__file__).resolve().parents[1]
TIMM_NAME = "vit_small_patch14_dinov2.lvd142m"


@pytest.fixture(scope="session")
def backbone_file(tmp_path_factory) -> Path:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(TIMM_NAME, pretrained=False)
    path = tmp_path_factory.mktemp("backbone") / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _add_to_cache(hub: Path, repo: str, filename: str, source: Path) -> None:
    folder = hub / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    target = folder / "snapshots" / commit / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, target)


@pytest.fixture(scope="session")
def hf_home(tmp_path_factory, backbone_file) -> Path:
    """An offline Hugging Face cache holding the published dinov2 file names (fixture / random weights)."""
    home = tmp_path_factory.mktemp("hf_home")
    hub = home / "hub"
    _add_to_cache(
        hub,
        "UPLiFT-upsampler/uplift_dinov2-s14",
        "uplift_dinov2-s14.safetensors",
        FIXTURES / "dinov2_s14" / "weights.safetensors",
    )
    _add_to_cache(hub, f"timm/{TIMM_NAME}", "model.safetensors", backbone_file)
    return home


def _run_python(code: str, hf_home: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def test_load_upsampler_from_offline_cache_matches_the_hand_composed_chain(hf_home, backbone_file):
    code = f"""
        import json, torch, timm, featlift
        up = featlift.load_upsampler("dinov2_s14", device="cpu")
        assert not up.training and not any(p.requires_grad for p in up.parameters())
        image = torch.rand(1, 3, 56, 70, generator=torch.Generator().manual_seed(1))
        feats, low = up(image, output_size="native", return_lowres=True)

        bb = timm.create_model("{TIMM_NAME}", pretrained=True, pretrained_cfg_overlay={{"file": r"{backbone_file}"}}, dynamic_img_size=True).eval()
        norm = (image - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        with torch.no_grad():
            lowres = bb.forward_intermediates(norm, indices=1, norm=True, output_fmt="NCHW", intermediates_only=True)[0]
            uplift = featlift.build_upsampler(r"{FIXTURES / "dinov2_s14" / "config.yaml"}", weights=r"{FIXTURES / "dinov2_s14" / "weights.safetensors"}")
            expected = uplift(norm, lowres, iters=4)
        hub = torch.hub.load(r"{REPO}", "dinov2_s14", source="local", device="cpu")
        via_hub = hub(image, output_size="native")
        print(json.dumps({{
            "shape": list(feats.shape), "low": list(low.shape),
            "low_err": (low - lowres).abs().max().item(),
            "err": (feats - expected).abs().max().item(),
            "hub_err": (via_hub - expected).abs().max().item(),
        }}))
    """
    result = _run_python(code, hf_home)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["shape"] == [1, 384, 64, 80] and data["low"] == [1, 384, 4, 5]
    assert data["low_err"] <= 1e-4
    assert data["err"] <= 1e-3
    assert data["hub_err"] <= 1e-3


def test_offline_without_cache_names_repo_file_and_fixes(tmp_path):
    code = """
        import featlift
        try:
            featlift.load_upsampler("dinov2_s14", device="cpu")
        except featlift.DownloadError as err:
            print("ERROR:", err)
    """
    result = _run_python(code, tmp_path / "empty_home")
    assert result.returncode == 0, result.stderr[-3000:]
    message = result.stdout
    assert "UPLiFT-upsampler/uplift_dinov2-s14" in message and "uplift_dinov2-s14.safetensors" in message
    assert "HF_HUB_OFFLINE" in message and "weights=PATH" in message


def test_cli_writes_features_and_pca_and_skips_bad_files(hf_home, tmp_path):
    images = tmp_path / "images"
    (images / "nested").mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(images / "a.png")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 30), dtype=np.uint8)).save(
        images / "nested" / "b.jpg"
    )
    (images / "broken.png").write_bytes(b"not an image")
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "featlift.cli"]
    result = subprocess.run([*cli, "models"], capture_output=True, text=True, env=env)
    assert result.returncode == 0 and "dinov2_s14" in result.stdout and "sd15_vae" in result.stdout
    out = tmp_path / "out"
    result = subprocess.run(
        [*cli, "upsample", str(images), "--model", "dinov2_s14", "--out", str(out), "--pca", "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped" in result.stderr and "broken.png" in result.stderr
    from safetensors.torch import load_file

    assert load_file(str(out / "a.safetensors"))["features"].shape == (384, 40, 50)
    assert load_file(str(out / "b.safetensors"))["features"].shape == (384, 30, 30)
    assert Image.open(out / "a_pca.png").size == (50, 40)
    result = subprocess.run(
        [*cli, "upsample", str(images / "a.png"), "--out", str(out), "--size", "native"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    native = load_file(str(out / "a.safetensors"))["features"]
    assert native.shape == (384, 48, 64)
    tiled_out = tmp_path / "tiled"
    result = subprocess.run(
        [*cli, "upsample", str(images / "a.png"), "--out", str(tiled_out), "--size", "native", "--tile", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (load_file(str(tiled_out / "a.safetensors"))["features"] - native).abs().max().item() <= 1e-4


# -- in-process: local weights, no Hub access ---------------------------------------------------------


@pytest.fixture(scope="module")
def upsampler(backbone_file):
    return featlift.load_upsampler(
        "dinov2_s14",
        device="cpu",
        weights=FIXTURES / "dinov2_s14" / "weights.safetensors",
        backbone_weights=backbone_file,
    )


def test_input_kinds_agree(upsampler):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 255, (42, 56, 3), dtype=np.uint8)
    tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    from_pil = upsampler(Image.fromarray(array))
    from_rgba = upsampler(Image.fromarray(array).convert("RGBA"))
    from_array = upsampler(array)
    from_tensor = upsampler(tensor)
    from_batch = upsampler(tensor[None])
    assert from_pil.shape == (1, 384, 42, 56)
    for other in (from_rgba, from_array, from_tensor, from_batch):
        assert torch.allclose(other, from_pil, atol=1e-5)


def test_output_size_rules(upsampler):
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 255, (37, 50, 3), dtype=np.uint8))  # W=50, H=37: not patch multiples
    assert upsampler(img).shape == (1, 384, 37, 50)
    native, low = upsampler(img, output_size="native", return_lowres=True)
    assert low.shape == (1, 384, 3, 4) and native.shape == (1, 384, 48, 64)
    assert upsampler(img, output_size=(20, 30)).shape == (1, 384, 20, 30)
    with pytest.raises(ValueError, match="output_size must be"):
        upsampler(img, output_size="big")


def test_lists_batch_same_sizes_and_split_different_sizes(upsampler):
    rng = np.random.default_rng(2)
    a, b = (Image.fromarray(rng.integers(0, 255, (28, 42, 3), dtype=np.uint8)) for _ in range(2))
    c = Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8))
    batch = upsampler([a, b])
    assert isinstance(batch, torch.Tensor) and batch.shape == (2, 384, 28, 42)
    assert torch.allclose(batch[1:], upsampler(b), atol=1e-5)
    mixed, lows = upsampler([a, c], return_lowres=True)
    assert isinstance(mixed, list) and [tuple(m.shape) for m in mixed] == [(1, 384, 28, 42), (1, 384, 30, 30)]
    assert [tuple(lo.shape) for lo in lows] == [(1, 384, 2, 3), (1, 384, 2, 2)]


def test_bad_images_raise_clear_errors(upsampler):
    with pytest.raises(TypeError, match="unsupported image type str"):
        upsampler("cat.jpg")
    with pytest.raises(ValueError, match="uint8"):
        upsampler(np.zeros((28, 28, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="\\[3, H, W\\]"):
        upsampler(torch.rand(4, 28, 28))
    with pytest.raises(ValueError, match="empty list"):
        upsampler([])


def test_bfloat16_on_cpu(backbone_file, upsampler):
    up16 = featlift.load_upsampler(
        "dinov2_s14",
        device="cpu",
        dtype=torch.bfloat16,
        weights=FIXTURES / "dinov2_s14" / "weights.safetensors",
        backbone_weights=backbone_file,
    )
    image = torch.rand(3, 28, 28, generator=torch.Generator().manual_seed(3))
    out = up16(image)
    ref = upsampler(image)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    assert (out.float() - ref).abs().max().item() <= 0.1 * ref.abs().max().item()


def test_unknown_names_list_the_known_ones():
    with pytest.raises(UnknownModelError, match="dinov2_s14, dinov3_splus16, sd15_vae"):
        featlift.load_upsampler("resnet50", pretrained=False)


def test_local_model_directory(tmp_path, backbone_file):
    model = featlift.build_upsampler(
        FIXTURES / "dinov2_s14" / "config.yaml", weights=FIXTURES / "dinov2_s14" / "weights.safetensors"
    )
    model.save_pretrained(tmp_path)
    up = featlift.load_upsampler(str(tmp_path), device="cpu", backbone_weights=backbone_file)
    assert torch.equal(
        up.uplift.state_dict()["attender.to_logits.weight"], model.state_dict()["attender.to_logits.weight"]
    )


# -- the VAE variant ------------------------------------------------------------------------------------


def _tiny_vae():
    diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (pip install 'featlift[vae]')")
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    ).eval()


def test_vae_path_with_a_tiny_autoencoder(tmp_path):
    from featlift.backbones.sd_vae import DiffusersVAE

    vae = _tiny_vae()
    vae.save_pretrained(tmp_path / "vae", safe_serialization=True)
    uplift = featlift.build_upsampler(
        FIXTURES / "vae_mini" / "config.yaml", weights=FIXTURES / "vae_mini" / "weights.safetensors"
    )
    backbone = DiffusersVAE("tiny", vae_dir=tmp_path / "vae")
    up = featlift.Upsampler(backbone, uplift)
    image = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    latents, low = up(image, output_size="native", return_lowres=True)
    with torch.no_grad():
        expected_low = vae.encode(image * 2 - 1).latent_dist.mode()
        expected = uplift(image, expected_low, iters=3)
    assert (low - expected_low).abs().max().item() <= 1e-4
    assert latents.shape == (1, 4, 32, 48) and (latents - expected).abs().max().item() <= 1e-3
    decoded = up.decode(latents)
    assert decoded.shape == (1, 3, 256, 384) and decoded.min() >= 0 and decoded.max() <= 1


def test_missing_diffusers_gives_the_install_hint(monkeypatch):
    from featlift.backbones.sd_vae import DiffusersVAE

    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'featlift\[vae\]'"):
        DiffusersVAE("stable-diffusion-v1-5/stable-diffusion-v1-5")


def test_decode_needs_a_vae(upsampler):
    with pytest.raises(TypeError, match="decode\\(\\) needs a VAE backbone"):
        upsampler.decode(torch.zeros(1, 4, 2, 2))


def test_timm_backbone_contract(backbone_file):
    bb = TimmViT(TIMM_NAME, weights=backbone_file)
    assert bb.patch == 14 and bb.channels == 384
    assert bb(torch.randn(2, 3, 28, 42)).shape == (2, 384, 2, 3)
    with pytest.raises(FileNotFoundError, match="backbone weights file not found"):
        TimmViT(TIMM_NAME, weights=backbone_file.parent / "absent.safetensors")


# -- examples -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["quickstart.py", "compare_bilinear.py", "vae_superres.py"])
def test_examples_show_help_offline(script, tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / script), "--help"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0 and "usage:" in result.stdout


@pytest.mark.parametrize(("script", "width"), [("quickstart.py", 50), ("compare_bilinear.py", 150)])
def test_examples_run_with_local_weights(script, width, tmp_path, backbone_file):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        str(REPO / "examples" / script),
        str(tmp_path / "in.png"),
        "--out",
        str(tmp_path / "out.png"),
    ]
    cmd += ["--weights", str(FIXTURES / "dinov2_s14" / "weights.safetensors"), "--backbone-weights", str(backbone_file)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert Image.open(tmp_path / "out.png").size == (width, 40)


def test_upsampler_tiles_exactly_with_a_head_and_runs_the_backbone_once(upsampler):
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 255, (100, 130, 3), dtype=np.uint8))
    calls = []
    hook = upsampler.backbone.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    probe = torch.nn.Conv2d(384, 5, 1)
    try:
        whole = upsampler(img, output_size="native")
        tiled = upsampler(img, output_size="native", tile=3)
        labels = upsampler(img, tile=(2, 4), head=probe)
        upsampler.tile = 3
        default_tiled = upsampler(img, output_size="native")
    finally:
        upsampler.tile = None
        hook.remove()
    assert len(calls) == 4, "the backbone runs once per call, on the whole image"
    assert (tiled - whole).abs().max().item() <= 1e-4 * max(1.0, whole.abs().max().item())
    assert torch.equal(default_tiled, tiled)
    with torch.no_grad():
        want = F.interpolate(probe(whole), size=(100, 130), mode="bilinear", align_corners=False, antialias=True)
    assert labels.shape == (1, 5, 100, 130)
    assert (labels - want).abs().max().item() <= 1e-3
