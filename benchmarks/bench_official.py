"""The official UPLiFT code's fast mode against featlift on the same work: one 2x step of the DINOv2-S/14
model at 448 px, bfloat16, batch 1 (each a flag).

The official code (the UPLiFT authors' repository, MIT licence) is not a dependency of featlift and is
never downloaded: give the folder of a checkout, the one that holds ``uplift/uplift.py``, as
``--uplift-root``. It is imported from there (``import uplift.uplift``, ``uplift.fast``) and needs what it
needs itself (torchvision; omegaconf, or pyyaml as a stand-in for reading its config). Without the folder
the script prints "not found" and exits 0, so a check script can always run it.

    python benchmarks/bench_official.py --uplift-root ../UPLiFT --device cuda
    python benchmarks/bench_official.py --uplift-root ../UPLiFT --device cuda --dtype float32 --size 896

What is timed, one variant after the other, each after ``--warmup`` calls (the fast mode's first call
compiles: tens of seconds, more with ``--compile-mode max-autotune``, the authors' default; each
variant's line is printed as soon as it is measured, so a timeout during that compilation keeps the
others' figures):

* ``official``: their ``UPLiFT`` module as published (``low_mem=False``: all shifted copies stacked);
* ``official fast``: the same model through their ``uplift.fast.make_fast`` (BatchNorm folded,
  channels_last, their Triton attender, ``torch.compile``; ``--no-compile`` leaves the compiler out);
* ``featlift``: featlift's UPLiFT, ``iters=1``, under ``torch.inference_mode`` (its lean path).

Both implementations load the same weights, the reference fixture
``tests/fixtures/uplift_reference/dinov2_s14/weights.safetensors`` (the published key layout, random
values), and get the same inputs, so their outputs are compared too: the largest absolute difference
from featlift's output, relative to featlift's largest value. Beyond ``--tolerance`` (default 1e-2 in
float32, where their fast mode turns TF32 on, and 5e-2 in half precision) the script prints MISMATCH.

Exit codes: 0 measured (or the code not found), 2 the code is there but cannot be imported, built or
run (the message says why), 3 the outputs disagree.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types
from pathlib import Path

from _common import Stopwatch, random_inputs, synchronize

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "uplift_reference" / "dinov2_s14"
CONFIG_IN_CHECKOUT = Path("uplift") / "configs" / "uplift_dinov2-s14.yaml"


class OfficialCodeError(RuntimeError):
    """The official code is there but cannot be imported, built or run."""


def _namespace(value):
    """A parsed YAML value with attribute access, as omegaconf gives it (hasattr/getattr included)."""
    if isinstance(value, dict):
        return types.SimpleNamespace(**{k: _namespace(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_namespace(v) for v in value]
    return value


def _read_config(root: Path):
    """(config, where it came from): the checkout's own DINOv2-S/14 config, else the fixture's copy of the
    published one; read with omegaconf when installed (as the official code does), else pyyaml."""
    path = root / CONFIG_IN_CHECKOUT
    if not path.is_file():
        path = FIXTURE / "config.yaml"
    try:
        from omegaconf import OmegaConf
    except ImportError:
        import yaml

        return _namespace(yaml.safe_load(path.read_text())), f"{path} (pyyaml; omegaconf is not installed)"
    return OmegaConf.load(path), str(path)


def _official_models(root: Path, args, device, dtype) -> dict:
    """name -> callable(image, features) for the official code in ``root``; raises OfficialCodeError."""
    from safetensors.torch import load_file

    sys.path.insert(0, str(root))
    try:
        from uplift.uplift import UPLiFT
    except Exception as err:
        raise OfficialCodeError(f"cannot import uplift.uplift from {root}: {type(err).__name__}: {err}") from err
    cfg, where = _read_config(root)
    print(f"official config: {where}")
    try:
        try:
            model = UPLiFT(cfg.backbone.channel, cfg.backbone.patch, cfg.uplift, dtype=dtype)
        except TypeError:  # a checkout from before the dtype argument
            model = UPLiFT(cfg.backbone.channel, cfg.backbone.patch, cfg.uplift).to(dtype)
        model.load_state_dict(load_file(str(args.weights)))
        model.enable_iterative(1)
        model = model.to(device).eval()
    except Exception as err:
        raise OfficialCodeError(f"cannot build the official model: {type(err).__name__}: {err}") from err
    models = {"official": model}
    try:
        from uplift.fast import make_fast
    except ImportError as err:
        print(f"official fast mode: not in this checkout ({err}); timing the plain module only")
        return models
    try:
        fast = make_fast(
            model,
            image_size=None,
            compile=not args.no_compile,
            compile_mode=args.compile_mode,
            warmup=False,
            device=device,
        )
    except Exception as err:
        raise OfficialCodeError(f"make_fast failed: {type(err).__name__}: {err}") from err
    models["official fast"] = fast
    return models


def _measure(model, image, features, device, args) -> tuple[dict, object]:
    """Warm-up calls (the first one timed on its own: compilation), then ``args.repeats`` timed calls with
    their peak memory; (figures, the output)."""
    import torch

    from featlift._peak_memory import PeakMemory

    times, peaks = [], []
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model(image, features)
        synchronize(device)
        first = time.perf_counter() - t0
        for _ in range(args.warmup - 1):
            out = model(image, features)
        for _ in range(args.repeats):
            with PeakMemory(device) as peak, Stopwatch(device) as watch:
                model(image, features)
            times.append(watch.seconds)
            peaks.append(peak.peak)
    known = [p for p in peaks if p is not None]
    row = {"first_call_s": first, "time_s": statistics.median(times), "times_s": times}
    row["peak_bytes"] = max(known) if known else None
    return row, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uplift-root", type=Path, default=None, help="a checkout of the official code")
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="calls before the timed ones (at least 1)")
    parser.add_argument("--no-compile", action="store_true", help="their fast mode without torch.compile")
    parser.add_argument("--compile-mode", default="max-autotune")
    parser.add_argument("--weights", type=Path, default=FIXTURE / "weights.safetensors")
    parser.add_argument("--tolerance", type=float, default=None)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)

    root = args.uplift_root
    if root is None or not (root / "uplift" / "uplift.py").is_file():
        where = "no --uplift-root given" if root is None else f"no uplift/uplift.py under {root}"
        print(f"official UPLiFT code: not found ({where}); nothing to compare")
        return 0

    import torch

    import featlift

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    tolerance = args.tolerance or (1e-2 if dtype == torch.float32 else 5e-2)
    try:
        models = _official_models(root.resolve(), args, device, dtype)
    except OfficialCodeError as err:
        print(f"official UPLiFT code at {root}: {err}")
        return 2
    ours = featlift.build_upsampler("dinov2_s14", weights=args.weights, device=device, dtype=dtype).eval()
    models = {"featlift": lambda image, features: ours(image, features, iters=1), **models}
    image, features = random_inputs(args.size, device, dtype)
    print(f"one 2x step, {tuple(features.shape)} features, {tuple(image.shape)} image, {args.dtype}, {device}")

    # One variant after the other, each finished (warm-ups, timed calls, its line printed) before the next
    # starts: the fast mode compiles in its first call, and a step timeout there keeps the others' lines.
    rows, outputs, mismatched = [], {}, []
    for name, model in models.items():
        try:
            row, outputs[name] = _measure(model, image, features, device, args)
        except Exception as err:
            print(f"{name} failed: {type(err).__name__}: {err}", flush=True)
            return 2
        reference = outputs["featlift"].float()
        out = outputs[name]
        scale = reference.abs().max().item() or 1.0
        diff = (out.float() - reference).abs().max().item() / scale if out.shape == reference.shape else float("inf")
        if diff > tolerance:
            mismatched.append(name)
        row.update(variant=name, relative_diff=diff, shape=list(out.shape))
        rows.append(row)
        peak = "-" if row["peak_bytes"] is None else f"{row['peak_bytes'] / 1e6:.1f} MB peak"
        print(
            f"{name}: first call {row['first_call_s']:.1f} s, median {row['time_s'] * 1e3:.3f} ms, {peak}, "
            f"max difference from featlift {diff:.2e} of its range",
            flush=True,
        )

    base = rows[0]["time_s"]
    print(
        "\n| variant | first call (s) | median time (ms) | vs featlift | peak memory (MB) | max diff / featlift's range |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        peak = "-" if row["peak_bytes"] is None else f"{row['peak_bytes'] / 1e6:.1f}"
        print(
            f"| {row['variant']} | {row['first_call_s']:.1f} | {row['time_s'] * 1e3:.3f} | {row['time_s'] / base:.2f}x "
            f"| {peak} | {row['relative_diff']:.2e} |"
        )
    if args.json:
        meta = {"size": args.size, "dtype": args.dtype, "device": str(device), "tolerance": tolerance}
        Path(args.json).write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    if mismatched:
        print(f"\nMISMATCH: {', '.join(mismatched)} differ(s) from featlift by more than {tolerance:g} of its range")
        return 3
    print(f"\nall outputs agree with featlift within {tolerance:g} of its range")
    return 0


if __name__ == "__main__":
    sys.exit(main())
