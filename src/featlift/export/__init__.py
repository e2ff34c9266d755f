"""Export featlift upsamplers for runtimes outside featlift: ONNX and ``torch.export``.

- :func:`export_onnx`: an ONNX model with inputs ``image`` (+ ``features``) and output ``upsampled``,
  dynamic in batch and spatial size, the Local Attender in standard ONNX ops (ONNX Runtime, TensorRT).
- :func:`export_pt2`: a ``torch.export`` ExportedProgram (``torch.export.save``), dynamic in the same way.

Both take a registered name, a model directory, a config or a Hub repo id, or an
:class:`~featlift.Upsampler` / :class:`~featlift.UPLiFT` object; ``with_backbone=True`` puts the backbone
into the same graph. The command line is ``featlift export``.

``onnx``, ``onnxscript`` and ``onnxruntime`` are imported only when needed (``pip install
"featlift[export]"``), never when this package is imported.
"""

from __future__ import annotations

from ._api import DEFAULT_OPSET, ONNX_DTYPES, PT2_DTYPES, export_onnx, export_pt2
from ._attend import ExportAttender

__all__ = [
    "DEFAULT_OPSET",
    "ONNX_DTYPES",
    "PT2_DTYPES",
    "ExportAttender",
    "export_onnx",
    "export_pt2",
]
