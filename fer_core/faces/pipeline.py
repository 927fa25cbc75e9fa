"""Image -> aligned face crops: a detector (or none) plus the crop geometry."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from numbers import Integral

import numpy as np

from fer_core.config import Config, FacesConfig
from fer_core.faces.align import CROP_PAD_VALUE, CROP_SIZE, MARGIN, Face, align_face, whole_image_face
from fer_core.faces.detectors import Detection, FaceDetector, as_rgb, detector_from_config
from fer_core.validation import Interval, validate_params


class FacePipeline:
    """Detect faces and cut each out as an aligned ``crop_size`` square.

    Args:
        detector: the face detector; None treats every image as one pre-cropped face
            (:func:`whole_image_face`).
        crop_size: side of the square crops in pixels.
        margin: border around the face box on every side, as a fraction of the box side.
        align: rotate each crop so that the eyes are level.
        max_faces: at most this many faces per image (the largest ones).
    """

    @validate_params({"detector": [FaceDetector, None], "crop_size": [CROP_SIZE], "margin": [MARGIN],
                      "align": [bool], "max_faces": [Interval(Integral, 1, None)]})
    def __init__(self, detector: FaceDetector | None, crop_size: int = 224, margin: float = 0.25,
                 align: bool = True, max_faces: int = 20) -> None:
        self.detector = detector
        self.crop_size = int(crop_size)
        self.margin = float(margin)
        self.align = bool(align)
        self.max_faces = int(max_faces)

    @classmethod
    def from_config(cls, config: Config, crop_size: int) -> "FacePipeline":
        """The pipeline ``config.faces`` describes; a relative model path is taken from the project
        root. MediaPipe detectors share one task per model file and settings in the process, so
        building many pipelines opens no more tasks."""
        return cls.from_faces(dataclasses.replace(config.faces, mediapipe_model=config.face_model()), crop_size)

    @classmethod
    def from_faces(cls, faces: FacesConfig, crop_size: int) -> "FacePipeline":
        """The pipeline the ``faces`` settings describe (their model path used as given)."""
        return cls(detector_from_config(faces), crop_size, faces.margin, faces.align, faces.max_faces)

    def fingerprint(self) -> str:
        """A short stable hash of the detector (with its model file) and the crop geometry,
        padding beyond the image edge included."""
        settings = {"detector": self.detector.fingerprint() if self.detector else "none",
                    "crop_size": self.crop_size, "margin": self.margin, "align": self.align,
                    "max_faces": self.max_faces, "pad_value": CROP_PAD_VALUE}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    def _detections(self, rgb: np.ndarray) -> list[Detection]:
        """The detector's faces, largest first, at most ``max_faces``."""
        ranked = sorted(self.detector.detect(rgb), key=lambda d: d.area, reverse=True)
        return ranked[:self.max_faces]

    def extract(self, rgb: np.ndarray) -> list[Face]:
        """Every face in ``rgb`` as an aligned crop, largest first (empty when none is found)."""
        rgb = as_rgb(rgb)
        if self.detector is None:
            return [whole_image_face(rgb, self.crop_size)]
        return [align_face(rgb, d, self.crop_size, self.margin, self.align) for d in self._detections(rgb)]

    def largest(self, rgb: np.ndarray) -> Face | None:
        """The largest face in ``rgb``, or None when no face is found."""
        rgb = as_rgb(rgb)
        if self.detector is None:
            return whole_image_face(rgb, self.crop_size)
        found = self._detections(rgb)
        return align_face(rgb, found[0], self.crop_size, self.margin, self.align) if found else None

    def __repr__(self) -> str:
        detector = self.detector.name if self.detector else None
        return (f"FacePipeline(detector={detector!r}, crop_size={self.crop_size}, margin={self.margin}, "
                f"align={self.align}, max_faces={self.max_faces})")
