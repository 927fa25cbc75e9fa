"""Face detectors behind one interface, created by name from a registry.

``create_detector("mediapipe", model_path=...)`` or ``detector_from_config(config.faces)``.
Every detector returns :class:`Detection` objects in source pixels, best score first, with six
keypoints in MediaPipe BlazeFace order (:data:`KEYPOINT_NAMES`).
"""

from __future__ import annotations

import concurrent.futures.thread  # noqa: F401 -- registers its exit hook before ours (see below)
import functools
import hashlib
import math
import os
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Sequence, TypeVar

import cv2
import numpy as np

from fer_core.config import ENV_FACE_MODEL, SHIPPED_FACE_MODELS, FacesConfig, face_model_file
from fer_core.errors import ConfigError, DataError, InvalidArgument, ModelLoadError
from fer_core.validation import Interval, StrOptions, validate_params

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


#: The argument checks shared by the detectors: a score threshold and a padding fraction.
SCORE = Interval(Real, 0, 1)
PADDING = Interval(Real, 0, None)


def _check_paddings(paddings: Sequence[float]) -> tuple[float, ...]:
    paddings = tuple(paddings)
    if not paddings or not all(PADDING.is_satisfied_by(p) for p in paddings):
        raise InvalidArgument(f"paddings: expected one or more numbers >= 0, got {paddings!r}")
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

    def close(self) -> None:
        """Release what the detector holds open (nothing, unless a subclass says otherwise)."""

    def __enter__(self) -> "FaceDetector":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


DetectorType = TypeVar("DetectorType", bound=type[FaceDetector])
#: Detector name -> class; filled by :func:`register_detector`.
DETECTORS: dict[str, type[FaceDetector]] = {}


def register_detector(cls: DetectorType) -> DetectorType:
    """Class decorator: make ``cls`` available to :func:`create_detector` under ``cls.name``."""
    DETECTORS[cls.name] = cls
    return cls


@validate_params({"name": [StrOptions(DETECTORS)]})
def create_detector(name: str, **kwargs) -> FaceDetector:
    """The detector registered as ``name`` (``"mediapipe"`` or ``"haar"``), built with ``kwargs``."""
    return DETECTORS[name](**kwargs)


#: ``faces.detector`` values that stand for a registered detector.
DETECTOR_ALIASES = {"auto": "mediapipe"}


def detector_from_config(faces_config: FacesConfig) -> FaceDetector | None:
    """The detector ``faces.detector`` names; None for ``"none"`` (whole images are faces).

    ``"auto"`` is MediaPipe with ``faces.mediapipe_model`` (``load_config`` merges
    ``$FER_CORE_FACE_MODEL`` into it), the shipped short-range model when that is null; Haar
    only when named. Paths are used as given; relative ones are taken from the working
    directory (``FacePipeline.from_config`` resolves them first).
    """
    name = DETECTOR_ALIASES.get(faces_config.detector, faces_config.detector)
    if name == "none":
        return None
    if name not in DETECTORS:
        raise ConfigError(f"config key 'faces.detector': unknown detector {name!r}; "
                          f"expected one of {sorted(DETECTORS) + sorted(DETECTOR_ALIASES) + ['none']}")
    return DETECTORS[name].from_config(faces_config)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


# MediaPipe task lifetime. A MediaPipe Tasks ``FaceDetector`` runs every C call on a worker
# thread of its own and closes itself in ``__del__``. When the garbage collector frees a task
# that sits in a reference cycle, it first clears the weak reference that keeps that worker
# alive (the worker exits), then runs ``__del__``, whose close waits forever for the worker
# (``Future.result``): a deadlock from any allocation anywhere. So a task is never left to the
# garbage collector: one task per (model file digest, min_score) per process lives in
# ``_TASKS``, which holds it until an explicit close (:meth:`MediaPipeDetector.close`,
# :func:`close_mediapipe_tasks`) or interpreter exit, and its ``__del__`` does nothing.

@dataclass(eq=False)
class _Task:
    """An open MediaPipe face detector task and the lock that serialises calls to it (a task
    is not safe to call from two threads)."""

    task: object
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False

    def close(self) -> None:
        with self.lock:  # after the detection in progress, on the calling thread
            if not self.closed:
                self.closed = True
                self.task.close()


TaskKey = tuple[str, float]  # (model file digest, min_score)
_TASKS: dict[TaskKey, _Task] = {}
_TASKS_LOCK = threading.Lock()
#: Tasks a forked child inherited: their worker threads do not exist in the child, so they are
#: neither used nor closed there, only kept from the garbage collector.
_INHERITED: list[_Task] = []


def _keep_open(task: object) -> None:
    """A ``__del__`` that does nothing: tasks are closed explicitly, never by the garbage collector."""


@functools.cache
def _without_finalizer(cls: type) -> type:
    """``cls`` with :func:`_keep_open` as its ``__del__``."""
    return type(cls.__name__, (cls,), {"__del__": _keep_open, "__module__": cls.__module__})


