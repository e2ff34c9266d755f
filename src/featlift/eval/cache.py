"""Eval's name for the one backbone-feature cache, :mod:`featlift._feature_cache` (kept while
:mod:`featlift.eval.upsamplers` imports it from here)."""

from __future__ import annotations

from .._feature_cache import FeatureCache as BackboneCache
from .._feature_cache import fingerprint

__all__ = ["BackboneCache", "fingerprint"]
