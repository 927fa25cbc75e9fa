"""Cutting a detected face out of an image as a square crop, with the eyes made level.

Coordinates are continuous pixel coordinates: ``(0, 0)`` is the top-left corner of the top-left
pixel, so pixel ``(i, j)`` has its centre at ``(i + 0.5, j + 0.5)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

import cv2
import numpy as np

from fer_core.faces.detectors import LEFT_EYE, MOUTH, RIGHT_EYE, Detection, as_rgb
from fer_core.validation import Interval, validate_params

#: Value of every channel of crop pixels beyond the image edge (mid grey). A constant, not the
#: repeated edge pixels (``BORDER_REPLICATE``), which draw streaks that only faces cut by the
#: image edge carry (synthetic grid cells more than real photos): a confound for a classifier.
CROP_PAD_VALUE = 128


@dataclass(frozen=True, eq=False)
class Face:
    """A square RGB uint8 face crop and where it came from (compared by identity).

    ``matrix`` is the 2x3 affine map from source pixels to crop pixels; ``keypoints`` are the
    detection's keypoints in crop pixels (None when the detection has none).
    """

    image: np.ndarray
    detection: Detection
    matrix: np.ndarray
    keypoints: np.ndarray | None = None

    def to_source(self, points: np.ndarray) -> np.ndarray:
        """``(N, 2)`` crop pixel coordinates mapped back to source pixels."""
        inverse = cv2.invertAffineTransform(self.matrix)
        return np.asarray(points, dtype=np.float64) @ inverse[:, :2].T + inverse[:, 2]


#: The argument checks of a crop's geometry (see :func:`fer_core.validation.validate_params`):
#: a side in pixels, and a border as a fraction of the face box's side.
CROP_SIZE = Interval(Integral, 1, None)
MARGIN = Interval(Real, 0, None)


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.asarray(points, dtype=np.float64) @ matrix[:, :2].T + matrix[:, 2]


def eye_angle(keypoints: np.ndarray) -> float:
    """The angle in degrees of the line from the image-left eye to the image-right eye
    (positive: the image-right eye is lower)."""
    dx, dy = keypoints[LEFT_EYE] - keypoints[RIGHT_EYE]
    return math.degrees(math.atan2(dy, dx))


def _warp(rgb: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """``cv2.warpAffine`` of ``rgb`` by ``matrix`` (continuous coordinates) to ``size`` x ``size``,
    :data:`CROP_PAD_VALUE` beyond the image edge.

    Only the source window the crop needs is used, and when the crop shrinks it, that window is
    first shrunk with area averaging so that the crop does not alias. Crop pixel centres lie half
    a crop pixel inside the window, so the constant only enters at the image edge.
    """
    height, width = rgb.shape[:2]
    corners = _apply(cv2.invertAffineTransform(matrix), [(0, 0), (size, 0), (0, size), (size, size)])
    x0, y0 = np.clip(np.floor(corners.min(axis=0)).astype(int) - 2, 0, (width - 1, height - 1))
    x1, y1 = np.clip(np.ceil(corners.max(axis=0)).astype(int) + 2, (x0 + 1, y0 + 1), (width, height))
    window = rgb[y0:y1, x0:x1]
    scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
    fx = fy = 1.0
    if scale < 1.0:
        shrunk = (max(1, round(window.shape[1] * scale)), max(1, round(window.shape[0] * scale)))
        fx, fy = shrunk[0] / window.shape[1], shrunk[1] / window.shape[0]
        window = cv2.resize(window, shrunk, interpolation=cv2.INTER_AREA)
    # window pixel p_w = (p - (x0, y0)) * (fx, fy), so p = p_w / f + (x0, y0)
    local = np.hstack([matrix[:, :2] @ np.diag([1.0 / fx, 1.0 / fy]), (matrix[:, 2] + matrix[:, :2] @ (x0, y0))[:, None]])
    # cv2 indexes pixel centres: continuous p is index p - 0.5 on both sides
    local[:, 2] += local[:, :2] @ (0.5, 0.5) - 0.5
    return cv2.warpAffine(window, local, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(CROP_PAD_VALUE,) * 3)


@validate_params({"size": [CROP_SIZE], "margin": [MARGIN]})
def align_face(rgb: np.ndarray, detection: Detection, size: int, margin: float = 0.25,
               align: bool = True) -> Face:
    """A ``size`` x ``size`` crop of the face ``detection`` found in ``rgb``.

    The face box's longer side plus ``margin`` of it on every side fills the square. With
    ``align`` and keypoints, the crop is rotated about its centre so that the eyes are level.
    The centre is the midpoint of the eye midpoint and the mouth when there are keypoints (it
    follows a tilted face better than the box does; on BlazeFace boxes of upright faces it is the
    box centre, vertically 0.00 +- 0.04 box sides), else the box centre. Pixels beyond the image
    edge are :data:`CROP_PAD_VALUE`.
    """
    rgb = as_rgb(rgb)
    size, margin = int(size), float(margin)
    side = max(detection.width, detection.height) * (1.0 + 2.0 * margin)
    keypoints = detection.keypoints
    angle = eye_angle(keypoints) if align and keypoints is not None else 0.0
    if keypoints is None:
        centre = detection.center
    else:
        centre = tuple(float(v) for v in ((keypoints[RIGHT_EYE] + keypoints[LEFT_EYE]) / 2.0 + keypoints[MOUTH]) / 2.0)
    matrix = cv2.getRotationMatrix2D(centre, angle, size / side)
    matrix[:, 2] += (size / 2.0 - centre[0], size / 2.0 - centre[1])
    crop_keypoints = None if keypoints is None else _apply(matrix, keypoints).astype(np.float32)
    return Face(_warp(rgb, matrix, size), detection, matrix, crop_keypoints)


@validate_params({"size": [CROP_SIZE, None]})
def whole_image_face(rgb: np.ndarray, size: int | None = None) -> Face:
    """The whole image as a face, for datasets of pre-cropped faces: its centre square,
    resized to ``size`` when given. The detection is the whole image, score 1.0, no keypoints."""
    rgb = as_rgb(rgb)
    height, width = rgb.shape[:2]
    side = min(height, width)
    size = side if size is None else int(size)
    x0, y0 = (width - side) // 2, (height - side) // 2
    crop = rgb[y0:y0 + side, x0:x0 + side]
    if size != side:
        crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if size < side else cv2.INTER_LINEAR)
    scale = size / side
    matrix = np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale]])
    detection = Detection((0.0, 0.0, float(width), float(height)), 1.0, None)
    return Face(np.ascontiguousarray(crop), detection, matrix, None)
