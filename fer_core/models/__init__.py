"""Networks: the architecture registry and factory, weights in every format, inference on faces."""

from fer_core.models.checkpoints import FORMATS, HSEMOTION_CLASS_ORDERS, CheckpointFormat, load_model, save_model
from fer_core.models.factory import (ARCHITECTURES, TINY_ARCHITECTURE, ArchitectureSpec, FerModel, architecture_spec,
                                     create_model)
from fer_core.models.recognizer import EmotionRecognizer

__all__ = [
    "ARCHITECTURES", "TINY_ARCHITECTURE", "ArchitectureSpec", "architecture_spec", "create_model", "FerModel",
    "FORMATS", "HSEMOTION_CLASS_ORDERS", "CheckpointFormat", "load_model", "save_model", "EmotionRecognizer",
]
