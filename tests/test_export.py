"""featlift export: ONNX (run by onnxruntime) and torch.export programs against PyTorch, CLI and API errors.

Every export traces at the default example size (4x6 backbone cells, batch 2); outputs are compared at
other batch and spatial sizes, so a size baked into a graph fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import featlift
from featlift import cli
from featlift.config import BackboneConfig
from featlift.errors import ConfigError, MissingDependencyError
from featlift.export import export_onnx, export_pt2
from featlift.modeling.attender import LocalAttender
from featlift.ops import portable_local_attend
from featlift.ops.local_attend import local_attend_reference, neighbourhood_offsets

from .configs import random_inputs, tiny_config
from .conftest import REPO

TINY_VIT = "test_vit.r160_in1k"  # timm's 0.37 M-parameter test ViT: patch 16, 64 channels
EXAMPLE = (4, 6)  # the exporters' default example grid (cells); every comparison uses other sizes


def _onnx_modules():
    pytest.importorskip("onnx", reason='ONNX export needs pip install "featlift[export]"')
    pytest.importorskip("onnxscript", reason='ONNX export needs pip install "featlift[export]"')
    ort = pytest.importorskip("onnxruntime", reason='ONNX tests need pip install "featlift[export]"')
    import onnx

    return onnx, ort


def _randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``model`` with random BatchNorm statistics and affine parameters (so folding them matters)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


def _session(ort, path: Path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _dims(value) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.fixture
def model_dir(tmp_path) -> tuple[Path, featlift.UPLiFT]:
    """A patch-14 tiny UPLiFT (guidance pre-resize 14 -> 16) saved as a model directory."""
    torch.manual_seed(1)
    model = _randomised(featlift.UPLiFT(tiny_config()))
    model.save_pretrained(tmp_path / "model")
    return tmp_path / "model", model


# -- the portable attender ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [5, 9, 13, 17, 25])
@pytest.mark.parametrize("scale", [1, 2, 3])
def test_portable_attend_equals_the_reference(size, scale):
    gen = torch.Generator().manual_seed(size * 10 + scale)
    values = torch.randn(2, 7, 4, 5, generator=gen)
    logits = 4 * torch.randn(2, size, 4 * scale, 5 * scale, generator=gen)  # sharp weights: offsets matter
    offsets = neighbourhood_offsets(size)
    want = local_attend_reference(logits, values, offsets, scale)
    got = portable_local_attend(logits, values, offsets, scale)
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    half = portable_local_attend(logits.half(), values.half(), offsets, scale)
    assert half.dtype == torch.float16
    torch.testing.assert_close(
        half.float(), local_attend_reference(logits.half(), values.half(), offsets, scale).float()
    )


# -- ONNX -----------------------------------------------------------------------------------------------------


def test_cli_onnx_runs_in_onnxruntime_like_pytorch_at_other_sizes(model_dir, tmp_path, capsys):
    onnx, ort = _onnx_modules()
    directory, model = model_dir
    out = tmp_path / "onnx" / "tiny.onnx"
    assert cli.main(["export", str(directory), "--format", "onnx", "--out", str(out), "--iters", "2"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out

    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"} and not proto.functions
    assert {n.op_type for n in proto.graph.node} >= {"Softmax", "Pad", "Slice", "MatMul", "DepthToSpace"}
    shapes = {v.name: _dims(v) for v in [*proto.graph.input, *proto.graph.output]}
    assert shapes == {
        "image": ["batch", 3, "14*h", "14*w"],
        "features": ["batch", 6, "h", "w"],
        "upsampled": ["batch", 6, "4*h", "4*w"],
    }
    meta = {p.key: p.value for p in proto.metadata_props}
    assert (
        meta["featlift.iters"] == "2" and meta["featlift.patch"] == "14" and meta["featlift.with_backbone"] == "false"
    )
    assert featlift.UpliftConfig.from_dict(json.loads(meta["featlift.config"])) == model.config

    session = _session(ort, out)
    for batch, cells, seed in [(1, (3, 5), 1), (3, (5, 2), 2)]:
        image, features = random_inputs(model.config, b=batch, h=cells[0], w=cells[1], seed=seed)
        with torch.inference_mode():
            want = model(image, features, iters=2)
        (got,) = session.run(None, {"image": image.numpy(), "features": features.numpy()})
        assert got.shape == (batch, 6, cells[0] * 4, cells[1] * 4)
        torch.testing.assert_close(torch.from_numpy(got), want.contiguous(), atol=1e-4, rtol=0)


def test_onnx_with_backbone_is_the_whole_upsampler_from_pixels(tmp_path):
    import timm

    _, ort = _onnx_modules()
    torch.manual_seed(2)
    config = tiny_config(
        patch=16, channels=64, backbone=BackboneConfig(channels=64, patch=16, name=TINY_VIT, source="timm")
    )
    _randomised(featlift.UPLiFT(config), seed=2).save_pretrained(tmp_path / "model")
    vit = timm.create_model(TINY_VIT, pretrained=False)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    out = tmp_path / "pipeline.onnx"
    argv = ["export", str(tmp_path / "model"), "--out", str(out), "--with-backbone", "--iters", "1", "--no-optimize"]
    assert cli.main([*argv, "--backbone-weights", str(tmp_path / "vit.safetensors")]) == 0  # format from .onnx

    up = featlift.load_upsampler(
        tmp_path / "model", backbone_weights=tmp_path / "vit.safetensors", device="cpu", iters=1
    )
    session = _session(ort, out)
    assert [i.name for i in session.get_inputs()] == ["image"]
    for batch, cells, seed in [(2, (3, 5), 3), (1, (5, 3), 4)]:
        image = torch.rand(batch, 3, cells[0] * 16, cells[1] * 16, generator=torch.Generator().manual_seed(seed))
        want = up(image, output_size="native")  # normalises with timm's statistics for the test ViT (0.5)
        (got,) = session.run(None, {"image": image.numpy()})
        assert got.shape == (batch, 64, cells[0] * 2, cells[1] * 2)
        torch.testing.assert_close(torch.from_numpy(got), want.contiguous(), atol=1e-4, rtol=0)


def test_onnx_float16_from_a_model_object_leaves_the_model_alone(tmp_path):
    onnx, ort = _onnx_modules()
    torch.manual_seed(3)
    model = _randomised(featlift.UPLiFT(tiny_config()), seed=3)
    image, features = random_inputs(model.config, b=2, h=3, w=5, seed=5)
    with torch.inference_mode():
        before = model(image, features, iters=1)
    export_onnx(model, tmp_path / "half.onnx", iters=1, dtype=torch.float16, optimize=False)

    assert type(model.attender) is LocalAttender and next(model.parameters()).dtype == torch.float32
    with torch.inference_mode():
        assert torch.equal(model(image, features, iters=1), before)
    proto = onnx.load(str(tmp_path / "half.onnx"))
    assert {v.type.tensor_type.elem_type for v in [*proto.graph.input, *proto.graph.output]} == {
        onnx.TensorProto.FLOAT16
    }
    (got,) = _session(ort, tmp_path / "half.onnx").run(
        None, {"image": image.half().numpy(), "features": features.half().numpy()}
    )
    torch.testing.assert_close(torch.from_numpy(got).float(), before.contiguous(), atol=1e-2, rtol=1e-2)


# -- torch.export ------------------------------------------------------------------------------------------


def test_pt2_loads_and_runs_in_a_fresh_process_that_never_imports_onnx(model_dir, tmp_path, capsys):
    directory, model = model_dir
    op_file, portable_file = tmp_path / "op.pt2", tmp_path / "portable.pt2"
    assert cli.main(["export", str(directory), "--format", "pt2", "--out", str(op_file), "--iters", "2"]) == 0
    assert cli.main(["export", str(directory), "--out", str(portable_file), "--iters", "2", "--portable"]) == 0
    assert f"wrote {op_file}" in capsys.readouterr().out

    inputs = {}
    for i, (batch, cells) in enumerate([(1, (3, 5)), (3, (5, 2))]):
        inputs[f"image{i}"], inputs[f"features{i}"] = random_inputs(
            model.config, b=batch, h=cells[0], w=cells[1], seed=i
        )
    save_file(inputs, str(tmp_path / "inputs.safetensors"))
    code = f"""
        import json, sys, torch
        from safetensors.torch import load_file, save_file
        inputs = load_file(r"{tmp_path / "inputs.safetensors"}")
        outputs = {{}}
        portable = torch.export.load(r"{portable_file}").module()  # standard ops: featlift not imported yet
        for i in range(2):
            outputs[f"portable{{i}}"] = portable(inputs[f"image{{i}}"], inputs[f"features{{i}}"])
        assert "featlift" not in sys.modules
        import featlift.ops  # registers featlift::local_attend, which the default program calls
        extra = {{"featlift.json": ""}}
        program = torch.export.load(r"{op_file}", extra_files=extra).module()
        for i in range(2):
            outputs[f"op{{i}}"] = program(inputs[f"image{{i}}"], inputs[f"features{{i}}"])
        save_file({{k: v.contiguous() for k, v in outputs.items()}}, r"{tmp_path / "outputs.safetensors"}")
        import featlift.export  # what the CLI imports for every command: onnx & co. only when exporting to ONNX
        from featlift.cli import build_parser
        build_parser().parse_args(["export", "dinov2_s14", "--out", "x.onnx"])
        loaded = sorted(m for m in ("onnx", "onnxruntime", "onnxscript") if m in sys.modules)
        assert not loaded, loaded
        print(extra["featlift.json"])
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads(result.stdout[result.stdout.index("{") :])
    assert meta["featlift.attender"] == "featlift::local_attend" and meta["featlift.iters"] == "2"
    outputs = load_file(str(tmp_path / "outputs.safetensors"))
    for i in range(2):
        with torch.inference_mode():
            want = model(inputs[f"image{i}"], inputs[f"features{i}"], iters=2).contiguous()
        torch.testing.assert_close(outputs[f"op{i}"], want, atol=1e-5, rtol=0)
        torch.testing.assert_close(outputs[f"portable{i}"], want, atol=1e-5, rtol=0)


