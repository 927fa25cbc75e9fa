"""Face detection, alignment and cropping on the real shared faces (Stable Diffusion, FER2013)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_core.config import ENV_FACE_MODEL, SHIPPED_FACE_MODELS, config_from_dict
from fer_core.errors import ConfigError, DataError, InvalidArgument, ModelLoadError
from fer_core.faces import (
    CROP_PAD_VALUE,
    KEYPOINT_NAMES,
    Detection,
    FacePipeline,
    HaarDetector,
    MediaPipeDetector,
    align_face,
    create_detector,
    detector_from_config,
    eye_angle,
    whole_image_face,
)
from fer_core.images import load_rgb
from tests.conftest import require_shared

RIGHT_EYE, LEFT_EYE, NOSE, MOUTH = (KEYPOINT_NAMES.index(n) for n in ("right_eye", "left_eye", "nose_tip", "mouth"))


@pytest.fixture(scope="module")
def sd_paths(synthetic_root: Path) -> list[Path]:
    paths = sorted(synthetic_root.glob("*/*.jpg"))
    assert len(paths) == 476
    return paths


@pytest.fixture(scope="module")
def mediapipe(face_model_path: Path) -> MediaPipeDetector:
    return MediaPipeDetector(face_model_path)


@pytest.fixture(scope="module")
def haar() -> HaarDetector:
    return HaarDetector()


@pytest.fixture(autouse=True)
def no_face_model_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_FACE_MODEL, raising=False)


def rotate(rgb: np.ndarray, degrees: float) -> np.ndarray:
    """``rgb`` turned counter-clockwise by ``degrees`` about its centre."""
    height, width = rgb.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    return cv2.warpAffine(rgb, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)


def structure_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two crops at coarse scale (56 px, blurred), tolerant of 1-2 px shifts."""
    def coarse(image: np.ndarray) -> np.ndarray:
        gray = cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (56, 56), interpolation=cv2.INTER_AREA)
        return cv2.GaussianBlur(gray, (0, 0), 1).astype(np.float64).ravel()
    return float(np.corrcoef(coarse(a), coarse(b))[0, 1])


def iou(a: Detection, b: Detection) -> float:
    width = max(0.0, min(a.box[2], b.box[2]) - max(a.box[0], b.box[0]))
    height = max(0.0, min(a.box[3], b.box[3]) - max(a.box[1], b.box[1]))
    inter = width * height
    return inter / (a.area + b.area - inter)


def keypoints_inside_box(detection: Detection) -> bool:
    x0, y0, x1, y1 = detection.box
    k = detection.keypoints
    return bool(((k[:, 0] >= x0) & (k[:, 0] <= x1) & (k[:, 1] >= y0) & (k[:, 1] <= y1)).all())


def frontal_order(k: np.ndarray) -> bool:
    """Subject's right eye on the image left, nose between the eyes, eyes above the mouth."""
    return bool(k[RIGHT_EYE, 0] < k[NOSE, 0] < k[LEFT_EYE, 0] and max(k[RIGHT_EYE, 1], k[LEFT_EYE, 1]) < k[MOUTH, 1])


def test_mediapipe_finds_one_face_with_keypoints_on_sd_faces(sd_paths, mediapipe):
    images = [load_rgb(p) for p in sd_paths]
    start = time.perf_counter()
    results = [mediapipe.detect(rgb) for rgb in images]
    per_image_ms = (time.perf_counter() - start) / len(images) * 1000
    single = [found[0] for found in results if len(found) == 1]
    good = sum(keypoints_inside_box(d) for d in single)
    ordered = sum(frontal_order(d.keypoints) for d in single)
    rate = good / len(images)
    print(f"\nMediaPipe short range on {len(images)} SD faces: exactly one face {len(single)}, "
          f"with all 6 keypoints in the box {good} ({rate:.1%}); {per_image_ms:.1f} ms/image")
    assert rate >= 0.95
    assert ordered >= 0.95 * len(single)
    assert all(d.keypoints.dtype == np.float32 and d.keypoints.shape == (6, 2) for d in single)
    assert all(0.5 <= d.score <= 1.0 for d in single)


