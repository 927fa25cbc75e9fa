"""Face detection, alignment and cropping."""

from fer_core.faces.align import CROP_PAD_VALUE, Face, align_face, eye_angle, whole_image_face
from fer_core.faces.detectors import (
    DETECTORS,
    KEYPOINT_NAMES,
    Detection,
    FaceDetector,
    HaarDetector,
    MediaPipeDetector,
    close_mediapipe_tasks,
    create_detector,
    detector_from_config,
    open_mediapipe_tasks,
    register_detector,
)
from fer_core.faces.pipeline import FacePipeline

__all__ = [
    "CROP_PAD_VALUE", "DETECTORS", "KEYPOINT_NAMES", "Detection", "Face", "FaceDetector", "FacePipeline",
    "HaarDetector", "MediaPipeDetector", "align_face", "close_mediapipe_tasks", "create_detector",
    "detector_from_config", "eye_angle", "open_mediapipe_tasks", "register_detector", "whole_image_face",
]
