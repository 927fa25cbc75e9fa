"""Face detectors behind one interface, created by name from a registry.

``create_detector("mediapipe", model_path=...)`` or ``detector_from_config(config.faces)``.
Every detector returns :class:`Detection` objects in source pixels, best score first, with six
keypoints in MediaPipe BlazeFace order (:data:`KEYPOINT_NAMES`).
"""

from __future__ import annotations

import functools
import hashlib
import math
import threading
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TypeVar

import cv2
import numpy as np

from fer_core.config import ENV_FACE_MODEL, FacesConfig
from fer_core.errors import ConfigError, DataError, ModelLoadError

#: Keypoint order of every :class:`Detection` (BlazeFace order). "right" is the subject's
#: right, which is on the image's left for a frontal face.
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth", "right_ear", "left_ear")
RIGHT_EYE, LEFT_EYE, MOUTH = 0, 1, 3


def as_rgb(image: np.ndarray) -> np.ndarray:
    """``image`` as a contiguous ``(H, W, 3)`` uint8 RGB array; grayscale ``(H, W)`` or
    ``(H, W, 1)`` is repeated to three channels. Anything else is a :class:`DataError`."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise DataError(f"expected a uint8 numpy image, got {type(image).__name__} "
                        f"{getattr(image, 'dtype', '')}".rstrip())
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise DataError(f"expected an (H, W, 3) RGB or (H, W) grayscale image, got shape {image.shape}")
    return np.ascontiguousarray(image)


@dataclass(frozen=True, eq=False)
class Detection:
    """One face in source pixels (compared by identity: it holds an array).

    ``box`` is ``(x0, y0, x1, y1)``; it may reach past the image edge for a face the edge cuts.
    ``keypoints`` is a ``(6, 2)`` float32 array ordered as :data:`KEYPOINT_NAMES`, or None.
    """

    box: tuple[float, float, float, float]
    score: float
    keypoints: np.ndarray | None = None

    def __post_init__(self) -> None:
        box = tuple(float(v) for v in self.box)
        if len(box) != 4 or not (box[2] > box[0] and box[3] > box[1]):
            raise DataError(f"expected a face box (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {self.box}")
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "score", float(self.score))
        if self.keypoints is not None:
            keypoints = np.array(self.keypoints, dtype=np.float32)
            if keypoints.shape != (len(KEYPOINT_NAMES), 2):
                raise DataError(f"expected keypoints of shape (6, 2) in the order {KEYPOINT_NAMES}, "
                                f"got {keypoints.shape}")
            keypoints.flags.writeable = False
            object.__setattr__(self, "keypoints", keypoints)

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2.0, (self.box[1] + self.box[3]) / 2.0


def _check_score(min_score: float) -> float:
    if isinstance(min_score, bool) or not isinstance(min_score, (int, float)) or not 0.0 <= min_score <= 1.0:
        raise ConfigError(f"min_score: expected a number in [0, 1], got {min_score!r}")
    return float(min_score)


def _check_paddings(paddings: Sequence[float]) -> tuple[float, ...]:
    paddings = tuple(paddings)
    if not paddings or any(isinstance(p, bool) or not isinstance(p, (int, float)) or p < 0 for p in paddings):
        raise ConfigError(f"paddings: expected one or more numbers >= 0, got {paddings!r}")
    return tuple(float(p) for p in paddings)


def _pad(rgb: np.ndarray, padding: float, border: int) -> tuple[np.ndarray, int]:
    """``rgb`` with ``padding`` x its longest side added on every side, and that border in pixels."""
    pixels = int(round(max(rgb.shape[:2]) * padding))
    if pixels == 0:
        return rgb, 0
    return cv2.copyMakeBorder(rgb, pixels, pixels, pixels, pixels, border, value=0), pixels


def _overlaps(a: Detection, b: Detection, max_iou: float = 0.3, max_cover: float = 0.6) -> bool:
    """Whether two boxes are the same face: IoU above ``max_iou``, or the smaller box lies mostly
    (``max_cover`` of its area) inside the larger one, since a face never sits inside another."""
    width = min(a.box[2], b.box[2]) - max(a.box[0], b.box[0])
    height = min(a.box[3], b.box[3]) - max(a.box[1], b.box[1])
    inter = max(width, 0.0) * max(height, 0.0)
    return inter > max_iou * (a.area + b.area - inter) or inter > max_cover * min(a.area, b.area)


def _suppress(detections: list[Detection]) -> list[Detection]:
    """Best score first, dropping any detection that overlaps a better one."""
    kept: list[Detection] = []
    for detection in sorted(detections, key=lambda d: d.score, reverse=True):
        if not any(_overlaps(detection, other) for other in kept):
            kept.append(detection)
    return kept


class FaceDetector(ABC):
    """Finds faces in an RGB image."""

    #: The registry name.
    name: str

    @abstractmethod
    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Faces in an ``(H, W, 3)`` uint8 RGB image, best score first, all keypoints set."""

    @abstractmethod
    def fingerprint(self) -> str:
        """Every setting that changes the detections (model file hash included)."""

    @classmethod
    @abstractmethod
    def from_config(cls, faces_config: FacesConfig) -> "FaceDetector":
        """The detector the ``faces`` config section describes."""


