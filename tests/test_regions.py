"""Facial regions placed from BlazeFace keypoints on real faces (aligned Stable Diffusion
detections and FER+ crops), region shares of the shipped model's attributions, the domain
test, and maps warped onto the aligned face template."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_core.data import open_dataset
from fer_core.data.datasets import FerPlusDataset
from fer_core.errors import DataError
from fer_core.explain import (REGIONS, aligned_template, class_mean_maps, crop_keypoints, explain, mean_face,
                              overlay, region_labels, region_masks, region_report, region_shares, to_template)
from fer_core.explain.regions import PRECROPPED_TEMPLATE, region_areas, template_transforms
from fer_core.faces import FacePipeline, MediaPipeDetector
from fer_core.models import FerModel, load_model

SHIPPED = Path(__file__).resolve().parent.parent / "weights" / "fer_b0_ferplus.safetensors"
#: The side of the aligned SD crops the geometry tests use (maps are at the model's input size).
CROP = 64


@pytest.fixture(scope="module")
def detector(face_model_path) -> MediaPipeDetector:
    return MediaPipeDetector(face_model_path)


@pytest.fixture(scope="module")
def b0() -> FerModel:
    return load_model(SHIPPED)


@pytest.fixture(scope="module")
def sd_faces(detector, synthetic_root):
    """24 Stable Diffusion faces detected and aligned at :data:`CROP` px, with their labels."""
    dataset = open_dataset(str(synthetic_root), synthetic_root)
    pipeline = FacePipeline(detector, crop_size=CROP, margin=0.25)
    faces, labels = [], []
    for index in np.linspace(0, len(dataset) - 1, 24).astype(int):
        face = pipeline.largest(dataset.read(dataset[int(index)]))
        assert face is not None and face.keypoints is not None
        faces.append(face)
        labels.append(dataset.labels[int(index)])
    return faces, np.array(labels)


@pytest.fixture(scope="module")
def fer_faces(ferplus_root, detector):
    """48 FER+ test crops spread over the split, their labels and upscaled-detector keypoints."""
    dataset = FerPlusDataset(ferplus_root, "test")
    picks = np.linspace(0, len(dataset) - 1, 48).astype(int)
    images = [dataset.read(dataset[int(i)]) for i in picks]
    keypoints, detected = crop_keypoints(images, detector)
    return images, dataset.labels[picks], keypoints, detected


def _pixel(point: np.ndarray) -> tuple[int, int]:
    """(row, column) of the pixel a continuous point falls in."""
    return int(np.floor(point[1])), int(np.floor(point[0]))


def test_regions_land_on_the_features_of_aligned_faces(sd_faces):
    faces, _ = sd_faces
    darker_than_nose, darker_than_cheeks = [], []
    for face in faces:
        masks = region_masks(face.keypoints, 64)
        assert list(masks) == list(REGIONS)
        stacked = np.stack(list(masks.values())).astype(int)
        assert (stacked.sum(axis=0) == 1).all(), "disjoint and covering"
        right_eye, left_eye, nose, mouth = (face.keypoints[i] for i in range(4))
        assert masks["eyes"][_pixel(right_eye)] and masks["eyes"][_pixel(left_eye)]
        assert masks["mouth"][_pixel(mouth)] and masks["nose"][_pixel(nose)]
        assert all(masks["background"][corner] for corner in ((0, 0), (0, 63), (63, 0), (63, 63)))
        assert 0 < masks["eyes"].sum() < masks["cheeks_jaw"].sum()
        # the image itself (not the keypoints): eyes are darker than the nose and the cheeks
        gray = cv2.cvtColor(face.image, cv2.COLOR_RGB2GRAY).astype(float)
        darker_than_nose.append(gray[masks["eyes"]].mean() < gray[masks["nose"]].mean())
        darker_than_cheeks.append(gray[masks["eyes"]].mean() < gray[masks["cheeks_jaw"]].mean())
    assert np.mean(darker_than_nose) >= 0.9 and np.mean(darker_than_cheeks) >= 0.75
    batched = region_labels(np.stack([f.keypoints for f in faces]), 64)
    np.testing.assert_array_equal(batched[3], region_labels(faces[3].keypoints, 64))


def test_regions_follow_a_tilted_face(sd_faces):
    """Rotating the crop and its keypoints together rotates the regions with them."""
    face = sd_faces[0][0]
    rotation = cv2.getRotationMatrix2D((32.0, 32.0), 20, 1.0)  # in continuous coordinates
    points = np.asarray(face.keypoints, np.float64) @ rotation[:, :2].T + rotation[:, 2]
    indices = rotation.copy()
    indices[:, 2] += rotation[:, :2] @ (0.5, 0.5) - 0.5  # cv2 indexes pixel centres
    image = cv2.warpAffine(face.image, indices, (64, 64), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    masks = region_masks(points, 64)
    assert masks["eyes"][_pixel(points[0])] and masks["eyes"][_pixel(points[1])] and masks["mouth"][_pixel(points[3])]
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(float)
    assert gray[masks["eyes"]].mean() < gray[masks["nose"]].mean()


def test_fer_crops_get_keypoints_from_the_upscaled_detector(fer_faces, sd_faces, detector):
    images, _, keypoints, detected = fer_faces
    assert detected.mean() >= 0.9, detected.mean()
    found = keypoints[detected]
    assert (found[:, 0, 0] < found[:, 1, 0]).all(), "the subject's right eye is on the image's left"
    assert (found[:, :2, 1].max(axis=1) < found[:, 3, 1]).all(), "eyes above the mouth"
    for missed in keypoints[~detected]:  # the template stands in where the detector finds nothing
        np.testing.assert_allclose(missed, PRECROPPED_TEMPLATE * 48, rtol=1e-6)
    template_only, none_detected = crop_keypoints(images[:2], None)
    assert not none_detected.any() and np.allclose(template_only, PRECROPPED_TEMPLATE * 48)
    # How close is the upscaled detector on a 48 px crop? Aligned SD faces shrunk to 48 px
    # against the keypoints of the full-resolution detection.
    errors = []
    for face in sd_faces[0][:12]:
        crop = cv2.resize(face.image, (48, 48), interpolation=cv2.INTER_AREA)
        points, ok = crop_keypoints([crop], detector)
        if ok[0]:
            errors.append(np.linalg.norm(points[0, :4] - face.keypoints[:4] * 48 / 64, axis=1))
    assert len(errors) >= 11 and np.median(errors) < 1.5, np.median(errors)


@pytest.fixture(scope="module")
def shares_by_domain(b0, fer_faces, sd_faces):
    """The shipped model's Grad-CAM (blocks.3) region shares of 48 FER+ and 24 SD faces
    for their true classes, with labels, domains, keypoints (in map pixels) and maps."""
    images, fer_labels, fer_keypoints, _ = fer_faces
    faces, sd_labels = sd_faces
    batch = b0.preprocessing.batch(images + [face.image for face in faces])
    labels = np.concatenate([fer_labels, sd_labels])
    size = b0.input_size
    keypoints = np.concatenate([fer_keypoints * size / 48, np.stack([face.keypoints for face in faces]) * size / CROP])
    maps = explain(b0, batch, "gradcam", target=labels.tolist(), layer="blocks.3").maps
    domains = np.array(["real"] * len(images) + ["synthetic"] * len(faces))
    return region_shares(maps, keypoints), labels, domains, keypoints, maps


def test_region_shares_of_real_attributions(shares_by_domain):
    shares, _, _, keypoints, maps = shares_by_domain
    assert shares.shape == (72, len(REGIONS))
    finite = np.isfinite(shares).all(axis=1)
    assert finite.mean() >= 0.9, "Grad-CAM is empty only where the class has no evidence"
    np.testing.assert_allclose(shares[finite].sum(axis=1), 1.0, rtol=1e-9)
    assert (shares[finite] >= 0).all()
    face = int(np.flatnonzero(finite)[0])
    size = maps.shape[-1]
    masks = region_masks(keypoints[face], size)
    positive = np.maximum(maps[face], 0)
    assert shares[face, REGIONS.index("mouth")] == pytest.approx(positive[masks["mouth"]].sum() / positive.sum())
    # a map with all its mass on the mouth, and a uniform map measured per area
    only_mouth = np.where(masks["mouth"], 1.0, -1.0)[None]
    assert region_shares(only_mouth, keypoints[face:face + 1])[0, REGIONS.index("mouth")] == pytest.approx(1.0)
    uniform = region_shares(np.ones((2, size, size)), keypoints[:2], per_area=True)
    np.testing.assert_allclose(uniform, 1.0, rtol=1e-9)
    np.testing.assert_allclose(region_areas(keypoints[:2], size).sum(axis=1), 1.0)
    with pytest.raises(DataError, match="one \\(6, 2\\) keypoint array per map"):
        region_shares(maps[:3], keypoints[:2])


def test_domain_test_calls_a_shift_and_not_two_halves_of_one_domain(shares_by_domain):
    shares, labels, domains, _, _ = shares_by_domain
    real = shares[domains == "real"]
    real_labels = labels[domains == "real"]
    # 20 random splits into halves: Holm keeps the family-wise error at 5 % (2 % measured over 100
    # splits with the 64 px model; 3 of these 20 with both 112 px models, the average shipped before
    # the three-model soup included). At a 5 % rate,
    # 4 or more calls in 20 come about 1.6 % of the time (binomial); a test that ignored Holm, or
    # called every split, would make far more
    called = []
    for seed in range(20):
        halves = np.where(np.random.default_rng(seed).permutation(len(real)) % 2 == 0, "a", "b")
        report = region_report(real, real_labels, halves, n_resamples=100, n_permutations=999)
        overall = [row for row in report["differences"] if row["emotion"] == "all"]
        assert [row["region"] for row in overall] == list(REGIONS)
        called.append(min(row["p_holm"] for row in overall) < 0.05)
    assert sum(called) <= 3, called
    halves = np.where(np.random.default_rng(0).permutation(len(real)) % 2 == 0, "a", "b")
    # the same faces with 0.15 of each face's share moved onto the mouth in half "b", from the
    # region holding most of it (so the shift is the same on every face, whatever the model looks at)
    shifted = real.copy()
    mouth_column = REGIONS.index("mouth")
    donors = np.where(np.arange(len(REGIONS)) == mouth_column, -np.inf, np.nan_to_num(shifted, nan=-np.inf)).argmax(1)
    faces_b = np.flatnonzero(halves == "b")
    moved = np.minimum(0.15, shifted[faces_b, donors[faces_b]])
    shifted[faces_b, donors[faces_b]] -= moved
    shifted[faces_b, mouth_column] += moved
    report = region_report(shifted, real_labels, halves, n_resamples=500, n_permutations=1999)
    mouth = next(row for row in report["differences"] if row["emotion"] == "all" and row["region"] == "mouth")
    # Holm p 0.007 measured with the 96 px and both 112 px models; a 0.1 shift gave 0.054 (its real faces' shares
    # spread more than the 64 px model's, where 0.1 was found)
    assert mouth["p_holm"] < 0.01 and mouth["difference"] < 0, mouth
    for row in report["shares"]:
        if row["n"] >= 2:
            assert row["ci_low"] <= row["mean"] <= row["ci_high"]
    json.loads(json.dumps(report))
    assert "permutation" in report["test"]


def test_region_report_over_real_and_synthetic_faces(shares_by_domain):
    shares, labels, domains, _, _ = shares_by_domain
    report = region_report(shares, labels, domains, n_resamples=500, n_permutations=999)
    emotions = {row["emotion"] for row in report["shares"]}
    assert "all" in emotions and {"Happiness", "Neutral"} <= emotions
    background = {row["domain"]: row for row in report["shares"]
                  if row["emotion"] == "all" and row["region"] == "background"}
    # the aligned SD crops keep a margin around the face, the FER crops hardly any
    assert background["synthetic"]["mean"] > background["real"]["mean"]
    with pytest.raises(DataError, match="one label and one domain per face"):
        region_report(shares, labels[:-1], domains)


def test_maps_warped_onto_the_template_line_up(fer_faces, sd_faces):
    images, labels, keypoints, detected = fer_faces
    # each face's keypoints land near the template's (a least-squares similarity: not exactly)
    transforms = template_transforms(keypoints, 64)
    moved = np.einsum("nij,nkj->nki", transforms[:, :, :2], keypoints) + transforms[:, None, :, 2]
    residuals = np.linalg.norm(moved[detected, :4] - aligned_template(64)[:4], axis=2)
    assert np.median(residuals) < 2.5, np.median(residuals)
    # and a blob on each face's right eye goes where the transform takes that eye
    rows, cols = np.mgrid[0:48, 0:48] + 0.5
    blobs = np.stack([np.exp(-((cols - k[0, 0]) ** 2 + (rows - k[0, 1]) ** 2) / 4.0) for k in keypoints])
    warped = to_template(blobs, keypoints, 64)
    for face in range(12):
        peak = np.unravel_index(np.nanargmax(warped[face]), (64, 64))
        assert np.hypot(peak[1] + 0.5 - moved[face, 0, 0], peak[0] + 0.5 - moved[face, 0, 1]) <= 1.0
    target = aligned_template(64)[0]
    assert np.isnan(warped).any(), "the tight FER crops do not fill the aligned frame"
    # aligned SD crops already sit on the template
    sd_points = np.stack([face.keypoints for face in sd_faces[0]])
    assert np.median(np.abs(sd_points - aligned_template(64)), axis=0).max() < 2.0
    means = class_mean_maps(blobs, labels, [f"class{i}" for i in range(8)], keypoints=keypoints, size=64)
    first = f"class{labels[0]}"
    assert means[first].shape == (64, 64)
    peak = np.unravel_index(np.nanargmax(means[first]), (64, 64))
    assert np.hypot(peak[1] + 0.5 - target[0], peak[0] + 0.5 - target[1]) <= 3.0
    backdrop = mean_face(images, keypoints, 64)
    assert backdrop.shape == (64, 64, 3) and backdrop.dtype == np.uint8
    template_masks = region_masks(aligned_template(64), 64)
    gray = backdrop.mean(axis=2)
    assert gray[template_masks["eyes"]].mean() < gray[template_masks["nose"]].mean()
    shown = overlay(backdrop, means[first], alpha=1.0)
    outside = np.isnan(cv2.resize(means[first], (64, 64)))
    assert np.array_equal(shown[outside], backdrop[outside]), "no heat where no face reaches"
