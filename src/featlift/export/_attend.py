""":class:`ExportAttender`: a :class:`~featlift.modeling.attender.LocalAttender` for graphs that leave
PyTorch, with a scale fixed in advance; the exporters swap it into a copy of the model
(:func:`with_export_attenders`), leaving the original alone. Its weighted sum is the ``"portable"``
implementation behind the ops seam (:func:`featlift.ops.local_attend`), written only in standard ops.
"""

from __future__ import annotations

import copy

from torch import Tensor, nn

from ..modeling.attender import LocalAttender
from ..ops.local_attend import local_attend

__all__ = ["ExportAttender", "with_export_attenders"]


class ExportAttender(LocalAttender):
    """A :class:`LocalAttender` for export: the scale is fixed at construction (the decoder step's factor)
    instead of divided out of the input shapes, so a tracer with symbolic sizes sees a plain integer.

    ``portable=True`` computes the weighted sum with the ``"portable"`` implementation (standard ops, for
    ONNX); ``False`` keeps the library's custom op ``featlift::local_attend`` (its fake kernel lets
    ``torch.export`` trace it), with the implementation :func:`featlift.ops.local_attend` picks for the
    device the model is on.
    """

    def __init__(
        self,
        guide_channels: int,
        size: int = 17,
        residual: bool = True,
        impl: str = "auto",
        *,
        scale: int = 2,
        portable: bool = True,
    ) -> None:
        super().__init__(guide_channels, size, residual, impl)
        self.scale = int(scale)
        self.portable = bool(portable)

    @classmethod
    def like(cls, attender: LocalAttender, scale: int, *, portable: bool) -> ExportAttender:
        """An export attender with ``attender``'s configuration and (a copy of) its weights."""
        out = cls(
            attender.to_logits.in_channels,
            attender.size,
            attender.residual,
            attender.impl,
            scale=scale,
            portable=portable,
        )
        out.offsets = attender.offsets
        out.load_state_dict(attender.state_dict())
        weight = attender.to_logits.weight
        return out.to(device=weight.device, dtype=weight.dtype).train(attender.training)

    def attend(self, logits: Tensor, values: Tensor, *, channels_last: bool = False) -> Tensor:
        impl = "portable" if self.portable else self.impl
        return local_attend(logits, values, self.offsets, self.scale, impl=impl, channels_last=channels_last)


def with_export_attenders(model: nn.Module, *, portable: bool) -> nn.Module:
    """A deep copy of ``model`` (an :class:`~featlift.UPLiFT`, or a module holding one) whose Local
    Attenders are :class:`ExportAttender` (``portable`` as there); ``model`` itself is not changed."""
    from ..modeling.uplift import UPLiFT

    model = copy.deepcopy(model)
    for module in list(model.modules()):
        if isinstance(module, UPLiFT):
            module.attender = ExportAttender.like(module.attender, module.config.decoder.scale, portable=portable)
    return model
