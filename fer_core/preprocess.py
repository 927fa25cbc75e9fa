"""The one preprocessing path from a face crop to a model input, shared by training,
evaluation, explanation and upload."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch

from fer_core.config import Config

_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}


@dataclass(frozen=True)
class Preprocessing:
    """Resize a square RGB face to ``input_size`` and normalize with ``mean``/``std``."""

    input_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    @classmethod
    def from_config(cls, config: Config, input_size: int | None = None) -> "Preprocessing":
        """The preprocessing a config describes (``input_size`` may come from a checkpoint)."""
        p = config.preprocessing
        return cls(input_size or config.model.input_size, tuple(p.mean), tuple(p.std), p.interpolation)

    def fingerprint(self) -> str:
        """A short stable hash of every setting; part of every cache key."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def resize(self, face: np.ndarray) -> np.ndarray:
        """An RGB uint8 face resized to ``input_size`` x ``input_size``."""
        if face.ndim != 3 or face.shape[2] != 3 or face.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB face, got {face.shape} {face.dtype}")
        size = self.input_size
        if face.shape[:2] == (size, size):
            return face
        shrinking = face.shape[0] > size or face.shape[1] > size
        interp = cv2.INTER_AREA if shrinking and self.interpolation == "bilinear" else _INTERPOLATION[self.interpolation]
        return cv2.resize(face, (size, size), interpolation=interp)

    def to_tensor(self, face: np.ndarray) -> torch.Tensor:
        """A ``(3, S, S)`` float32 tensor from an RGB uint8 face."""
        return self.normalize(torch.from_numpy(np.ascontiguousarray(self.resize(face).transpose(2, 0, 1))))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(..., 3, S, S)`` uint8 pixels -> normalized float32 (training augments in between)."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (pixels.float() / 255.0 - mean) / std

    def batch(self, faces: list[np.ndarray]) -> torch.Tensor:
        """A ``(N, 3, S, S)`` batch: the same values as stacking :meth:`to_tensor` of each face,
        normalized in one pass over the whole batch."""
        pixels = np.stack([self.resize(f) for f in faces]).transpose(0, 3, 1, 2)
        return self.normalize(torch.from_numpy(np.ascontiguousarray(pixels)))

    def to_image(self, tensor: torch.Tensor) -> np.ndarray:
        """Undo normalization: ``(3, S, S)`` tensor -> RGB uint8 array (for overlays)."""
        array = tensor.detach().cpu().float().numpy().transpose(1, 2, 0)
        array = array * np.asarray(self.std, np.float32) + np.asarray(self.mean, np.float32)
        return np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)