# -- errors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--format", "tflite", "--out", "x.tflite"], "invalid choice: 'tflite'"),
        (["--out", "x.onnx", "--iters", "0"], "--iters: must be at least 1, got 0"),
        (["--out", "x.onnx", "--opset", "12"], "--opset: must be at least 18, got 12"),
        (["--out", "x.onnx", "--example-cells", "1x4"], "--example-cells must be at least 2x2"),
    ],
)
def test_cli_refuses_bad_flag_values_while_parsing(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as info:
        cli.main(["export", "dinov2_s14", *extra])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--out", "{tmp}/x.bin"], "--format is missing"),
        (["--out", "{tmp}/x.onnx", "--opset", "999"], "opset must be an integer from 18"),
        (["--out", "{tmp}/x.onnx", "--dtype", "bfloat16"], "dtype must be one of float32, float16"),
        (["--out", "{tmp}/x.pt2", "--opset", "18"], "--opset and --no-optimize apply to --format onnx only"),
        (["--out", "{tmp}/x.onnx", "--with-backbone"], "names no backbone"),
        (["--out", "{tmp}/x.onnx", "--weights", "{tmp}/missing.safetensors"], "missing.safetensors"),
        (["--out", "{tmp}", "--format", "onnx"], "is a directory"),
        (["--out", "{tmp}/x.onnx/"], "names a folder (it ends in a slash)"),
    ],
)
def test_cli_reports_bad_flags_and_files(model_dir, tmp_path, capsys, extra, message):
    directory, _ = model_dir
    argv = ["export", str(directory), *(a.replace("{tmp}", str(tmp_path)) for a in extra)]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("featlift: error:") and message in err
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "x.pt2").exists()


