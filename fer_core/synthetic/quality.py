"""Quality measures of a face crop and the thresholds that accept or reject it.

Measures: sharpness (variance of the Laplacian), exposure (mean grey level and the fraction of
clipped pixels), contrast (grey-level standard deviation), face size, pose (keypoint symmetry:
how far the nose sits from the eyes' midline, and the eye line's roll), and a 64-bit DCT
perceptual hash for near-duplicates across the whole set.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from numbers import Integral, Real

import cv2
import numpy as np

from fer_core.errors import ConfigError, InvalidArgument
from fer_core.faces.align import eye_angle
from fer_core.faces.detectors import LEFT_EYE, RIGHT_EYE, Detection
from fer_core.validation import Interval, validate_params

NOSE = 2


@dataclass(frozen=True)
class QualityThresholds:
    """Limits a face must meet to be accepted (calibrated on Stable Diffusion faces at 128 px).

    Args:
        min_score: least detection score.
        min_face_pixels: least face box side in grid pixels.
        min_face_fraction: least face box side as a fraction of the cell's shorter side.
        max_overhang: most of the face box (fraction of its side) allowed past the cell edge.
        min_sharpness: least variance of the Laplacian of the grey crop.
        min_brightness, max_brightness: allowed mean grey level of the crop.
        max_clipped: most fraction of pixels at <= 5 or >= 250.
        min_contrast: least grey-level standard deviation.
        max_yaw: most nose offset from the eyes' midline, in eye distances.
        max_roll: most eye-line angle in degrees.
        duplicate_distance: perceptual hashes at most this many bits apart are duplicates.
    """

    min_score: float = 0.5
    min_face_pixels: float = 40.0
    min_face_fraction: float = 0.25
    max_overhang: float = 0.1
    min_sharpness: float = 20.0
    min_brightness: float = 40.0
    max_brightness: float = 215.0
    max_clipped: float = 0.2
    min_contrast: float = 20.0
    max_yaw: float = 0.35
    max_roll: float = 30.0
    duplicate_distance: int = 6

    def __post_init__(self) -> None:
        if self.min_brightness >= self.max_brightness:
            raise InvalidArgument(f"quality thresholds: min_brightness {self.min_brightness} must be below "
                                  f"max_brightness {self.max_brightness}")

    @classmethod
    def from_dict(cls, values: dict) -> QualityThresholds:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown quality thresholds {unknown}; expected some of {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)


# Every threshold is a number >= 0; the duplicate distance a whole number of bits.
validate_params({field.name: [Interval(Integral if field.name == "duplicate_distance" else Real, 0, None)]
                 for field in fields(QualityThresholds)})(QualityThresholds)


@dataclass(frozen=True)
class FaceQuality:
    """Measures of one face (crop and detection)."""

    sharpness: float
    brightness: float
    clipped: float
    contrast: float
    face_pixels: float
    face_fraction: float
    yaw: float
    roll: float

    def problems(self, thresholds: QualityThresholds) -> list[str]:
        """Why the face fails ``thresholds`` (empty when it passes), each a short reason."""
        t = thresholds
        checks = [
            (self.face_pixels < t.min_face_pixels or self.face_fraction < t.min_face_fraction, "too small"),
            (self.sharpness < t.min_sharpness, "blurry"),
            (self.brightness < t.min_brightness, "underexposed"),
            (self.brightness > t.max_brightness, "overexposed"),
            (self.clipped > t.max_clipped, "clipped exposure"),
            (self.contrast < t.min_contrast, "low contrast"),
            (abs(self.yaw) > t.max_yaw, "turned head"),
            (abs(self.roll) > t.max_roll, "tilted head"),
        ]
        return [reason for failed, reason in checks if failed]


def measure_face(crop: np.ndarray, detection: Detection, cell_side: float) -> FaceQuality:
    """The quality measures of an aligned RGB ``crop`` of ``detection`` in a cell of ``cell_side``."""
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    side = max(detection.width, detection.height)
    yaw = roll = 0.0
    if detection.keypoints is not None:
        points = detection.keypoints.astype(np.float64)
        eyes = points[LEFT_EYE] - points[RIGHT_EYE]
        distance = max(math.hypot(*eyes), 1e-6)
        middle = (points[LEFT_EYE] + points[RIGHT_EYE]) / 2.0
        yaw = float(np.dot(points[NOSE] - middle, eyes) / distance ** 2)
        roll = eye_angle(points)
    return FaceQuality(
        sharpness=float(cv2.Laplacian(grey, cv2.CV_64F).var()),
        brightness=float(grey.mean()),
        clipped=float(np.mean((grey <= 5) | (grey >= 250))),
        contrast=float(grey.std()),
        face_pixels=float(side),
        face_fraction=float(side / cell_side),
        yaw=yaw,
        roll=float(roll),
    )


def perceptual_hash(image: np.ndarray) -> int:
    """64-bit DCT hash: the top-left 8x8 DCT coefficients of the 32x32 grey image above their median."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].ravel()
    bits = low > np.median(low[1:])
    return int("".join("1" if b else "0" for b in bits), 2)


def hash_distance(a: int, b: int) -> int:
    """Bits that differ between two perceptual hashes."""
    return (a ^ b).bit_count()
