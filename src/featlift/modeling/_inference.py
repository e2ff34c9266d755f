"""The inference path: when UPLiFT runs lean, and the folded weights that path uses.

UPLiFT computes one function in two ways.

* The **autograd path** runs the plain modules: conv -> BatchNorm -> ReLU, real channel concatenations,
  out-of-place adds, every guidance map at full resolution. It is what training and gradients need.
* The **lean path** computes the same function (up to float reassociation) for less time and memory:
  BatchNorm folded into the preceding conv, the parts of a concatenation convolved separately instead of
  being concatenated, in-place adds and ReLUs, the deepest guidance map computed only on the subgrids
  that are read (:class:`~featlift.modeling.guidance.GuidanceMaps`), and on the CPU channels_last memory
  (oneDNN convolves [B, H, W, C] memory without layout reorders; the attender's embedding bags then
  come out in that layout directly).

:func:`plan` is the one place that chooses: the lean path runs when the model is in eval mode and autograd
is off (``torch.no_grad()`` / ``torch.inference_mode()``), because in-place ops would corrupt a graph
that autograd records. :meth:`UPLiFT.forward <featlift.modeling.uplift.UPLiFT.forward>` calls it once
per call and hands the resulting :class:`Plan` down explicitly: no block looks at global state.

Folded weights are recomputed from the live weights on every forward call and shared by the uses within
that call (:func:`fold_scope`, which :meth:`UPLiFT.forward <featlift.modeling.uplift.UPLiFT.forward>`
opens): the decoder's convs run once per iteration but fold once per call. So an edited weight is never
served stale, whatever edited it (``load_state_dict``, an optimiser step, an EMA update through
``.data``, which autograd's version counters do not see, ``.to()``), and no tensor value is read back to
decide anything: on CUDA a forward never waits for the GPU, and it can be captured in a CUDA graph (the
fold is then replayed with it, reading the weights as they are at replay). Folding costs one elementwise
pass over each conv weight: about 0.3 ms for dinov2_s14's nine folded convs on the CPU, 0.02% of a 448 px
call.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["AUTOGRAD", "FoldedConv", "Plan", "fold_batchnorm", "fold_scope", "plan"]


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


class _Scope(threading.local):
    token: object | None = None


_SCOPE = _Scope()


@contextlib.contextmanager
def fold_scope() -> Iterator[None]:
    """Within the ``with`` block (one forward call), each :class:`FoldedConv` folds on its first use and
    reuses that fold after; outside any, every use folds afresh. Scopes are per thread and nest (an inner
    scope is a new call). Under ``torch.compile`` the compiled graph folds on each use instead."""
    previous, _SCOPE.token = _SCOPE.token, object()
    try:
        yield
    finally:
        _SCOPE.token = previous


class FoldedConv:
    """A conv with the BatchNorm after it folded in: folded once per :func:`fold_scope` (per forward call),
    from the weights as they are then.

    The fold is kept with the scope it was made in, and a use in any other scope (a later call, another
    thread's call, or no scope at all) folds again: nothing outlives the call it was made for, so no check
    of the sources against a kept copy is needed. Norms other than BatchNorm (LayerNorm) are not folded:
    :meth:`get` returns None for them.
    """

    def __init__(self) -> None:
        self._fold: tuple[object, tuple[Tensor, Tensor]] | None = None

    def get(self, conv: nn.Conv2d, norm: nn.Module) -> tuple[Tensor, Tensor] | None:
        if not isinstance(norm, nn.BatchNorm2d) or norm.running_var is None:
            return None
        if torch.compiler.is_compiling():  # traced into the graph: the compiled code folds on each call
            return fold_batchnorm(conv, norm)
        token = _SCOPE.token
        fold = self._fold
        if token is not None and fold is not None and fold[0] is token:
            return fold[1]
        with torch.no_grad():
            value = fold_batchnorm(conv, norm)
        self._fold = None if token is None else (token, value)
        return value
