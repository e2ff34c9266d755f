"""Training UPLiFT for any backbone: the multi-depth objective, data, and the (distributed) loop."""

from .config import TrainConfig
from .data import ImageDataset, list_images
from .objective import LOSSES, depth_targets, downsample, feature_distance, multi_depth_loss
from .trainer import evaluate, train

__all__ = [
    "LOSSES",
    "ImageDataset",
    "TrainConfig",
    "depth_targets",
    "downsample",
    "evaluate",
    "feature_distance",
    "list_images",
    "multi_depth_loss",
    "train",
]
