"""The shape of the package: no import cycles, a pinned public API, every exception in one place, and a
hub entry point file that says what it needs. A change to the API shows up as a diff of this file."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import featlift

from .conftest import REPO

SRC = REPO / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(importer: str, is_package: bool, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _import_graph() -> dict[str, set[str]]:
    """featlift module -> the featlift modules it imports, the ones under ``if TYPE_CHECKING:`` and inside
    functions included (``from pkg import name`` counts as importing ``pkg.name`` when that is a module)."""
    files = {_module_name(p): p for p in SRC.joinpath("featlift").rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, package, node.level, node.module)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            graph[name].update(t for t in targets if t in files and t != name)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules around it, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycles_inside_featlift():
    graph = _import_graph()
    assert len(graph) > 50 and graph["featlift.cli"], "the walk found the package"
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    """Negative control: a back edge added by hand is reported."""
    graph = _import_graph()
    graph["featlift.errors"].add("featlift.cli")
    found = _cycle(graph)
    assert found is not None and found[0] == found[-1] and "featlift.errors" in found


def test_parsing_the_command_line_imports_no_torch():
    code = "import sys, featlift.cli; featlift.cli.build_parser(); print(sorted(m for m in sys.modules if m in ('torch', 'numpy', 'timm', 'gradio')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_hubconf_entries_are_keyword_only_and_name_what_the_first_call_imports(tmp_path):
    spec = importlib.util.spec_from_file_location("featlift_hubconf", REPO / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    entries = [f for n, f in vars(hubconf).items() if inspect.isfunction(f) and not n.startswith("_")]
    assert {f.__name__ for f in entries} == set(featlift.list_upsamplers())
    for entry in entries:
        assert inspect.signature(entry).parameters["pretrained"].kind is inspect.Parameter.KEYWORD_ONLY
    code = (  # the first call: a download (offline here, so it fails cleanly), then a model and one image
        "import json, sys, torch, featlift\n"
        "try:\n"
        "    featlift.load_upsampler('dinov2_s14', device='cpu')\n"
        "except featlift.DownloadError:\n"
        "    pass\n"
        "up = featlift.load_upsampler('dinov2_s14', pretrained=False, device='cpu')\n"
        "up(torch.rand(3, 28, 28))\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    imported = set(json.loads(run.stdout))
    import importlib.metadata as md

    modules_of = {}
    for module, dists in md.packages_distributions().items():
        for dist in dists:
            modules_of.setdefault(dist.lower().replace("_", "-"), set()).add(module)
    core = [
        req.split(">")[0].split("=")[0].strip().lower().replace("_", "-")
        for req in md.requires("featlift")
        if "extra ==" not in req
    ]
    used = {dist: modules_of.get(dist, set()) & imported for dist in core}
    used = {dist: modules for dist, modules in used.items() if modules}
    assert len(used) >= 6, used
    for dist, modules in used.items():  # each core distribution the call imports is named by one of its modules
        assert modules & set(hubconf.dependencies), f"hubconf.dependencies misses {dist} (imports {sorted(modules)})"
    named = set().union(*used.values())
    assert set(hubconf.dependencies) <= named, sorted(set(hubconf.dependencies) - named)


def _public_modules() -> list[str]:
    names = ["featlift"] + [m.name for m in pkgutil.walk_packages(featlift.__path__, "featlift.")]
    return sorted(n for n in names if not any(part.startswith("_") for part in n.split(".")[1:]))


def test_every_exception_lives_in_errors_under_featlift_error():
    for name in [m.name for m in pkgutil.walk_packages(featlift.__path__, "featlift.")]:
        if name.endswith("__main__"):
            continue
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == name:
                assert name == "featlift.errors", f"{name}.{attr} is an exception defined outside featlift.errors"
    for value in vars(featlift.errors).values():
        if inspect.isclass(value) and issubclass(value, Exception) and value.__module__ == "featlift.errors":
            assert issubclass(value, featlift.FeatliftError), value


@pytest.mark.parametrize("name", _public_modules())
def test_public_api_is_pinned(name):
    """Each public module's ``__all__``, exactly. Changing the API means changing this table."""
    module = importlib.import_module(name)
    assert name in PUBLIC_API, (
        f"{name} is a new public module: add it to PUBLIC_API (or name it _{name.rsplit('.', 1)[-1]})"
    )
    exported = sorted(module.__all__)
    assert exported == sorted(PUBLIC_API[name])
    for attr in exported:
        assert getattr(module, attr, None) is not None, f"{name}.{attr} is in __all__ but missing"


def test_every_pinned_module_still_exists():
    assert set(PUBLIC_API) == set(_public_modules())


