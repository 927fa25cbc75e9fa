"""Training: SAM (the plan's RobustOptimizer), staged fine-tuning and the training loop."""

from fer_core.preprocess import AugmentSettings
from fer_core.training.sam import SAM, FrozenBatchNormStats, RobustOptimizer
from fer_core.training.trainer import (GRADUAL_UNFREEZING_STAGES, HSEMOTION_STAGES, FaceTransform, Stage, Trainer,
                                       TrainSettings, set_trainable)

__all__ = ["AugmentSettings", "SAM", "RobustOptimizer", "FrozenBatchNormStats", "GRADUAL_UNFREEZING_STAGES",
           "HSEMOTION_STAGES", "FaceTransform", "Stage", "Trainer", "TrainSettings", "set_trainable"]
