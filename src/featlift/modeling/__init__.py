"""The UPLiFT network, one named part per module."""

from .attender import LocalAttender
from .decoder import DecoderStep
from .encoder import GuidanceEncoder
from .refiner import Refiner
from .uplift import UPLiFT

__all__ = ["DecoderStep", "GuidanceEncoder", "LocalAttender", "Refiner", "UPLiFT"]