def _open_task(model_path: Path, min_score: float) -> object:
    """A new MediaPipe face detector task for ``model_path``, its ``__del__`` disabled."""
    from mediapipe.tasks.python import BaseOptions, vision  # slow to import; Haar does not need it

    options = vision.FaceDetectorOptions(base_options=BaseOptions(model_asset_path=str(model_path)),
                                         running_mode=vision.RunningMode.IMAGE, min_detection_confidence=min_score)
    try:
        task = vision.FaceDetector.create_from_options(options)
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"not a MediaPipe face detection model: {model_path}: {exc}") from None
    task.__class__ = _without_finalizer(type(task))
    return task


def _task_for(key: TaskKey, model_path: Path) -> _Task:
    """This process's open task for ``key``, opened from ``model_path`` when there is none."""
    with _TASKS_LOCK:
        if key not in _TASKS:
            _TASKS[key] = _Task(_open_task(model_path, key[1]))
        return _TASKS[key]


def close_mediapipe_tasks() -> int:
    """Close every MediaPipe task this process has open and return how many; detectors open
    a new one when used again. Runs at interpreter exit as well."""
    with _TASKS_LOCK:
        tasks = list(_TASKS.values())
        _TASKS.clear()
    for task in tasks:
        task.close()
    return len(tasks)


def open_mediapipe_tasks() -> int:
    """How many MediaPipe tasks this process has open (one per model file and min_score)."""
    with _TASKS_LOCK:
        return len(_TASKS)


def _forget_inherited_tasks() -> None:
    global _TASKS_LOCK
    _INHERITED.extend(_TASKS.values())
    _TASKS.clear()
    _TASKS_LOCK = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_forget_inherited_tasks)
# threading's exit hooks run before ``atexit`` (too late: the tasks' workers are stopped by
# then), last registered first: this one is registered after concurrent.futures' own (imported
# above), which stops those workers.
threading._register_atexit(close_mediapipe_tasks)


@register_detector
class MediaPipeDetector(FaceDetector):
    """MediaPipe BlazeFace (Tasks API) from a ``.tflite`` file.

    Detectors of the same model file (by content) and ``min_score`` share one MediaPipe task
    per process; it stays open until :meth:`close` (or the end of a ``with`` block) or
    interpreter exit, never closed by the garbage collector.

    Args:
        model_path: a shipped model by name, ``"short_range"`` (the default: faces within
            ~2 m, filling a good part of the image) or ``"full_range"`` (smaller faces: group
            photos, grids), or the path of a BlazeFace ``.tflite`` file.
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

    @validate_params({"min_score": [SCORE]})
    def __init__(self, model_path: str | Path | None = None, min_score: float = 0.5,
                 paddings: Sequence[float] = (0.15, 0.5)) -> None:
        self.model_path = face_model_file(model_path)
        self.min_score = float(min_score)
        self.paddings = _check_paddings(paddings)
        if not self.model_path.is_file():
            raise ModelLoadError(
                f"MediaPipe face model not found: {self.model_path}. Point the config key "
                f"'faces.mediapipe_model' or the environment variable {ENV_FACE_MODEL} at a BlazeFace "
                f".tflite file or name a shipped one ({', '.join(SHIPPED_FACE_MODELS)}), or set faces.detector: haar")
        self._digest = _file_digest(self.model_path)
        self._key: TaskKey = (self._digest, self.min_score)
        _task_for(self._key, self.model_path)  # opens the model now, so that a bad file fails here
        import mediapipe

        self._image = functools.partial(mediapipe.Image, image_format=mediapipe.ImageFormat.SRGB)

    def close(self) -> None:
        """Close the MediaPipe task this detector uses, shared with every detector of the same
        model file and ``min_score``; a detector used again opens a new one."""
        with _TASKS_LOCK:
            task = _TASKS.pop(self._key, None)
        if task is not None:
            task.close()

    @classmethod
    def from_config(cls, faces_config: FacesConfig) -> "MediaPipeDetector":
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
        result = self._run(self._image(data=padded))
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

    def _run(self, image: object) -> object:
        task = _task_for(self._key, self.model_path)
        with task.lock:
            if not task.closed:
                return task.task.detect(image)
        return self._run(image)  # another thread closed it meanwhile: open a new one


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
    """OpenCV's frontal-face Haar cascade (``faces.detector: haar``); needs no model file.

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

    @validate_params({"min_score": [SCORE], "padding": [PADDING], "max_side": [Interval(Integral, 64, None)],
                      "min_face": [Interval(Real, 0, 1, closed="right")],
                      "min_neighbors": [Interval(Integral, 1, None)]})
    def __init__(self, min_score: float = 0.5, padding: float = 0.25, max_side: int = 640,
                 min_face: float = 0.1, min_neighbors: int = 5) -> None:
        self.min_score, self.padding = float(min_score), float(padding)
        self.max_side = int(max_side)
        self.min_face = float(min_face)
        self.min_neighbors = int(min_neighbors)
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

