"""Low-level tensor operations: the Local Attender's core op and its implementations."""

from .local_attend import IMPLS, local_attend, local_attend_reference, neighbourhood_offsets, resolve_impl
from .triton_kernel import triton_available

__all__ = [
    "IMPLS",
    "local_attend",
    "local_attend_reference",
    "neighbourhood_offsets",
    "resolve_impl",
    "triton_available",
]
