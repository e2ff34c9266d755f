"""load_upsampler end to end: offline Hub cache, torch.hub, CLI, input kinds, output sizes, VAE path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import featlift
from featlift.backbones import TimmViT
from featlift.errors import MissingDependencyError, UnknownModelError

from .conftest import FIXTURES, REPO, TIMM_NAME, run_python, tiny_autoencoder


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
    result = run_python(code, hf_home)
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
    result = run_python(code, tmp_path / "empty_home")
    assert result.returncode == 0, result.stderr[-3000:]
    message = result.stdout
    assert "UPLiFT-upsampler/uplift_dinov2-s14" in message and "uplift_dinov2-s14.safetensors" in message
    assert "HF_HUB_OFFLINE" in message and "weights=PATH" in message


def _rand_image(path: Path, shape: tuple, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)).save(path)


def _cli(args: list[str], hf_home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "featlift.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_cli_mirrors_paths_never_loses_outputs_and_resumes(hf_home, tmp_path):
    from safetensors.torch import load_file

    images = tmp_path / "photos"
    _rand_image(images / "a.png", (40, 50, 3), 0)
    _rand_image(images / "nested" / "b.jpg", (30, 30), 1)  # greyscale
    _rand_image(images / "s1" / "x.png", (28, 28, 3), 2)  # three inputs named x: three outputs
    _rand_image(images / "s2" / "x.png", (28, 28, 3), 3)
    _rand_image(images / "x.jpg", (28, 28, 3), 4)
    (images / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"

    result = _cli(["models"], hf_home)
    assert result.returncode == 0 and "dinov2_s14" in result.stdout and "sd15_vae" in result.stdout
    result = _cli(
        ["upsample", str(images), "--out", str(out), "--pca", "--device", "cpu", "--batch-size", "2"], hf_home
    )
    assert result.returncode == 1, "a failed input makes the exit status non-zero"
    assert "failed" in result.stderr and "broken.png" in result.stderr
    assert "wrote features for 5 image(s)" in result.stdout and "failed 1" in result.stdout
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.safetensors"))
    assert written == [
        "a.png.safetensors",
        "nested/b.jpg.safetensors",
        "s1/x.png.safetensors",
        "s2/x.png.safetensors",
        "x.jpg.safetensors",
    ]
    assert not list(out.rglob("*.tmp")), "no temporary files are left behind"
    feats = {name: load_file(str(out / name))["features"] for name in written}
    assert feats["a.png.safetensors"].shape == (384, 40, 50)
    assert feats["nested/b.jpg.safetensors"].shape == (384, 30, 30)
    assert not torch.equal(feats["s1/x.png.safetensors"], feats["s2/x.png.safetensors"])
    assert not torch.equal(feats["s1/x.png.safetensors"], feats["x.jpg.safetensors"])
    assert Image.open(out / "a.png.pca.png").size == (50, 40)

    # A rerun skips what is done (files untouched) and retries only the failure.
    stamp = (out / "a.png.safetensors").stat().st_mtime_ns
    result = _cli(["upsample", str(images), "--out", str(out), "--pca", "--device", "cpu"], hf_home)
    assert (
        result.returncode == 1 and "skipped 5 already done" in result.stdout and "wrote features for 0" in result.stdout
    )
    assert (out / "a.png.safetensors").stat().st_mtime_ns == stamp

    # A file given by name goes to OUT/<name>; --overwrite replaces an existing output.
    native_args = ["upsample", str(images / "a.png"), "--out", str(out), "--size", "native", "--device", "cpu"]
    result = _cli(native_args, hf_home)
    assert result.returncode == 0 and "nothing to do" in result.stdout
    assert load_file(str(out / "a.png.safetensors"))["features"].shape == (384, 40, 50)
    result = _cli([*native_args, "--overwrite"], hf_home)
    assert result.returncode == 0, result.stderr[-3000:]
    native = load_file(str(out / "a.png.safetensors"))["features"]
    assert native.shape == (384, 48, 64)

    tiled_out = tmp_path / "tiled"
    result = _cli([*native_args, "--out", str(tiled_out), "--tile", "2"], hf_home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (load_file(str(tiled_out / "a.png.safetensors"))["features"] - native).abs().max().item() <= 1e-4

    # Two inputs that would share an output are refused before any work.
    result = _cli(["upsample", str(images / "s1" / "x.png"), str(images / "s2" / "x.png"), "--out", str(out)], hf_home)
    assert result.returncode == 1 and "would both be written to" in result.stderr


def test_cli_outputs_inside_the_input_folder_are_not_inputs(hf_home, tmp_path):
    images = tmp_path / "photos"
    _rand_image(images / "a.png", (28, 28, 3), 0)
    args = ["upsample", str(images), "--out", str(images / "feats"), "--pca", "--device", "cpu"]
    assert _cli(args, hf_home).returncode == 0
    result = _cli(args, hf_home)
    assert result.returncode == 0 and "all 1 image(s) already have outputs" in result.stdout


def test_cli_write_is_atomic(tmp_path, monkeypatch):
    """A crash in the middle of writing leaves the previous complete file, and no partial one."""
    import safetensors.torch
    from safetensors.torch import load_file

    from featlift.extract import Job
    from featlift.extract._storage import Writer, prepare, write

    failed = []

    def save(features):
        """One image the way a run stores it: converted here, written by the writer thread."""
        writer = Writer(
            lambda j, tensor, picture: write(j, tensor, picture, model="m"), lambda j, err: failed.append(err)
        )
        writer.put(job, prepare(features, save_dtype=torch.float32, pca=False))
        writer.close()

    job = Job(tmp_path / "x.png", tmp_path / "out" / "x.png")
    job.features.parent.mkdir(parents=True)
    save(torch.ones(4, 3, 3))
    good = job.features.read_bytes()

    def crash(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise KeyboardInterrupt  # the process is killed mid-write

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save(torch.zeros(4, 3, 3))
    assert job.features.read_bytes() == good
    assert torch.equal(load_file(str(job.features))["features"], torch.ones(4, 3, 3))
    assert [p.name for p in job.features.parent.iterdir()] == ["x.png.safetensors"]
    assert failed == []  # the kill is not one image's failure: close() raised it


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


@pytest.mark.parametrize("size", [(227, 301), (224, 308)])  # not / all patch multiples
def test_one_preprocessing_path_for_pil_arrays_and_tensors(upsampler, size):
    """The same pixels give the same features (1e-4) however they are passed in."""
    rng = np.random.default_rng(5)
    array = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    from_pil = upsampler(Image.fromarray(array))
    assert from_pil.shape == (1, 384, *size)
    for other in (upsampler(array), upsampler(tensor), upsampler(array.astype(np.float32) / 255)):
        assert (other - from_pil).abs().max().item() <= 1e-4
    grey = rng.integers(0, 256, size, dtype=np.uint8)
    want = upsampler(Image.fromarray(grey).convert("RGB"))
    for other in (upsampler(Image.fromarray(grey)), upsampler(grey), upsampler(grey[:, :, None])):
        assert (other - want).abs().max().item() <= 1e-4
    deep = rng.integers(0, 65536, size, dtype=np.uint16)  # 16-bit: scaled by 65535, grey replicated
    want = upsampler(torch.from_numpy(deep.astype(np.float32) / 65535)[None].expand(3, *size))
    for other in (upsampler(Image.fromarray(deep)), upsampler(deep)):
        assert (other - want).abs().max().item() <= 1e-4


def test_memory_guard_refuses_an_output_bigger_than_the_machine(upsampler):
    import psutil

    from featlift.errors import InsufficientMemoryError

    calls = []
    hook = upsampler.backbone.register_forward_hook(lambda m, i, o: calls.append(1))
    huge = torch.zeros(3, 1, 1).expand(3, 60_000, 60_000)  # 43 GB as float32, but costs nothing to build
    try:
        with pytest.raises(InsufficientMemoryError) as info:
            upsampler(huge)
    finally:
        hook.remove()
    assert not calls, "the guard runs before the backbone"
    message = str(info.value)
    assert "60000x60000" in message and "available on cpu" in message
    assert "tile=" in message or "head=" in message
    assert "output_size=" in message and "memory_guard = False" in message
    estimate = upsampler.estimate_memory(1, (60_000, 60_000))
    assert estimate.output == 384 * 60_000 * 60_000 * 4 and estimate.total > psutil.virtual_memory().total


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
    with pytest.raises(ValueError, match="float pixels must lie in \\[0, 1\\].*divide 0-255 images by 255"):
        upsampler(np.full((28, 28, 3), 200.0, dtype=np.float32))
    with pytest.raises(ValueError, match="C = 1, 3 or 4"):
        upsampler(torch.rand(5, 28, 28))
    with pytest.raises(ValueError, match="NaN or infinite"):
        upsampler(torch.full((3, 28, 28), float("nan")))
    with pytest.raises(ValueError, match="empty \\(0x28 pixels\\)"):
        upsampler(torch.rand(3, 0, 28))
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


def test_vae_path_with_a_tiny_autoencoder(tmp_path):
    from featlift.backbones.sd_vae import DiffusersVAE

    vae = tiny_autoencoder((8, 16, 16, 16), sample_size=32)
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
    with pytest.raises(MissingDependencyError, match=r'pip install "featlift\[vae\]"'):
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
        # 112x144 native -> 100x130: less than 2x, so plain bilinear (featlift._upsampler.resize_features)
        want = F.interpolate(probe(whole), size=(100, 130), mode="bilinear", align_corners=False)
    assert labels.shape == (1, 5, 100, 130)
    assert (labels - want).abs().max().item() <= 1e-3


def test_output_resize_is_plain_bilinear_up_to_2x_and_antialiased_beyond():
    from featlift._upsampler import resize_features

    x = torch.randn(1, 6, 64, 48, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=torch.channels_last)
    mild = resize_features(x, (56, 40))  # 0.875x, 0.83x
    assert torch.equal(mild, F.interpolate(x, size=(56, 40), mode="bilinear", align_corners=False))
    assert mild.is_contiguous(memory_format=torch.channels_last)
    strong = resize_features(x, (64, 20))  # one side shrinks 2.4x: antialiased
    want = F.interpolate(x, size=(64, 20), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(strong, want, atol=1e-6)
    assert not torch.allclose(strong, F.interpolate(x, size=(64, 20), mode="bilinear", align_corners=False))
    half = resize_features(x.to(torch.bfloat16), (56, 40))
    assert half.dtype == torch.bfloat16
