"""Corrupt and hostile files: every one raises a featlift error that names the file, and no pickle ever
runs code.

Covers UPLiFT weights, timm backbone weights, diffusers VAE folders, ``config.json`` files and a
half-downloaded Hugging Face cache (in a subprocess, with ``HF_HOME`` and ``HF_HUB_OFFLINE=1`` set before
huggingface_hub is imported).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import featlift
from featlift.backbones import TimmViT
from featlift.errors import CheckpointError, ConfigError
from featlift.weights import read_pretrained_dir

from .conftest import FIXTURES, tiny_autoencoder

REPO = Path(__file__).resolve().parents[1]
UPLIFT_WEIGHTS = FIXTURES / "dinov2_s14" / "weights.safetensors"
TINY_VIT = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
DINO_VIT = "vit_small_patch14_dinov2.lvd142m"


# -- helpers ---------------------------------------------------------------------------------------------


def _damaged(data: bytes, kind: str) -> bytes:
    """``data`` (a valid safetensors file) damaged in one of the ways files get damaged."""
    if kind == "truncated":
        return data[: len(data) // 2]
    if kind == "cut_in_header":
        return data[:20]
    if kind == "empty":
        return b""
    if kind == "random_bytes":
        return (
            torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
            .numpy()
            .tobytes()
        )
    if kind == "huge_header_length":
        return struct.pack("<Q", 2**40) + data[8:]
    if kind == "header_not_json":
        return struct.pack("<Q", 16) + b"this is no json!" + data[24:]
    raise AssertionError(kind)


DAMAGE = ["truncated", "cut_in_header", "empty", "random_bytes", "huge_header_length", "header_not_json"]


class _RunsCode:
    """Pickles to a call of ``exec`` that creates ``marker``: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def _hostile_checkpoint(path: Path, marker: Path, tensors: dict[str, torch.Tensor]) -> Path:
    torch.save({**tensors, "payload": _RunsCode(marker)}, path)
    return path


@pytest.fixture(scope="module")
def tiny_vit_state() -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(0)
    return {k: v.contiguous() for k, v in timm.create_model(TINY_VIT, pretrained=False).state_dict().items()}


