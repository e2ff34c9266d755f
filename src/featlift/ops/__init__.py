"""Low-level tensor operations: the Local Attender's core op (:func:`local_attend`) behind one seam, its
implementations, and the neighbourhoods it reads.

Importing this package registers the custom op ``featlift::local_attend`` with torch (a ``.pt2`` exported
with featlift's attender needs it: ``import featlift.ops`` before ``torch.export.load``).
"""

from .._neighbourhood import NEIGHBOURHOOD_SIZES, Offsets, neighbourhood_offsets
from ._portable import portable_local_attend
from ._triton import triton_available
from .local_attend import (
    IMPLS,
    AttendPolicy,
    attend_policy,
    local_attend,
    local_attend_reference,
    resolve_impl,
    use_attend_policy,
)

__all__ = [
    "IMPLS",
    "NEIGHBOURHOOD_SIZES",
    "AttendPolicy",
    "Offsets",
    "attend_policy",
    "local_attend",
    "local_attend_reference",
    "neighbourhood_offsets",
    "portable_local_attend",
    "resolve_impl",
    "triton_available",
    "use_attend_policy",
]