def test_aligned_crop_has_level_eyes_that_redetection_confirms(sd_paths, mediapipe):
    angles, errors = [], []
    for path in sd_paths[::24]:
        rgb = load_rgb(path)
        face = align_face(rgb, mediapipe.detect(rgb)[0], size=224)
        assert face.image.shape == (224, 224, 3) and face.image.dtype == np.uint8
        assert abs(face.keypoints[LEFT_EYE, 1] - face.keypoints[RIGHT_EYE, 1]) < 1.0
        np.testing.assert_allclose(face.to_source(face.keypoints), face.detection.keypoints, atol=1e-3)
        again = mediapipe.detect(face.image)
        assert len(again) == 1, path.name
        angles.append(abs(eye_angle(again[0].keypoints)))
        eye_distance = np.linalg.norm(face.keypoints[LEFT_EYE] - face.keypoints[RIGHT_EYE])
        errors.append(np.linalg.norm(again[0].keypoints - face.keypoints, axis=1)[:4].mean() / eye_distance)
    # BlazeFace keypoints themselves wobble by a few degrees between runs at different scales
    assert np.median(angles) < 4.0 and max(angles) < 10.0
    assert np.median(errors) < 0.15  # keypoints mapped into the crop land where the crop shows them


@pytest.mark.parametrize("degrees", [15, -15])
def test_alignment_undoes_a_rotation(sd_paths, mediapipe, degrees):
    aligned, unaligned = [], []
    for path in sd_paths[::60]:
        rgb = load_rgb(path)
        upright = align_face(rgb, mediapipe.detect(rgb)[0], size=224)
        turned = rotate(rgb, degrees)
        found = mediapipe.detect(turned)
        assert len(found) == 1, path.name
        assert abs(eye_angle(found[0].keypoints) + degrees) < 15  # the detector sees the turn
        face = align_face(turned, found[0], size=224)
        assert abs(face.keypoints[LEFT_EYE, 1] - face.keypoints[RIGHT_EYE, 1]) < 1.0
        again = mediapipe.detect(face.image)
        assert len(again) == 1 and abs(eye_angle(again[0].keypoints)) < 7.0, path.name
        aligned.append(structure_correlation(face.image, upright.image))
        unaligned.append(structure_correlation(align_face(turned, found[0], 224, align=False).image, upright.image))
    print(f"\nrotated {degrees} deg: crop correlation with the upright crop, aligned "
          f"median {np.median(aligned):.3f} min {min(aligned):.3f}; not aligned median {np.median(unaligned):.3f}")
    assert np.median(aligned) > 0.85
    assert all(a > u for a, u in zip(aligned, unaligned))


