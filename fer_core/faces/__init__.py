"""Face detection, alignment and cropping."""

from fer_core.faces.align import Face, align_face, eye_angle, whole_image_face
from fer_core.faces.detectors import (
    DETECTORS,
    KEYPOINT_NAMES,
    Detection,
    FaceDetector,
    HaarDetector,
    MediaPipeDetector,
    create_detector,
    detector_from_config,
    register_detector,
)
from fer_core.faces.pipeline import FacePipeline

__all__ = [
    "DETECTORS", "KEYPOINT_NAMES", "Detection", "Face", "FaceDetector", "FacePipeline", "HaarDetector",
    "MediaPipeDetector", "align_face", "create_detector", "detector_from_config", "eye_angle",
    "register_detector", "whole_image_face",
]