def test_cli_reports_an_unknown_model(tmp_path, capsys):
    assert cli.main(["export", "no_such_upsampler", "--out", str(tmp_path / "x.pt2")]) == 1
    assert "unknown upsampler 'no_such_upsampler'" in capsys.readouterr().err


def test_missing_onnx_packages_name_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now raises ImportError
    with pytest.raises(MissingDependencyError, match=r'onnxscript.*pip install "featlift\[export\]"'):
        export_onnx(featlift.UPLiFT(tiny_config()), tmp_path / "x.onnx")
    assert cli.main(["export", "dinov2_s14", "--out", str(tmp_path / "x.onnx"), "--no-pretrained"]) == 1
    assert 'pip install "featlift[export]"' in capsys.readouterr().err


def test_api_refuses_what_a_model_object_cannot_do(tmp_path):
    model = featlift.UPLiFT(tiny_config())
    with pytest.raises(ConfigError, match="bare UPLiFT has none"):
        export_pt2(model, tmp_path / "x.pt2", with_backbone=True)
    with pytest.raises(ConfigError, match="already has its weights"):
        export_pt2(model, tmp_path / "x.pt2", options=featlift.LoadOptions(weights=tmp_path / "w.safetensors"))
    with pytest.raises(ConfigError, match="at least 2x2"):
        export_pt2(model, tmp_path / "x.pt2", example_cells=(1, 4))
    with pytest.raises(ConfigError, match="dtype must be one of"):
        export_pt2(model, tmp_path / "x.pt2", dtype=torch.int8)
    with pytest.raises(ConfigError, match="iters must be a positive integer"):
        export_pt2(model, tmp_path / "x.pt2", iters=0)
