"""Training: `train(TrainConfig) -> TrainResult`, with the dataset layouts, augmentation and schedule it uses."""
from .config import TrainConfig, load_toml, parse_classes
from .datasets import CropDataset, DatasetSpec, Sample, build_spec, discover, steps_per_epoch
from .loop import TrainResult, train, validate
from .losses import bce_iou, compute_losses
from .schedule import poly_lr

__all__ = ["TrainConfig", "TrainResult", "train", "validate", "load_toml", "parse_classes", "CropDataset",
           "DatasetSpec", "Sample", "build_spec", "discover", "steps_per_epoch", "bce_iou", "compute_losses",
           "poly_lr"]