DetectorType = TypeVar("DetectorType", bound=type[FaceDetector])
#: Detector name -> class; filled by :func:`register_detector`.
DETECTORS: dict[str, type[FaceDetector]] = {}


def register_detector(cls: DetectorType) -> DetectorType:
    """Class decorator: make ``cls`` available to :func:`create_detector` under ``cls.name``."""
    DETECTORS[cls.name] = cls
    return cls


def create_detector(name: str, **kwargs) -> FaceDetector:
    """The detector registered as ``name`` (``"mediapipe"`` or ``"haar"``), built with ``kwargs``."""
    if name not in DETECTORS:
        raise ConfigError(f"unknown face detector {name!r}; expected one of {sorted(DETECTORS)}")
    return DETECTORS[name](**kwargs)


def detector_from_config(faces_config: FacesConfig) -> FaceDetector | None:
    """The detector ``faces.detector`` names; None for ``"none"`` (whole images are faces).

    ``"auto"`` is MediaPipe when ``faces.mediapipe_model`` is set (``load_config`` merges
    ``$FER_CORE_FACE_MODEL`` into it), otherwise Haar. Paths are used as given; relative ones
    are taken from the working directory (``FacePipeline.from_config`` resolves them first).
    """
    name = faces_config.detector
    if name == "auto":
        name = "mediapipe" if faces_config.mediapipe_model is not None else "haar"
    if name == "none":
        return None
    if name not in DETECTORS:
        raise ConfigError(f"config key 'faces.detector': unknown detector {name!r}; "
                          f"expected one of {sorted(DETECTORS) + ['auto', 'none']}")
    return DETECTORS[name].from_config(faces_config)


def _close_at_exit(task: object) -> None:
    """Close a MediaPipe task while Python still runs the worker thread it calls through.

    MediaPipe closes tasks in ``__del__``, which at interpreter teardown prints an ignored
    TypeError; ``atexit`` is too late as well, since the thread pool stops before it.
    """
    task_ref = weakref.ref(task)

    def close() -> None:
        alive = task_ref()
        if alive is not None:
            alive.close()

    threading._register_atexit(close)  # runs before concurrent.futures stops its threads


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@register_detector
class MediaPipeDetector(FaceDetector):
    """MediaPipe BlazeFace (Tasks API) from a ``.tflite`` file.

    Args:
        model_path: ``face_detection_short_range.tflite`` (faces within ~2 m, filling a good
            part of the image) or ``face_detection_full_range_sparse.tflite`` (smaller faces).
        min_score: detections scoring lower are dropped.
        paddings: the image is run once per value, with a black border of that fraction of its
            longest side on every side, and the results merged. BlazeFace misses or splits faces
            that fill most of the frame and, run on the bare image, fires on texture at the
            image edge. Measured with the short-range model (476 Stable Diffusion faces; 40
            white-noise images 640x480): ``(0.0,)`` finds exactly one face in 466 images and a
            face in 14 noise images; ``(0.15,)`` 474 and 0; ``(0.15, 0.5)`` 476 and 0. Padding
            shrinks faces, so for many small faces (group photos, grids) use the full-range model.
    """

    name = "mediapipe"

    def __init__(self, model_path: str | Path, min_score: float = 0.5,
                 paddings: Sequence[float] = (0.15, 0.5)) -> None:
        self.model_path = Path(model_path).expanduser()
        self.min_score = _check_score(min_score)
        self.paddings = _check_paddings(paddings)
        if not self.model_path.is_file():
            raise ModelLoadError(
                f"MediaPipe face model not found: {self.model_path}. Point the config key "
                f"'faces.mediapipe_model' or the environment variable {ENV_FACE_MODEL} at a BlazeFace "
                f".tflite file (face_detection_short_range.tflite), or set faces.detector: haar")
        self._digest = _file_digest(self.model_path)
        import mediapipe  # imported here: it is slow to import and the Haar fallback does not need it
        from mediapipe.tasks.python import BaseOptions, vision

        options = vision.FaceDetectorOptions(
            base_options=BaseOptions(model_asset_path=str(self.model_path)),
            running_mode=vision.RunningMode.IMAGE,
            min_detection_confidence=self.min_score)
        try:
            self._task = vision.FaceDetector.create_from_options(options)
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"not a MediaPipe face detection model: {self.model_path}: {exc}") from None
        _close_at_exit(self._task)
        self._image = functools.partial(mediapipe.Image, image_format=mediapipe.ImageFormat.SRGB)
        self._lock = threading.Lock()  # a MediaPipe task is not safe to call from two threads

    @classmethod
    def from_config(cls, faces_config: FacesConfig) -> "MediaPipeDetector":
        if faces_config.mediapipe_model is None:
            raise ModelLoadError(
                f"faces.detector is 'mediapipe' but no model file is set: set the config key "
                f"'faces.mediapipe_model' or the environment variable {ENV_FACE_MODEL} to a BlazeFace .tflite file")
        return cls(faces_config.mediapipe_model, faces_config.min_score)

    def fingerprint(self) -> str:
        return f"{self.name}:{self._digest}:score={self.min_score}:pad={self.paddings}"

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        rgb = as_rgb(rgb)
        found: list[Detection] = []
        for padding in self.paddings:
            found += self._detect_padded(rgb, padding)
        return _suppress(found)

    def _detect_padded(self, rgb: np.ndarray, padding: float) -> list[Detection]:
        padded, offset = _pad(rgb, padding, cv2.BORDER_CONSTANT)
        height, width = padded.shape[:2]
        with self._lock:
            result = self._task.detect(self._image(data=padded))
        detections = []
        for found in result.detections:
            box = found.bounding_box
            x0, y0 = box.origin_x - offset, box.origin_y - offset
            keypoints = None
            if found.keypoints:
                keypoints = np.array([(k.x * width - offset, k.y * height - offset) for k in found.keypoints])
            detections.append(Detection((x0, y0, x0 + box.width, y0 + box.height),
                                        found.categories[0].score, keypoints))
        return detections  # MediaPipe already dropped those under min_score


