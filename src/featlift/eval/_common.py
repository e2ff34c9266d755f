"""What the probe runs (:mod:`.run`) and the video runs (:mod:`.video`) share: the feature sources one at a
time, joining the processes, writing the report."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .._atomic import atomic_write
from .._distributed import Dist, init_distributed, process_device
from .._feature_cache import FeatureCache
from .._tensors import dtype_str
from .upsamplers import featlift_dtype, make_source

__all__ = ["dtype_name", "label", "make_sources", "processes", "write_report"]


def label(spec) -> str | None:
    """An upsampler or backbone as the report names it: its text, else a loaded Upsampler's, a
    UserModule's or a Backbone's name, a callable's name (None stays None)."""
    if spec is None or isinstance(spec, str):
        return spec
    return getattr(spec, "name", None) or getattr(spec, "__name__", None) or type(spec).__name__


def dtype_name(options: dict) -> str:
    """The dtype featlift models named by their spec are loaded in, as the report names it (``options``:
    :func:`~featlift.eval.upsamplers.make_source`'s keywords, the device resolved by :func:`processes`)."""
    given = {key: options[key] for key in ("amp", "device") if key in options}
    return dtype_str(featlift_dtype(options.get("dtype"), **given))


def make_sources(upsamplers: list, options: dict):
    """Each upsampler as a feature source, one at a time (only one model is held at once)."""
    if not upsamplers:
        raise ValueError("name at least one upsampler to evaluate (--upsampler, repeatable)")
    named = [spec for spec in upsamplers if isinstance(spec, str)]
    twice = sorted({spec for spec in named if named.count(spec) > 1})
    if twice:  # before any model is loaded or probe trained
        raise ValueError(f"upsampler(s) {twice} named twice; give each one once")
    seen = set()
    for spec in upsamplers:
        source = make_source(spec, **options)
        if source.name in seen:
            raise ValueError(f"upsampler {source.name!r} is named twice; give each one once")
        seen.add(source.name)
        yield source


def processes(options: dict, feature_cache) -> Dist:
    """Join the torchrun process group (if any), put this process on its device, attach the cache."""
    d = init_distributed(None if options.get("device") is None else str(options["device"]))
    options["device"] = process_device(options.get("device"), d)
    if feature_cache is not None:
        options["feature_cache"] = FeatureCache(feature_cache)
    return d


def write_report(report: dict, out: str | os.PathLike | None) -> None:
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(Path(out)) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
