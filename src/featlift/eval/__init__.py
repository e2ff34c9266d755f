"""``featlift eval``: the field's dense-probe benchmarks (linear-probe segmentation and depth, video
label propagation) for any upsampler, side by side.

- :mod:`~featlift.eval.protocols`: every task's named protocols, each setting with its public source.
- :mod:`~featlift.eval.tasks`: what differs between the probe tasks (target, loss, prediction, metric).
- :mod:`~featlift.eval.datasets`: the standard on-disk layouts (VOC, ADE20K, Cityscapes, COCO-Stuff,
  NYUv2, DAVIS 2017), the class tables and the protocols' transforms.
- :mod:`~featlift.eval.metrics`: mIoU / pixel accuracy, depth errors; :mod:`~featlift.eval.depth`: the
  depth probe's head and losses.
- :mod:`~featlift.eval.video`: label propagation with a top-k feature affinity, DAVIS J&F, the video run.
- :mod:`~featlift.eval.upsamplers`: what ``--upsampler`` names (featlift models, bilinear/nearest/bicubic,
  ``hub:REPO:ENTRY``) as one feature source interface.
- :mod:`~featlift.eval.probe`: training and evaluating the 1x1 linear probe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

if TYPE_CHECKING:
    from .datasets import make_dataset
    from .protocols import PROTOCOLS, protocol
    from .run import evaluate, format_table
    from .upsamplers import make_source
    from .video import evaluate_video

__all__ = ["PROTOCOLS", "evaluate", "evaluate_video", "format_table", "make_dataset", "make_source", "protocol"]

# Imported on first use: the command line's parser imports nothing heavy.
__getattr__, __dir__ = lazy_attributes(
    __name__,
    {
        "PROTOCOLS": ".protocols",
        "protocol": ".protocols",
        "evaluate": ".run",
        "evaluate_video": ".video",
        "format_table": ".run",
        "make_dataset": ".datasets",
        "make_source": ".upsamplers",
    },
)
