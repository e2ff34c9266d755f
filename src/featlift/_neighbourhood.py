"""The Local Attender's neighbourhoods: which coarse cells an output pixel may draw from.

This table is the single source of the supported sizes: the config schema validates against
:data:`NEIGHBOURHOOD_SIZES` and the attender builds its offsets with :func:`neighbourhood_offsets`.
It is plain Python (no torch), so the schema can import it cheaply.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["NEIGHBOURHOOD_SIZES", "Offsets", "neighbourhood_offsets"]

Offsets = tuple[tuple[int, int], ...]

# size -> which (dy, dx) with |dy|, |dx| <= 2 belong to the neighbourhood
_MEMBERSHIP: dict[int, Callable[[int, int], bool]] = {
    5: lambda dy, dx: abs(dy) + abs(dx) <= 1,  # plus of radius 1
    9: lambda dy, dx: max(abs(dy), abs(dx)) <= 1,  # 3x3 square
    13: lambda dy, dx: abs(dy) + abs(dx) <= 2,  # diamond of radius 2
    17: lambda dy, dx: max(abs(dy), abs(dx)) <= 1 or (dy % 2 == 0 and dx % 2 == 0),  # 3x3 + the 8 points at +-2
    25: lambda dy, dx: True,  # 5x5 square
}

NEIGHBOURHOOD_SIZES: tuple[int, ...] = tuple(sorted(_MEMBERSHIP))


def neighbourhood_offsets(size: int) -> Offsets:
    """The ``(dy, dx)`` offsets of a neighbourhood, row-major (sorted by dy, then dx).

    Offset ``k`` is weighted by channel ``k`` of the attender's logits, so the order is part of the
    checkpoint format.

    Raises:
        ValueError: ``size`` is not one of :data:`NEIGHBOURHOOD_SIZES`.
    """
    if size not in _MEMBERSHIP:
        raise ValueError(f"neighbourhood size must be one of {NEIGHBOURHOOD_SIZES}, got {size!r}")
    member = _MEMBERSHIP[size]
    return tuple((dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if member(dy, dx))
