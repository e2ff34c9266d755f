"""Low-level tensor operations."""

from .local_attend import local_attend, local_attend_reference, neighbourhood_offsets

__all__ = ["local_attend", "local_attend_reference", "neighbourhood_offsets"]