@pytest.fixture(scope="module")
def tiny_vit_file(tiny_vit_state, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny_vit") / "model.safetensors"
    save_file(tiny_vit_state, str(path))
    return path


# -- damaged .safetensors ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_uplift_weights(tmp_path, kind):
    path = tmp_path / f"{kind}.safetensors"
    path.write_bytes(_damaged(UPLIFT_WEIGHTS.read_bytes(), kind))
    with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
        featlift.build_upsampler("dinov2_s14", weights=path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_backbone_weights(tmp_path, tiny_vit_file, kind):
    """Before, safetensors' own error escaped TimmViT (it only caught RuntimeError)."""
    path = tmp_path / f"{kind}.safetensors"
    path.write_bytes(_damaged(tiny_vit_file.read_bytes(), kind))
    with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
        TimmViT(TINY_VIT, weights=path)
    assert str(path) in str(info.value)


def test_damaged_backbone_weights_through_load_upsampler(tmp_path):
    path = tmp_path / "vit.safetensors"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
        featlift.load_upsampler("dinov2_s14", weights=UPLIFT_WEIGHTS, backbone_weights=path, device="cpu")
    assert str(path) in str(info.value)


def test_backbone_weights_of_another_model_name_the_file(tmp_path, tiny_vit_state):
    state = dict(tiny_vit_state)
    state["blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)
    save_file(state, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match=r"other\.safetensors do not fit timm model .*size mismatch"):
        TimmViT(TINY_VIT, weights=tmp_path / "other.safetensors")


# -- backbone weights go through featlift's reader, then timm's filter ---------------------------------


def test_backbone_file_is_read_by_featlift_never_by_timm(tmp_path, tiny_vit_state, tiny_vit_file, monkeypatch):
    """timm's file loader may unpickle (timm versions whose load_state_dict defaults to weights_only=False)."""
    import timm.models._builder as builder

    def forbidden(*args, **kwargs):
        raise AssertionError("timm read the backbone file itself")

    monkeypatch.setattr(builder, "load_state_dict", forbidden)
    torch.save(tiny_vit_state, tmp_path / "vit.pth")
    for path in (tmp_path / "vit.pth", tiny_vit_file):
        bb = TimmViT(TINY_VIT, weights=path)
        loaded = bb.model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in tiny_vit_state.items())
        assert "state_dict" not in bb.model.pretrained_cfg, "the model must not keep a second copy of the weights"


def test_backbone_state_dict_still_goes_through_timms_filter(tmp_path, tiny_vit_state):
    """A position embedding for 384 px is resampled to the model's 224 px grid by timm's checkpoint filter."""
    state = dict(tiny_vit_state)
    state["pos_embed"] = torch.randn(1, 1 + 24 * 24, 192)
    save_file(state, str(tmp_path / "vit384.safetensors"))
    bb = TimmViT(TINY_VIT, weights=tmp_path / "vit384.safetensors")
    assert bb.model.pos_embed.shape == (1, 197, 192)
    assert torch.equal(bb.model.pos_embed[:, 0], state["pos_embed"][:, 0]), "the class token's embedding is kept"


def test_backbone_timm_training_checkpoint_uses_its_ema_weights(tmp_path, tiny_vit_state):
    ema = {k: v + 1 for k, v in tiny_vit_state.items()}
    checkpoint = {"state_dict": tiny_vit_state, "state_dict_ema": ema, "epoch": 3, "args": argparse.Namespace(lr=0.1)}
    torch.save(checkpoint, tmp_path / "checkpoint-3.pth.tar")
    bb = TimmViT(TINY_VIT, weights=tmp_path / "checkpoint-3.pth.tar")
    assert torch.equal(bb.model.cls_token, ema["cls_token"])


# -- pickles that would run code -------------------------------------------------------------------------


def test_the_hostile_payload_is_live(tmp_path):
    """Control: an unsafe torch.load of such a file does run its code, so the tests below can fail."""
    marker = tmp_path / "control"
    path = _hostile_checkpoint(tmp_path / "x.pth", marker, {"w": torch.zeros(1)})
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin", ".pth.tar"])
def test_code_running_uplift_checkpoint_is_refused(tmp_path, suffix):
    marker = tmp_path / "MARKER"
    weights = featlift.build_upsampler("dinov2_s14").state_dict()
    path = _hostile_checkpoint(tmp_path / f"uplift{suffix}", marker, weights)
    with pytest.raises(CheckpointError, match=r"weights_only=True.*never unpickles") as info:
        featlift.build_upsampler("dinov2_s14", weights=path)
    assert str(path) in str(info.value)
    assert not marker.exists(), "the checkpoint's code ran"


def test_code_running_backbone_checkpoint_is_refused(tmp_path, tiny_vit_state):
    marker = tmp_path / "MARKER"
    path = _hostile_checkpoint(tmp_path / "vit.pth", marker, tiny_vit_state)
    with pytest.raises(CheckpointError, match="weights_only=True") as info:
        TimmViT(TINY_VIT, weights=path)
    assert str(path) in str(info.value)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        featlift.load_upsampler("dinov2_s14", weights=UPLIFT_WEIGHTS, backbone_weights=path, device="cpu")
    assert not marker.exists(), "the checkpoint's code ran"


# -- config.json --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_config() -> dict:
    return featlift.build_upsampler("dinov2_s14").config.to_dict()


def _bad_configs(good: dict) -> dict[str, tuple[bytes, str]]:
    """name -> (config.json bytes, expected message part)."""
    dump = lambda data: json.dumps(data).encode()  # noqa: E731
    return {
        "unknown_key": (dump({**good, "colour": "blue"}), r"unknown field\(s\) \['colour'\]"),
        "missing_backbone": (
            dump({k: v for k, v in good.items() if k != "backbone"}),
            r"missing required key\(s\) \['backbone'\]",
        ),
        "missing_required": (
            dump({"attender": 17}),
            r"missing required key\(s\) \['backbone', 'encoder', 'decoder', 'share_encoder'\]",
        ),
        "invalid_json": (b'{"backbone": {', "not valid JSON"),
        "json_list": (dump([good]), "expected a JSON object .* got a JSON list"),
        "json_number": (b"17", "got a JSON int"),
        "not_utf8": (b"\xff\xfe{\x00", "cannot be read as UTF-8 text"),
        "bad_value": (dump({**good, "attender": 7}), "attender"),
    }


@pytest.mark.parametrize(
    "name",
    [
        "unknown_key",
        "missing_backbone",
        "missing_required",
        "invalid_json",
        "json_list",
        "json_number",
        "not_utf8",
        "bad_value",
    ],
)
def test_bad_config_json_names_the_file(tmp_path, good_config, name):
    data, expected = _bad_configs(good_config)[name]
    featlift.build_upsampler("dinov2_s14").save_pretrained(tmp_path)
    config = tmp_path / "config.json"
    config.write_bytes(data)
    calls = {
        "read_pretrained_dir": lambda: read_pretrained_dir(tmp_path),
        "build_upsampler(dir)": lambda: featlift.build_upsampler(tmp_path),
        "build_upsampler(config.json)": lambda: featlift.build_upsampler(config),
        "load_upsampler(dir)": lambda: featlift.load_upsampler(tmp_path, device="cpu"),
    }
    for what, call in calls.items():
        with pytest.raises(ConfigError, match=expected) as info:
            call()
        assert str(config) in str(info.value), f"{what}: {info.value}"


# -- diffusers VAE folders -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> Path:
    vae = tiny_autoencoder((8, 16), sample_size=16)
    folder = tmp_path_factory.mktemp("vae") / "vae"
    vae.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.mark.parametrize("damage", ["truncated_weights", "no_weights", "config_not_json"])
def test_damaged_vae_folder(tmp_path, vae_dir, damage):
    from featlift.backbones.sd_vae import DiffusersVAE

    folder = tmp_path / "vae"
    folder.mkdir()
    for f in vae_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    weights = folder / "diffusion_pytorch_model.safetensors"
    if damage == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "no_weights":
        weights.unlink()
    else:
        (folder / "config.json").write_text("{not json")
    assert DiffusersVAE("tiny", vae_dir=vae_dir).channels == 4, "the intact folder loads"
    with pytest.raises(CheckpointError, match="cannot load the VAE from") as info:
        DiffusersVAE("tiny", vae_dir=folder)
    assert str(folder) in str(info.value)


# -- a half-downloaded Hugging Face cache ------------------------------------------------------------


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache_entry(hub: Path, repo: str, filename: str, data: bytes | None) -> Path:
    """Lay out ``filename`` of ``repo`` as huggingface_hub does (snapshot link -> blob); ``data=None``
    leaves the blob out, as an interrupted download or a half-deleted cache does."""
    folder = hub / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(COMMIT)
    (folder / "blobs").mkdir(exist_ok=True)
    blob = folder / "blobs" / hashlib.sha256(data if data is not None else filename.encode()).hexdigest()
    if data is not None:
        blob.write_bytes(data)
    link = folder / "snapshots" / COMMIT / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    try:
        link.symlink_to(os.path.relpath(blob, link.parent))
    except OSError:  # pragma: no cover - file systems without symlinks
        pytest.skip("symlinks are not available here")
    return link


def test_half_downloaded_hub_cache(tmp_path, tiny_vit_file):
    uplift = UPLIFT_WEIGHTS.read_bytes()
    uplift_repo, uplift_file = "UPLiFT-upsampler/uplift_dinov2-s14", "uplift_dinov2-s14.safetensors"
    timm_repo = f"timm/{DINO_VIT}"
    backbone = tiny_vit_file.read_bytes()  # never parsed: the scenarios below fail before or at reading it
    featlift.build_upsampler("dinov2_s14").save_pretrained(tmp_path / "own")
    own_config = (tmp_path / "own" / "config.json").read_bytes()

    links = {
        # HF_HOME's own cache: the UPLiFT weights' blob is missing.
        "uplift_blob_missing": _cache_entry(tmp_path / "home" / "hub", uplift_repo, uplift_file, None),
        # Caches passed as cache_dir=...
        "uplift_blob_truncated": _cache_entry(tmp_path / "b", uplift_repo, uplift_file, uplift[:1000]),
        "backbone_blob_missing": _cache_entry(tmp_path / "c", timm_repo, "model.safetensors", None),
        "backbone_blob_truncated": _cache_entry(tmp_path / "d", timm_repo, "model.safetensors", backbone[:1000]),
        "repo_weights_missing": _cache_entry(tmp_path / "e", "someone/uplift-own", "model.safetensors", None),
    }
    _cache_entry(tmp_path / "c", uplift_repo, uplift_file, uplift)
    _cache_entry(tmp_path / "d", uplift_repo, uplift_file, uplift)
    _cache_entry(tmp_path / "e", "someone/uplift-own", "config.json", own_config)

    code = f"""
        import json, featlift
        results = {{}}
        def attempt(name, **kwargs):
            try:
                featlift.load_upsampler(kwargs.pop("model", "dinov2_s14"), device="cpu", **kwargs)
                results[name] = ["ok", ""]
            except Exception as err:
                results[name] = [type(err).__name__, str(err)]
        attempt("uplift_blob_missing")
        attempt("uplift_blob_truncated", cache_dir=r"{tmp_path / "b"}")
        attempt("backbone_blob_missing", cache_dir=r"{tmp_path / "c"}")
        attempt("backbone_blob_truncated", cache_dir=r"{tmp_path / "d"}")
        attempt("repo_weights_missing", model="someone/uplift-own", cache_dir=r"{tmp_path / "e"}")
        attempt("repo_config_only", model="someone/uplift-own", cache_dir=r"{tmp_path / "e"}", pretrained=False)
        print(json.dumps(results))
    """
    env = {**os.environ, "HF_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])

    for name, repo, filename in [
        ("uplift_blob_missing", uplift_repo, uplift_file),
        ("backbone_blob_missing", timm_repo, "model.safetensors"),
        ("repo_weights_missing", "someone/uplift-own", "model.safetensors"),
    ]:
        kind, message = results[name]
        assert kind == "DownloadError", (name, kind, message)
        assert repo in message and filename in message, message
        assert "is broken" in message and f"delete {links[name]}" in message, message
    for name in ("uplift_blob_truncated", "backbone_blob_truncated"):
        kind, message = results[name]
        assert kind == "CheckpointError", (name, kind, message)
        assert str(links[name]) in message and "corrupt or truncated" in message, message
        assert "Hugging Face cache entry: delete" in message, message
    assert results["repo_config_only"] == ["ok", ""], "pretrained=False needs only the repo's config.json"