def test_align_face_geometry_and_anti_aliasing(sd_paths):
    rgb = load_rgb(sd_paths[0])
    detection = Detection((100.0, 120.0, 300.0, 320.0), 0.9)
    face = align_face(rgb, detection, size=150, margin=0.25, align=False)
    # the 200 px box plus 50 px on every side fills the 150 px square exactly
    corners = cv2.transform(np.array([[[100, 120], [300, 320]]], np.float64), face.matrix)[0]
    np.testing.assert_allclose(corners, [[25, 25], [125, 125]], atol=1e-6)
    expected = cv2.resize(rgb[70:370, 50:350], (150, 150), interpolation=cv2.INTER_AREA)
    assert np.abs(face.image.astype(int) - expected).mean() < 1.5

    # the same face from a 4x larger image gives the same crop (area-averaged, not aliased)
    big = cv2.resize(rgb, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
    big_face = align_face(big, Detection(tuple(4 * v for v in detection.box), 0.9), size=150, align=False)
    aliased = cv2.warpAffine(big, big_face.matrix, (150, 150), flags=cv2.INTER_LINEAR)
    difference = np.abs(big_face.image.astype(int) - face.image).mean()
    assert difference < 4.0 and difference < 0.6 * np.abs(aliased.astype(int) - face.image).mean()

    # a box past the image edge gets the constant there, not repeated edge pixels (tests/test_crops.py)
    edge = align_face(rgb, Detection((-200.0, 0.0, 100.0, 300.0), 0.9), size=64, margin=0.0, align=False)
    assert (edge.image[:, :42] == CROP_PAD_VALUE).all()  # 200 of the 300 px box lie left of the image


def test_haar_finds_most_sd_faces_with_six_keypoints(sd_paths, haar, mediapipe):
    sample = sd_paths[::10]
    found, agree, ordered, seconds = 0, 0, 0, 0.0
    for path in sample:
        rgb = load_rgb(path)
        start = time.perf_counter()
        detections = haar.detect(rgb)
        seconds += time.perf_counter() - start
        for d in detections:
            assert d.keypoints.shape == (6, 2) and np.isfinite(d.keypoints).all()
            assert 0.5 <= d.score < 1.0
        if detections:
            found += 1
            best = detections[0]
            agree += iou(best, mediapipe.detect(rgb)[0]) > 0.3
            ordered += frontal_order(best.keypoints) and keypoints_inside_box(best)
    rate = found / len(sample)
    print(f"\nHaar on {len(sample)} SD faces: found a face in {found} ({rate:.1%}), {agree} agree with "
          f"MediaPipe (IoU > 0.3); {seconds / len(sample) * 1000:.0f} ms/image")
    assert rate >= 0.9
    assert agree >= 0.9 * found and ordered >= 0.9 * found


def test_haar_eye_keypoints_follow_a_tilted_face(sd_paths, haar):
    errors = []
    for path in sd_paths[::40]:
        rgb = load_rgb(path)
        upright, tilted = haar.detect(rgb), haar.detect(rotate(rgb, 10))
        if upright and tilted:
            errors.append(abs(eye_angle(tilted[0].keypoints) - eye_angle(upright[0].keypoints) + 10))
    assert len(errors) >= 10
    assert np.median(errors) < 3.0  # a box-only template would be 10 degrees off


def test_full_range_model_finds_small_faces_in_a_grid(face_model_path, sd_paths):
    full_range = require_shared(face_model_path.parent / "face_detection_full_range_sparse.tflite")
    detector = create_detector("mediapipe", model_path=full_range, paddings=(0.0,))
    grid = np.full((768, 768, 3), 255, np.uint8)
    for index, path in enumerate(sd_paths[::50][:9]):
        row, column = divmod(index, 3)
        grid[row * 256:(row + 1) * 256, column * 256:(column + 1) * 256] = cv2.resize(
            load_rgb(path), (256, 256), interpolation=cv2.INTER_AREA)
    found = detector.detect(grid)
    cells = {(int(d.center[1] // 256), int(d.center[0] // 256)) for d in found}
    assert len(found) >= 8 and len(cells) == len(found)  # one detection per face, in its own cell


def test_no_face_gives_no_detections(mediapipe, haar):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    blobs = cv2.GaussianBlur(noise, (0, 0), 4)
    grey = np.full((480, 640, 3), 128, np.uint8)
    for image in (grey, noise, blobs, noise[:256, :256]):
        assert mediapipe.detect(image) == []
        assert haar.detect(image) == []
    pipeline = FacePipeline(mediapipe, crop_size=112)
    assert pipeline.extract(blobs) == [] and pipeline.largest(blobs) is None


def test_fer2013_faces_go_through_whole_image_face(fer2013_root):
    paths = sorted((fer2013_root / "test" / "happy").glob("*.jpg"))[:20]
    assert len(paths) == 20
    for path in paths:
        rgb = load_rgb(path)
        assert rgb.shape == (48, 48, 3)
        face = whole_image_face(rgb, size=224)
        assert face.image.shape == (224, 224, 3)
        assert (face.image[..., 0] == face.image[..., 2]).all()  # grayscale stays gray
        assert abs(float(face.image.mean()) - float(rgb.mean())) < 2.0
        np.testing.assert_allclose(cv2.transform(np.array([[[48.0, 48.0]]]), face.matrix)[0, 0], [224, 224])
        assert face.detection.box == (0.0, 0.0, 48.0, 48.0) and face.detection.score == 1.0
        assert face.keypoints is None and face.detection.keypoints is None
        np.testing.assert_array_equal(whole_image_face(rgb[..., 0], size=224).image, face.image)
        np.testing.assert_array_equal(whole_image_face(rgb).image, rgb)

    pipeline = FacePipeline(None, crop_size=64)
    assert pipeline.fingerprint() != FacePipeline(None, crop_size=48).fingerprint()
    faces = pipeline.extract(load_rgb(paths[0])[..., 0])
    assert len(faces) == 1 and faces[0].image.shape == (64, 64, 3)

    # a non-square image gives its centre square
    wide = np.hstack([load_rgb(paths[0]), load_rgb(paths[1])])
    centre = whole_image_face(wide)
    np.testing.assert_array_equal(centre.image, wide[:, 24:72])
    np.testing.assert_allclose(centre.to_source([[0.0, 0.0]]), [[24.0, 0.0]])


def test_pipeline_orders_faces_and_limits_them(sd_paths, mediapipe):
    canvas = np.full((512, 1024, 3), 90, np.uint8)
    canvas[32:480, 16:464] = cv2.resize(load_rgb(sd_paths[10]), (448, 448), interpolation=cv2.INTER_AREA)
    canvas[96:416, 688:1008] = cv2.resize(load_rgb(sd_paths[300]), (320, 320), interpolation=cv2.INTER_AREA)
    pipeline = FacePipeline(mediapipe, crop_size=96)
    faces = pipeline.extract(canvas)
    assert len(faces) == 2
    assert sorted(f.detection.center[0] > 576 for f in faces) == [False, True]  # one face per tile
    assert faces[0].detection.area > faces[1].detection.area
    assert all(f.image.shape == (96, 96, 3) for f in faces)
    np.testing.assert_array_equal(pipeline.largest(canvas).image, faces[0].image)
    assert len(FacePipeline(mediapipe, crop_size=96, max_faces=1).extract(canvas)) == 1


def test_pipeline_fingerprint_tracks_every_setting(face_model_path, mediapipe, haar):
    base = FacePipeline(mediapipe, crop_size=224)
    assert base.fingerprint() == FacePipeline(MediaPipeDetector(face_model_path), crop_size=224).fingerprint()
    variants = [FacePipeline(mediapipe, crop_size=112), FacePipeline(mediapipe, margin=0.4),
                FacePipeline(mediapipe, align=False), FacePipeline(haar), FacePipeline(None),
                FacePipeline(MediaPipeDetector(face_model_path, min_score=0.7))]
    prints = {p.fingerprint() for p in variants}
    assert len(prints) == len(variants) and base.fingerprint() not in prints


def test_detector_from_config_picks_the_detector(face_model_path, monkeypatch):
    def faces(**values):
        return config_from_dict({"faces": values}).faces

    # auto is MediaPipe with the shipped short-range model (the same file as the shared one)
    for detector in (detector_from_config(faces()), detector_from_config(faces(detector="mediapipe"))):
        assert isinstance(detector, MediaPipeDetector) and detector.model_path == SHIPPED_FACE_MODELS["short_range"]
        assert detector.fingerprint() == MediaPipeDetector(face_model_path).fingerprint()
    assert isinstance(detector_from_config(faces(mediapipe_model=str(face_model_path))), MediaPipeDetector)
    assert isinstance(detector_from_config(faces(detector="haar")), HaarDetector)  # Haar only when asked
    assert isinstance(detector_from_config(faces(detector="haar", mediapipe_model=str(face_model_path))), HaarDetector)
    assert detector_from_config(faces(detector="none", mediapipe_model=str(face_model_path))) is None
    full_range = detector_from_config(faces(mediapipe_model="full_range"))
    assert full_range.model_path == SHIPPED_FACE_MODELS["full_range"]
    assert full_range.fingerprint() != detector_from_config(faces(mediapipe_model="short_range")).fingerprint()
    with pytest.raises(ConfigError, match="faces.mediapipe_model.*full_range"):
        faces(mediapipe_model="fullrange")  # a misspelt name is a missing file, and the message lists the names
    detector = detector_from_config(faces(min_score=0.8))
    assert detector.min_score == 0.8

    monkeypatch.setenv(ENV_FACE_MODEL, str(face_model_path))
    detector = detector_from_config(faces())
    assert isinstance(detector, MediaPipeDetector) and detector.model_path == face_model_path


def test_pipeline_from_config_resolves_a_relative_model_path(tmp_path, face_model_path, sd_paths):
    (tmp_path / "models").mkdir()
    shutil.copy(face_model_path, tmp_path / "models" / "face.tflite")
    config = config_from_dict({"faces": {"mediapipe_model": "models/face.tflite", "margin": 0.1, "align": False}},
                              root=tmp_path)
    pipeline = FacePipeline.from_config(config, crop_size=112)
    assert pipeline.detector.model_path == tmp_path / "models" / "face.tflite"
    assert (pipeline.margin, pipeline.align, pipeline.crop_size) == (0.1, False, 112)
    face = pipeline.largest(load_rgb(sd_paths[0]))
    assert face is not None and face.image.shape == (112, 112, 3)
    whole = FacePipeline.from_config(config_from_dict({"faces": {"detector": "none"}}), 64)
    assert whole.detector is None
    faces = whole.extract(np.zeros((10, 20, 3), np.uint8))
    assert len(faces) == 1 and faces[0].image.shape == (64, 64, 3) and faces[0].detection.box == (0, 0, 20, 10)


def test_model_file_errors_name_the_path(tmp_path):
    missing = tmp_path / "no_such_face_model.tflite"
    with pytest.raises(ModelLoadError) as error:
        create_detector("mediapipe", model_path=missing)
    message = str(error.value)
    assert str(missing) in message and "faces.mediapipe_model" in message and ENV_FACE_MODEL in message

    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"not a model" * 100)
    with pytest.raises(ModelLoadError, match="garbage.tflite"):
        MediaPipeDetector(garbage)


def test_bad_arguments_are_clear_errors(mediapipe):
    with pytest.raises(InvalidArgument, match="create_detector.*'name'.*haar.*mediapipe.*'retinaface'"):
        create_detector("retinaface")
    with pytest.raises(DataError, match="x1 > x0"):
        Detection((10, 10, 5, 20), 0.9)
    with pytest.raises(DataError, match=r"\(6, 2\)"):
        Detection((0, 0, 5, 5), 0.9, np.zeros((5, 2)))
    with pytest.raises(DataError, match="uint8"):
        mediapipe.detect(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(DataError, match=r"\(H, W, 3\)"):
        mediapipe.detect(np.zeros((64, 64, 4), np.uint8))
    with pytest.raises(InvalidArgument, match=r"HaarDetector\(\) argument 'min_score': expected a number in \[0, 1\]"):
        HaarDetector(min_score=1.5)
    with pytest.raises(InvalidArgument, match=r"align_face\(\) argument 'size': expected an integer >= 1, got 0"):
        align_face(np.zeros((8, 8, 3), np.uint8), Detection((0, 0, 4, 4), 1.0), size=0)
    with pytest.raises(InvalidArgument, match=r"FacePipeline\(\) argument 'max_faces'"):
        FacePipeline(None, max_faces=0)
    with pytest.raises(InvalidArgument, match="paddings"):
        MediaPipeDetector(paddings=(0.1, -0.2))
