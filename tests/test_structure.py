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
# Each public module's __all__, exactly: changing the API means changing this file (a visible diff).
PUBLIC_API = json.loads((Path(__file__).parent / "public_api.json").read_text())


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
        f"{name} is a new public module: add it to tests/public_api.json (or name it _{name.rsplit('.', 1)[-1]})"
    )
    exported = sorted(module.__all__)
    assert exported == sorted(PUBLIC_API[name])
    for attr in exported:
        assert getattr(module, attr, None) is not None, f"{name}.{attr} is in __all__ but missing"


def test_every_pinned_module_still_exists():
    assert set(PUBLIC_API) == set(_public_modules())