#: Keypoints of a frontal face as fractions of the Haar face box side, measured as the mean
#: BlazeFace keypoints of 231 Stable Diffusion faces relative to their Haar boxes (std of the
#: eyes about 0.03, of the ears about 0.09).
HAAR_FACE_TEMPLATE = np.array([(0.33, 0.41), (0.69, 0.41), (0.51, 0.63),
                               (0.51, 0.81), (0.12, 0.49), (0.88, 0.49)], dtype=np.float64)
#: Haar level weight that maps to score 0.5; score = w / (w + HAAR_HALF_SCORE_WEIGHT).
#: On the Stable Diffusion faces 95 % of true faces weigh over 5 and most false hits under 4.
HAAR_HALF_SCORE_WEIGHT = 4.0


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 rotation + uniform scale + translation that maps two points onto two points."""
    s, d = src[1] - src[0], dst[1] - dst[0]
    scale = math.hypot(*d) / math.hypot(*s)
    angle = math.atan2(d[1], d[0]) - math.atan2(s[1], s[0])
    c, n = scale * math.cos(angle), scale * math.sin(angle)
    rotation = np.array([[c, -n], [n, c]])
    return np.hstack([rotation, (dst[0] - rotation @ src[0])[:, None]])


@register_detector
class HaarDetector(FaceDetector):
    """OpenCV's frontal-face Haar cascade; a fallback that needs no model file.

    Scores are the cascade's final level weight ``w`` mapped to ``w / (w + 4)``. Keypoints:
    the eyes come from OpenCV's eye cascade when it finds one eye in each half of the face's
    upper part; the face template (:data:`HAAR_FACE_TEMPLATE`) is then fitted to those eyes, so
    the nose, mouth and ears follow the eyes' tilt. Without both eyes the template is placed
    on the box. Measured on Stable Diffusion faces: the eye cascade finds both eyes on ~70 %
    of faces with a roll error of ~2 degrees (median); the template alone assumes level eyes.

    Args:
        min_score: detections scoring lower are dropped.
        padding: border (replicated edge pixels) added on every side, as a fraction of the
            longest side, so that faces cut by the image edge are found (80 % -> 96 % of Stable
            Diffusion faces).
        max_side: the image is shrunk to this longest side (before padding) for speed.
        min_face: smallest face searched for, as a fraction of the image's shorter side (the
            cascade's run time grows quickly as it falls).
        min_neighbors: ``detectMultiScale`` neighbours needed to keep a detection.
    """

    name = "haar"
    _FACE_FILE = "haarcascade_frontalface_default.xml"
    _EYE_FILE = "haarcascade_eye.xml"

    def __init__(self, min_score: float = 0.5, padding: float = 0.25, max_side: int = 640,
                 min_face: float = 0.1, min_neighbors: int = 5) -> None:
        self.min_score = _check_score(min_score)
        self.padding = _check_paddings([padding])[0]
        if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 64:
            raise ConfigError(f"max_side: expected an integer >= 64, got {max_side!r}")
        if isinstance(min_neighbors, bool) or not isinstance(min_neighbors, int) or min_neighbors < 1:
            raise ConfigError(f"min_neighbors: expected an integer >= 1, got {min_neighbors!r}")
        if isinstance(min_face, bool) or not isinstance(min_face, (int, float)) or not 0 < min_face <= 1:
            raise ConfigError(f"min_face: expected a fraction in (0, 1], got {min_face!r}")
        self.max_side = max_side
        self.min_face = float(min_face)
        self.min_neighbors = min_neighbors
        self._faces = self._cascade(self._FACE_FILE)
        self._eyes = self._cascade(self._EYE_FILE)
        self._lock = threading.Lock()  # a CascadeClassifier is not safe to call from two threads

    @staticmethod
    def _cascade(filename: str) -> cv2.CascadeClassifier:
        path = Path(cv2.data.haarcascades) / filename
        cascade = cv2.CascadeClassifier(str(path))
        if cascade.empty():
            raise ModelLoadError(f"OpenCV Haar cascade not found or unreadable: {path}; reinstall opencv-python")
        return cascade

    @classmethod
    def from_config(cls, faces_config: FacesConfig) -> "HaarDetector":
        return cls(faces_config.min_score)

    def fingerprint(self) -> str:
        return (f"{self.name}:{self._FACE_FILE}:cv2={cv2.__version__}:score={self.min_score}:"
                f"pad={self.padding}:side={self.max_side}:min_face={self.min_face}:neighbors={self.min_neighbors}")

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        rgb = as_rgb(rgb)
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        shrink = min(1.0, self.max_side / max(gray.shape))
        if shrink < 1.0:
            gray = cv2.resize(gray, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
        padded, offset = _pad(gray, self.padding, cv2.BORDER_REPLICATE)
        min_size = max(24, round(min(gray.shape) * self.min_face))
        detections = []
        with self._lock:
            boxes, _, weights = self._faces.detectMultiScale3(
                padded, scaleFactor=1.1, minNeighbors=self.min_neighbors, minSize=(min_size, min_size),
                outputRejectLevels=True)
            for (x, y, w, h), weight in zip(boxes, np.ravel(weights)):
                weight = max(float(weight), 0.0)
                score = weight / (weight + HAAR_HALF_SCORE_WEIGHT)
                if score < self.min_score:
                    continue
                keypoints = (self._keypoints((x, y, w), self._eye_pair(padded, (x, y, w, h))) - offset) / shrink
                x0, y0 = (x - offset) / shrink, (y - offset) / shrink
                detections.append(Detection((x0, y0, x0 + w / shrink, y0 + h / shrink), score, keypoints))
        return _suppress(detections)

    def _eye_pair(self, gray: np.ndarray, box: Sequence[int]) -> np.ndarray | None:
        """Centres of the (image-left, image-right) eyes in ``gray`` pixels, or None."""
        x, y, w, h = (int(v) for v in box)
        top, bottom = y + h // 8, y + (h * 11) // 20
        found = self._eyes.detectMultiScale(gray[top:bottom, x:x + w], scaleFactor=1.1, minNeighbors=3,
                                            minSize=(w // 10, w // 10), maxSize=(w // 3, w // 3))
        centres = np.array([(ex + ew / 2.0, ey + eh / 2.0 + top - y) for ex, ey, ew, eh in found]).reshape(-1, 2) / w
        pair = []
        for template, side in ((HAAR_FACE_TEMPLATE[0], centres[:, 0] < 0.5), (HAAR_FACE_TEMPLATE[1], centres[:, 0] >= 0.5)):
            candidates = centres[side]
            if len(candidates) == 0:
                return None
            pair.append(candidates[np.argmin(np.abs(candidates - template).sum(axis=1))])
        distance = np.hypot(*(pair[1] - pair[0]))
        if not 0.2 <= distance <= 0.6:
            return None
        return np.array(pair) * w + (x, y)

    @staticmethod
    def _keypoints(box: Sequence[int], eyes: np.ndarray | None) -> np.ndarray:
        x, y, w = box
        placed = HAAR_FACE_TEMPLATE * w + (x, y)
        if eyes is None:
            return placed
        fit = _similarity(placed[:2], eyes)
        return placed @ fit[:, :2].T + fit[:, 2]

