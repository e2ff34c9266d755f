"""featlift eval at scale: torchrun (DDP) equals one process, per-epoch checkpoints and --resume, the
on-disk backbone-feature cache, and the Upsampler's precomputed-features path that the cache uses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from featlift import LoadOptions
from featlift._distributed import Dist, shard
from featlift._feature_cache import FeatureCache, fingerprint
from featlift.eval.probe import epoch_batches, share, train_probe
from featlift.eval.protocols import protocol as _protocol

from .conftest import TIMM_NAME

SEG = _protocol(None, "seg")  # the default segmentation protocol (naf)

RANDOM = LoadOptions(pretrained=False)  # random weights everywhere, nothing downloaded

REPO = Path(__file__).resolve().parents[1]
SIZE = 28


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import synthetic_eval
    finally:
        sys.path.pop(0)
    root = tmp_path_factory.mktemp("voc")
    synthetic_eval.write(root, n_train=5, n_val=3, seed=1)
    weights = synthetic_eval.write_backbone(root / "backbone.safetensors", TIMM_NAME)
    return root, weights


def _argv(voc, out: Path, *extra: str) -> list[str]:
    root, weights = voc
    argv = ["eval", "seg", "--dataset", "voc", "--root", str(root), "--image-size", str(SIZE)]
    argv += ["--upsampler", "bilinear", "--backbone", TIMM_NAME, "--backbone-weights", str(weights)]
    argv += ["--epochs", "3", "--lr", "1e-2", "--batch-size", "2", "--device", "cpu", "--out", str(out)]
    return argv + list(extra)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_batches_are_a_seeded_permutation_and_shares_split_them_exactly():
    a = epoch_batches(7, 3, seed=0, epoch=0)
    assert a == epoch_batches(7, 3, seed=0, epoch=0) and [len(b) for b in a] == [3, 3, 1]
    assert sorted(i for b in a for i in b) == list(range(7))
    assert a != epoch_batches(7, 3, seed=0, epoch=1) and a != epoch_batches(7, 3, seed=1, epoch=0)
    for world in (1, 2, 3, 5):
        parts = [share([10, 11, 12], Dist(rank=r, world=world)) for r in range(world)]
        assert [i for p in parts for i in p] == [10, 11, 12]
        shares = [list(shard(9, Dist(rank=r, world=world))) for r in range(world)]
        assert shares[0][0] == 0 and [i for p in shares for i in p] == list(range(9))


def test_two_torchrun_processes_give_the_single_process_metrics(voc, tmp_path):
    """2 gloo processes on the CPU, each batch of 2 split one image per process (and the short last batch
    leaving one process empty), against the same command in one process."""
    from featlift.cli import main

    single = tmp_path / "one.json"
    assert main(_argv(voc, single, "--save-predictions", str(tmp_path / "p1"))) == 0
    double = tmp_path / "two.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())]
    cmd += ["-m", "featlift.cli", *_argv(voc, double, "--save-predictions", str(tmp_path / "p2"))]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("mIoU (%)") == 1  # one table, from the first process
    one, two = json.loads(single.read_text()), json.loads(double.read_text())
    assert two["protocol"]["processes"] == 2 and one["protocol"]["processes"] == 1
    a, b = one["results"]["bilinear"], two["results"]["bilinear"]
    assert abs(a["miou"] - b["miou"]) < 1e-6 and abs(a["pixel_accuracy"] - b["pixel_accuracy"]) < 1e-6
    # every validation image was predicted, by one process or the other, as in the single run
    files = sorted(p.name for p in (tmp_path / "p2" / "bilinear").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "p1" / "bilinear").iterdir()) and len(files) == 3


def test_an_interrupted_eval_resumes_to_the_uninterrupted_result(voc, tmp_path, monkeypatch):
    from featlift.cli import main
    from featlift.eval import probe

    whole = tmp_path / "whole.json"
    assert main(_argv(voc, whole)) == 0
    assert (tmp_path / "whole.checkpoints" / "bilinear.probe.pt").is_file()  # default: next to --out

    saved = probe.save_checkpoint

    def crash_after_first_epoch(path, state):
        saved(path, state)
        raise RuntimeError("simulated crash after epoch 1")

    monkeypatch.setattr(probe, "save_checkpoint", crash_after_first_epoch)
    part = tmp_path / "part.json"
    assert main(_argv(voc, part)) == 1  # the CLI reports the crash
    state = torch.load(tmp_path / "part.checkpoints" / "bilinear.probe.pt", weights_only=True)
    assert state["epoch"] == 1
    monkeypatch.setattr(probe, "save_checkpoint", saved)
    assert main(_argv(voc, part, "--resume")) == 0
    assert json.loads(part.read_text())["results"] == json.loads(whole.read_text())["results"]

    # a resume under other settings is refused, naming the difference
    assert main(_argv(voc, part, "--resume", "--lr", "2e-2")) == 1


def test_resume_refuses_another_protocol_and_needs_a_folder(tmp_path, voc):
    from featlift.errors import ConfigError
    from featlift.eval.run import evaluate

    root, weights = voc
    common = dict(backbone=TIMM_NAME, options=LoadOptions(backbone_weights=weights), device="cpu")
    with pytest.raises(ConfigError, match="checkpoint folder"):
        evaluate("seg", "voc", root, ["bilinear"], resume=True, **common)
    config = SEG.with_settings(epochs=1, lr=1e-2, image_size=SIZE)
    evaluate("seg", "voc", root, ["bilinear"], protocol=config, checkpoint_dir=tmp_path / "c", **common)
    with pytest.raises(ConfigError, match=r"other settings .*'epochs': \(1, 2\)"):
        evaluate(
            "seg", "voc", root, ["bilinear"], protocol=SEG.with_settings(epochs=2, lr=1e-2, image_size=SIZE), checkpoint_dir=tmp_path / "c",
            resume=True, **common,
        )  # fmt: skip


def test_the_feature_cache_skips_the_backbone_and_changes_nothing(voc, tmp_path):
    from featlift.eval.upsamplers import make_source

    _, weights = voc
    plain = make_source("bilinear", backbone=TIMM_NAME, options=LoadOptions(backbone_weights=weights))
    cached = make_source(
        "bilinear", backbone=TIMM_NAME, options=LoadOptions(backbone_weights=weights), feature_cache=tmp_path / "cache"
    )
    images = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    first = cached.features(images)
    assert cached.cache.misses == 2 and cached.cache.hits == 0
    calls = []
    hook = cached.backbone.register_forward_hook(lambda *a: calls.append(1))
    second = cached.features(images)
    hook.remove()
    assert not calls and cached.cache.hits == 2
    want = plain.features(images)
    assert torch.allclose(first, want, atol=1e-5) and torch.equal(first, second)
    # another crop of the same picture is another entry; other weights are another folder
    cached.features(images[:, :, :14, :14].contiguous())
    assert cached.cache.misses == 4
    other = make_source("bilinear", backbone=TIMM_NAME, options=RANDOM, feature_cache=cached.cache)
    assert fingerprint(other.backbone) != fingerprint(cached.backbone)
    other.features(images)
    assert cached.cache.misses == 6 and len(list((tmp_path / "cache").iterdir())) == 2


def test_a_damaged_cache_entry_is_recomputed(tmp_path):
    from featlift.eval.upsamplers import make_source

    source = make_source("bilinear", backbone=TIMM_NAME, options=RANDOM, feature_cache=tmp_path)
    images = torch.rand(1, 3, SIZE, SIZE)
    want = source.features(images)
    (entry,) = [p for p in tmp_path.rglob("*.safetensors")]
    entry.write_bytes(b"not a safetensors file")
    assert torch.equal(source.features(images), want) and source.cache.misses == 2


def test_featlift_sources_use_the_cache_through_precomputed_features(tmp_path):
    from featlift.eval.upsamplers import make_source

    torch.manual_seed(0)
    plain = make_source("dinov2_s14", options=RANDOM)
    cached = make_source("dinov2_s14", options=RANDOM, feature_cache=FeatureCache(tmp_path))
    cached.up.load_state_dict(plain.up.state_dict())
    images = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    want = plain.features(images)
    assert torch.allclose(cached.features(images), want, atol=1e-5)
    assert torch.allclose(cached.features(images), want, atol=1e-5) and cached.cache.hits == 1


def test_upsampler_takes_precomputed_backbone_features_and_checks_their_shape():
    import featlift

    up = featlift.load_upsampler("dinov2_s14", options=RANDOM, device="cpu")
    images = torch.rand(2, 3, 42, 28, generator=torch.Generator().manual_seed(4))
    want, lowres = up(images, return_lowres=True)
    assert torch.equal(up(images, features=lowres), want)
    with pytest.raises(ValueError, match=r"shape \(2, 384, 3, 2\)"):
        up(images, features=lowres[:, :, :2])
    with pytest.raises(ValueError, match="images of one size"):
        up([images[0], images[1, :, :28]], features=lowres)


def test_probe_training_splits_batches_like_one_process_when_world_is_one():
    """With one process, the sharded loop is plain minibatch training: the same probe from the same seed,
    and a different one from another seed."""

    class Source:
        name, channels, device = "colours", 3, torch.device("cpu")

        def features(self, images):
            return images.float()

    data = [{"image": torch.rand(3, 4, 4), "label": torch.randint(0, 2, (4, 4)), "id": str(i)} for i in range(5)]
    config = SEG.with_settings(epochs=2, lr=1e-2, batch_size=2)
    a = train_probe(Source(), data, task="seg", outputs=2, protocol=config)
    b = train_probe(Source(), data, task="seg", outputs=2, protocol=config, dist=Dist())
    c = train_probe(Source(), data, task="seg", outputs=2, protocol=SEG.with_settings(epochs=2, lr=1e-2, seed=1))
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)


def test_a_fresh_run_clears_probes_of_an_earlier_run(voc, tmp_path):
    from featlift.cli import main

    folder = tmp_path / "run.checkpoints"
    folder.mkdir()
    (folder / "nearest.probe.pt").write_bytes(b"an old probe")
    assert main(_argv(voc, tmp_path / "run.json", "--epochs", "1")) == 0
    assert sorted(p.name for p in folder.glob("*.probe.pt")) == ["bilinear.probe.pt"]
