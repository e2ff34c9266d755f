"""``featlift eval``: the field's dense-probe benchmarks (linear-probe segmentation and depth, video
label propagation) for any upsampler, side by side.

- :mod:`~featlift.eval.datasets`: the standard on-disk layouts (VOC, ADE20K, Cityscapes, COCO-Stuff,
  NYUv2, DAVIS 2017) and the protocol's resize + centre crop.
- :mod:`~featlift.eval.metrics`: mIoU / pixel accuracy, depth errors, J&F.
- :mod:`~featlift.eval.video`: label propagation with a top-k feature affinity.
- :mod:`~featlift.eval.upsamplers`: what ``--upsampler`` names (featlift models, bilinear/nearest/bicubic,
  ``hub:REPO:ENTRY``) as one feature source interface.
- :mod:`~featlift.eval.probe`: training and evaluating the 1x1 linear probe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

if TYPE_CHECKING:
    from .datasets import make_dataset
    from .probe import ProbeConfig
    from .run import evaluate, evaluate_video, format_table
    from .upsamplers import make_source

__all__ = ["ProbeConfig", "evaluate", "evaluate_video", "format_table", "make_dataset", "make_source"]

# Imported on first use: the command line's parser imports nothing heavy.
__getattr__, __dir__ = lazy_attributes(
    __name__,
    {
        "ProbeConfig": ".probe",
        "evaluate": ".run",
        "evaluate_video": ".video",
        "format_table": ".run",
        "make_dataset": ".datasets",
        "make_source": ".upsamplers",
    },
)
