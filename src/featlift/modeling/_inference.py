"""The inference path: when UPLiFT runs lean, and the folded weights that path uses.

UPLiFT computes one function in two ways.

* The **autograd path** runs the plain modules: conv -> BatchNorm -> ReLU, real channel concatenations,
  out-of-place adds, every guidance map at full resolution. It is what training and gradients need.
* The **lean path** computes the same function (up to float reassociation) for less time and memory:
  BatchNorm folded into the preceding conv, the parts of a concatenation convolved separately instead of
  being concatenated, in-place adds and ReLUs, the deepest guidance map computed only on the subgrids
  that are read (:class:`~featlift.modeling.guidance.GuidanceMaps`), and on the CPU channels_last memory
  (oneDNN convolves [B, H, W, C] memory without layout reorders; the fused attender then writes its
  output in that layout directly).

:func:`plan` is the one place that chooses: the lean path runs when the model is in eval mode and autograd
is off (``torch.no_grad()`` / ``torch.inference_mode()``), because in-place ops would corrupt a graph
that autograd records. :meth:`UPLiFT.forward <featlift.modeling.uplift.UPLiFT.forward>` calls it once
per call and hands the resulting :class:`Plan` down explicitly: no block looks at global state.

Folded weights are cached per block (:class:`FoldedConv`) and refolded whenever a source tensor's value,
dtype or device changes (``load_state_dict``, an optimiser step, an EMA update through ``.data``, any
in-place edit, ``.to()``): each use compares the sources with the copies kept from the last fold.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["AUTOGRAD", "FoldedConv", "Plan", "fold_batchnorm", "plan"]


@dataclass(frozen=True)
class Plan:
    """How one forward call runs.

    ``lean``: take the lean path (see the module docstring). ``channels_last``: lay activations out
    [B, H, W, C] in memory; the attender's output and the model's output follow.
    """

    lean: bool
    channels_last: bool


AUTOGRAD = Plan(lean=False, channels_last=False)


def plan(model: nn.Module, like: Tensor, channels_last: bool | None = None) -> Plan:
    """The plan for running ``model`` on inputs like ``like``: lean when autograd is off and every
    submodule is in eval mode (a submodule left in training mode needs its batch statistics); channels_last
    on the lean path on the CPU unless ``channels_last`` (True/False) overrides it."""
    lean = not torch.is_grad_enabled() and not any(m.training for m in model.modules())
    if channels_last is None:
        channels_last = lean and like.device.type == "cpu"
    return Plan(lean=lean, channels_last=channels_last)


def fold_batchnorm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """(weight, bias) of ``conv`` followed by eval-mode ``norm`` (running statistics) as one conv."""
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    bias = -norm.running_mean * scale
    if norm.bias is not None:
        bias = bias + norm.bias
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    weight = conv.weight * scale.view(-1, 1, 1, 1).to(conv.weight.dtype)
    return weight.detach(), bias.to(conv.weight.dtype).detach()


def _same(kept: Tensor | None, now: Tensor | None) -> bool:
    if kept is None or now is None:
        return kept is now
    return kept.shape == now.shape and kept.dtype == now.dtype and kept.device == now.device and torch.equal(kept, now)


class FoldedConv:
    """A conv with the BatchNorm after it folded in, computed on first use and cached.

    Every use compares the source tensors (conv weight and bias, norm weight, bias and running
    statistics) with the copies kept from the last fold, and refolds when any differs in value, shape,
    dtype or device. A value comparison, not autograd's version counter, so edits through ``.data``
    (EMA updates), tensors made under ``torch.inference_mode()`` and ``.to()`` are all seen; it reads
    the weights once, far cheaper than the convolutions they feed. The owning block also calls
    :meth:`clear` from ``_apply`` (``.to()``, ``.half()``, ...) to drop copies on the old device at once.
    Norms other than BatchNorm (LayerNorm) are not folded: :meth:`get` returns None for them.
    """

    def __init__(self) -> None:
        self._sources: tuple[Tensor | None, ...] | None = None
        self._eps: float | None = None
        self._value: tuple[Tensor, Tensor] | None = None

    def clear(self) -> None:
        self._sources = self._eps = self._value = None

    def get(self, conv: nn.Conv2d, norm: nn.Module) -> tuple[Tensor, Tensor] | None:
        if not isinstance(norm, nn.BatchNorm2d) or norm.running_var is None:
            return None
        if torch.compiler.is_compiling():  # traced into the graph: the compiled code folds on each call
            return fold_batchnorm(conv, norm)
        sources = (conv.weight, conv.bias, norm.weight, norm.bias, norm.running_mean, norm.running_var)
        kept = self._sources
        if kept is None or norm.eps != self._eps or not all(_same(a, b) for a, b in zip(kept, sources, strict=True)):
            with torch.no_grad():
                self._value = fold_batchnorm(conv, norm)
                self._sources = tuple(None if t is None else t.detach().clone() for t in sources)
            self._eps = norm.eps
        return self._value