PUBLIC_API = {
    "featlift": [
        "CheckpointError",
        "ConfigError",
        "DataError",
        "DatasetError",
        "DatasetFormatError",
        "DownloadError",
        "ExpiredResultError",
        "FeatliftError",
        "InsufficientMemoryError",
        "InvalidUploadError",
        "LoadOptions",
        "MissingDependencyError",
        "UPLiFT",
        "UnknownModelError",
        "UntileableError",
        "UpliftConfig",
        "UploadError",
        "Upsampler",
        "__version__",
        "build_upsampler",
        "list_upsamplers",
        "load_upsampler",
    ],
    "featlift.backbones": [
        "BACKBONE_CLASSES",
        "Backbone",
        "DiffusersVAE",
        "TimmViT",
        "agreed_normalisation",
        "image_normalisation",
        "load_backbone",
    ],
    "featlift.backbones.base": ["Backbone"],
    "featlift.backbones.sd_vae": ["DiffusersVAE"],
    "featlift.backbones.timm_vit": ["TimmViT"],
    "featlift.cli": ["build_parser", "main"],
    "featlift.config": [
        "BACKBONE_SOURCES",
        "BLOCK_TYPES",
        "BackboneConfig",
        "BlockGroupConfig",
        "DecoderConfig",
        "DecoderStageConfig",
        "DownConfig",
        "EncoderConfig",
        "EncoderStageConfig",
        "IMAGENET_MEAN",
        "IMAGENET_STD",
        "NORM_TYPES",
        "RESAMPLE_MODES",
        "RefinerConfig",
        "UpConfig",
        "UpliftConfig",
    ],
    "featlift.demo": ["DemoEngine", "DemoResult", "build_app", "serve"],
    "featlift.errors": [
        "CheckpointError",
        "ConfigError",
        "DataError",
        "DatasetError",
        "DatasetFormatError",
        "DownloadError",
        "ExpiredResultError",
        "FeatliftError",
        "InsufficientMemoryError",
        "InvalidUploadError",
        "MissingDependencyError",
        "UnknownModelError",
        "UntileableError",
        "UploadError",
    ],
    "featlift.eval": ["ProbeConfig", "evaluate", "evaluate_video", "format_table", "make_dataset", "make_source"],
    "featlift.eval.datasets": [
        "ADE20K_CLASSES",
        "CITYSCAPES_CLASSES",
        "CITYSCAPES_LABELID_TO_TRAINID",
        "COCOSTUFF27_CLASSES",
        "COCOSTUFF_CLASSES",
        "COCOSTUFF_RAW",
        "DATASETS",
        "DEPTH_DATASETS",
        "IGNORE_INDEX",
        "SEGMENTATION_DATASETS",
        "SPLITS",
        "VIDEO_DATASETS",
        "VOC_CLASSES",
        "make_dataset",
        "resize_and_crop",
    ],
    "featlift.eval.metrics": ["DELTA1_THRESHOLD", "DepthMetric", "MIN_DEPTH", "SegmentationMetric"],
    "featlift.eval.probe": ["ProbeConfig", "TASKS", "evaluate_probe", "slug", "train_probe"],
    "featlift.eval.run": ["evaluate", "evaluate_video", "format_table", "save_picture"],
    "featlift.eval.upsamplers": ["FeatureSource", "INTERPOLATIONS", "make_source"],
    "featlift.eval.video": ["BOUND_TH", "DEFAULT_MAX_AFFINITY_ELEMENTS", "boundary_map", "j_and_f", "propagate"],
    "featlift.export": ["DEFAULT_OPSET", "ExportAttender", "ONNX_DTYPES", "PT2_DTYPES", "export_onnx", "export_pt2"],
    "featlift.extract": [
        "ExtractionSummary",
        "FEATURES_SUFFIX",
        "Job",
        "PCA_SUFFIX",
        "extract",
        "load_head",
        "plan_jobs",
    ],
    "featlift.hub": ["download", "download_diffusers_vae", "is_repo_id", "push_pretrained_dir"],
    "featlift.modeling": ["DecoderStep", "GuidanceEncoder", "LocalAttender", "Refiner", "UPLiFT"],
    "featlift.modeling.attender": ["LocalAttender"],
    "featlift.modeling.blocks": [
        "BLOCK_CONVS",
        "BlockGroup",
        "ConvBlock",
        "DOWN_OPS",
        "DownBlock",
        "LayerNorm2d",
        "NORMS",
        "UP_OPS",
        "UpBlock",
        "add_residual",
        "as_parts",
        "cat_parts",
        "conv_parts",
    ],
    "featlift.modeling.decoder": ["DecoderStep"],
    "featlift.modeling.encoder": ["GuidanceEncoder"],
    "featlift.modeling.guidance": [
        "GuidanceInputs",
        "GuidanceMaps",
        "GuidanceReader",
        "GuidedStage",
        "RESAMPLES",
        "Resample",
        "guidance_image",
    ],
    "featlift.modeling.refiner": ["Refiner"],
    "featlift.modeling.uplift": ["UPLiFT"],
    "featlift.ops": [
        "IMPLS",
        "NEIGHBOURHOOD_SIZES",
        "Offsets",
        "local_attend",
        "local_attend_reference",
        "neighbourhood_offsets",
        "portable_local_attend",
        "resolve_impl",
        "triton_available",
    ],
    "featlift.ops.local_attend": [
        "AttendPolicy",
        "ENV_VAR",
        "IMPLS",
        "attend_policy",
        "check_impl",
        "local_attend",
        "local_attend_reference",
        "neighbourhood_offsets",
        "resolve_impl",
        "use_attend_policy",
    ],
    "featlift.training": [
        "ImageDataset",
        "LOSSES",
        "TrainConfig",
        "depth_targets",
        "downsample",
        "evaluate",
        "feature_distance",
        "list_images",
        "multi_depth_loss",
        "train",
    ],
    "featlift.training.config": ["TrainConfig"],
    "featlift.training.data": ["ImageDataset", "list_images"],
    "featlift.training.objective": ["LOSSES", "depth_targets", "downsample", "feature_distance", "multi_depth_loss"],
    "featlift.training.trainer": ["build", "evaluate", "train"],
    "featlift.viz": ["PcaBasis", "fit_pca", "pca_rgb", "shared_pca"],
    "featlift.weights": [
        "CONFIG_NAME",
        "WEIGHTS_NAME",
        "load_into",
        "read_config_json",
        "read_pretrained_dir",
        "read_state_dict",
        "save_pretrained",
    ],
}
