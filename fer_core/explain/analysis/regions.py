"""Facial regions on a face crop, placed from the detector's six BlazeFace keypoints, and the
share of positive attribution that falls in each region — per class and per domain, with
bootstrap confidence intervals and a permutation test of the difference between domains.

Coordinates are continuous pixel coordinates of the crop (or map): pixel ``(i, j)`` has its
centre at ``(i + 0.5, j + 0.5)``, as in :mod:`fer_core.faces.align`. Keypoints are ``(6, 2)``
(or ``(N, 6, 2)``) in :data:`~fer_core.faces.KEYPOINT_NAMES` order. When maps are at another
resolution than the crop the keypoints were found on, scale the keypoints by
``map_size / crop_size`` first.

Regions are built in a face frame: ``x`` along the line from the image-left eye to the
image-right eye in units of the eye distance, ``y`` perpendicular to it (down) in units of the
distance from the eye line to the mouth. Each pixel gets exactly one region (the masks are
disjoint and cover the image): cheeks/jaw is the face oval, then, each overriding the one
before, forehead, brows, nose (following the nose tip), eyes and mouth (centred on the mouth
keypoint); background is what none of them claims.

Pre-cropped datasets (FER2013 / FER+, 48 px) have no detection: :func:`crop_keypoints` runs the
detector on the crop upscaled 4x and falls back to :data:`PRECROPPED_TEMPLATE`. Measured with the
short-range BlazeFace model: it finds a face in 197/200 FER+ and 199/200 FER2013 test crops;
on Stable Diffusion faces cut tight (margin 0) to 48 px its keypoints are within 1.3-1.7 px
(median) of the full-resolution detection, while the mean-position template is 2.4-3.5 px off
on FER+ crops (whose faces are not aligned), so the detector is used where it finds a face.
"""

from __future__ import annotations

from itertools import combinations
from numbers import Integral, Real
from typing import Callable, Mapping, Sequence

import cv2
import numpy as np
from scipy import stats

from fer_core.errors import DataError
from fer_core.explain.base import centre_prior
from fer_core.faces.detectors import KEYPOINT_NAMES, LEFT_EYE, MOUTH, RIGHT_EYE, FaceDetector, as_rgb
from fer_core.labels import EMOTIONS
from fer_core.validation import Interval, StrOptions, validate_params

NOSE = KEYPOINT_NAMES.index("nose_tip")

#: Every region, in label order (:func:`region_labels` values index this tuple).
REGIONS = ("background", "cheeks_jaw", "forehead", "brows", "nose", "eyes", "mouth")

#: Mean keypoints of faces cut by :func:`~fer_core.faces.align_face` (margin 0.25, eyes
#: levelled), as fractions of the crop side: measured on 120 Stable Diffusion faces (std of the
#: eyes 0.02 x / 0.004 y, of the mouth 0.014 / 0.004; of the ears about 0.1 / 0.03).
ALIGNED_TEMPLATE = np.array([(0.366, 0.352), (0.636, 0.352), (0.498, 0.514),
                             (0.499, 0.648), (0.220, 0.411), (0.795, 0.412)], dtype=np.float64)
#: The margin :data:`ALIGNED_TEMPLATE` was measured at.
TEMPLATE_MARGIN = 0.25
#: Mean BlazeFace keypoints of FER+ and FER2013 test crops (400 faces, detected at 4x), as
#: fractions of the crop side; std about 0.07 on every coordinate (the crops are not aligned).
PRECROPPED_TEMPLATE = np.array([(0.323, 0.396), (0.678, 0.385), (0.507, 0.596),
                                (0.512, 0.773), (0.139, 0.471), (0.868, 0.446)], dtype=np.float64)


#: A crop side in pixels: an integer >= 2.
SIDE = Interval(Integral, 2, None)


@validate_params({"size": [SIDE], "margin": [Interval(Real, 0, None)]})
def aligned_template(size: int, margin: float = TEMPLATE_MARGIN) -> np.ndarray:
    """``(6, 2)`` keypoints of a typical face in a ``size`` crop cut by ``align_face`` at
    ``margin`` (the crop is centred on the face, so other margins scale about the centre)."""
    scale = (1 + 2 * TEMPLATE_MARGIN) / (1 + 2 * margin)
    return ((ALIGNED_TEMPLATE - 0.5) * scale + 0.5) * size


def _check_keypoints(keypoints: np.ndarray) -> np.ndarray:
    """``keypoints`` as a finite float64 ``(N, 6, 2)`` array with distinct eyes."""
    array = np.asarray(keypoints, dtype=np.float64)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != (len(KEYPOINT_NAMES), 2) or not np.isfinite(array).all():
        raise DataError(f"keypoints: expected finite (6, 2) or (N, 6, 2) arrays in the order {KEYPOINT_NAMES}, "
                        f"got shape {np.shape(keypoints)}")
    if (np.linalg.norm(array[:, LEFT_EYE] - array[:, RIGHT_EYE], axis=1) < 1e-6).any():
        raise DataError("keypoints: the two eyes coincide, so no face frame can be placed")
    return array


#: The face frame (see the module docstring) of each pixel: ``x``, ``y``, and the frame's
#: mouth and nose positions, as arrays broadcast over the pixels.
Frame = Mapping[str, np.ndarray]


def _frame(keypoints: np.ndarray, size: int) -> Frame:
    """Face-frame coordinates of every pixel centre of a ``size`` square, for each face."""
    right, left = keypoints[:, RIGHT_EYE], keypoints[:, LEFT_EYE]
    centre = (right + left) / 2
    across = left - right
    eye_distance = np.linalg.norm(across, axis=1)
    u = across / eye_distance[:, None]
    v = np.stack([-u[:, 1], u[:, 0]], axis=1)  # u turned 90 degrees: down for level eyes
    # eye line to mouth, kept to plausible faces (a profile or bad detection can fold it)
    drop = np.clip(np.einsum("nk,nk->n", keypoints[:, MOUTH] - centre, v), 0.6 * eye_distance, 2.0 * eye_distance)
    pixels = np.arange(size, dtype=np.float64) + 0.5
    px = pixels[None, None, :] - centre[:, 0, None, None]
    py = pixels[None, :, None] - centre[:, 1, None, None]
    x = (px * u[:, 0, None, None] + py * u[:, 1, None, None]) / eye_distance[:, None, None]
    y = (px * v[:, 0, None, None] + py * v[:, 1, None, None]) / drop[:, None, None]

    def along(point: np.ndarray, axis: np.ndarray, unit: np.ndarray) -> np.ndarray:
        return (np.einsum("nk,nk->n", point - centre, axis) / unit)[:, None, None]

    nose_y = np.clip(along(keypoints[:, NOSE], v, drop), 0.3, 0.85)
    return {"x": x, "y": y, "mouth_x": along(keypoints[:, MOUTH], u, eye_distance),
            "mouth_y": along(keypoints[:, MOUTH], v, drop),  # 1 unless the drop was clipped
            "nose_x": along(keypoints[:, NOSE], u, eye_distance), "nose_y": nose_y}


def _oval(f: Frame) -> np.ndarray:
    # chin 0.7 below the mouth, hairline 1.05 above the eyes; 1.05 eye distances to each side
    return (f["x"] / 1.05) ** 2 + ((f["y"] - 0.325) / 1.375) ** 2 <= 1


def _forehead(f: Frame) -> np.ndarray:
    return _oval(f) & (f["y"] < -0.42)


def _brows(f: Frame) -> np.ndarray:
    return (f["y"] >= -0.42) & (f["y"] < -0.12) & (np.abs(f["x"]) <= 0.95)


def _nose(f: Frame) -> np.ndarray:
    # from between the eyes down to the tip (which a turned head moves sideways), widening
    along = np.clip(f["y"] / f["nose_y"], 0, 1)
    return ((f["y"] >= -0.12) & (f["y"] <= f["nose_y"] + 0.2)
            & (np.abs(f["x"] - f["nose_x"] * along) <= 0.2 + 0.12 * along))


def _eyes(f: Frame) -> np.ndarray:
    return ((np.abs(f["x"]) - 0.5) / 0.36) ** 2 + (f["y"] / 0.2) ** 2 <= 1


def _mouth(f: Frame) -> np.ndarray:
    return ((f["x"] - f["mouth_x"]) / 0.62) ** 2 + ((f["y"] - f["mouth_y"]) / 0.3) ** 2 <= 1


#: Each face region and its shape in the face frame, in the order they are painted (a later
#: region overrides an earlier one); pixels none claims are background.
_SHAPES: tuple[tuple[str, Callable[[Frame], np.ndarray]], ...] = (
    ("cheeks_jaw", _oval), ("forehead", _forehead), ("brows", _brows), ("nose", _nose),
    ("eyes", _eyes), ("mouth", _mouth))


@validate_params({"size": [SIDE]})
def region_labels(keypoints: np.ndarray, size: int) -> np.ndarray:
    """``(N, size, size)`` uint8 region indices into :data:`REGIONS` for faces with ``(N, 6, 2)``
    keypoints (``(size, size)`` for one ``(6, 2)`` face), in a ``size`` x ``size`` crop."""
    single = np.ndim(keypoints) == 2
    points, size = _check_keypoints(keypoints), int(size)
    frame = _frame(points, size)
    labels = np.zeros((len(points), size, size), dtype=np.uint8)
    for name, shape in _SHAPES:
        labels[shape(frame)] = REGIONS.index(name)
    return labels[0] if single else labels


def region_masks(keypoints: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """One face's regions as ``{name: (size, size) bool mask}`` (disjoint, covering the crop),
    from its ``(6, 2)`` keypoints."""
    if np.ndim(keypoints) != 2:
        raise DataError(f"keypoints: expected one face's (6, 2) array, got shape {np.shape(keypoints)}")
    labels = region_labels(keypoints, size)
    return {name: labels == index for index, name in enumerate(REGIONS)}


def region_areas(keypoints: np.ndarray, size: int) -> np.ndarray:
    """``(N, len(REGIONS))`` fraction of a ``size`` crop each region covers, per face."""
    points = _check_keypoints(keypoints)
    labels = region_labels(points, size).reshape(len(points), -1)
    return np.stack([(labels == index).mean(axis=1) for index in range(len(REGIONS))], axis=1)


def region_shares(maps: np.ndarray, keypoints: np.ndarray, per_area: bool = False) -> np.ndarray:
    """``(N, len(REGIONS))`` share of each face's positive attribution in each region:
    ``maps`` is ``(N, H, W)`` with H == W, ``keypoints`` ``(N, 6, 2)`` in the maps' pixel
    coordinates. Rows sum to 1; a face with no positive attribution gets a row of NaN.

    With ``per_area`` each share is divided by the fraction of the crop its region covers
    (1: as much as a uniform map gives it; NaN for a region absent from the crop), so crops
    framed differently (tight FER crops, looser aligned detections) compare fairly: with the
    default margin 0.25 the background covers 63 % of a Stable Diffusion crop and 38 % of a
    FER+ crop, so raw shares differ between the two even for a uniform map."""
    stack = np.asarray(maps, dtype=np.float64)
    if stack.ndim != 3 or stack.shape[1] != stack.shape[2] or not np.isfinite(stack).all():
        raise DataError(f"maps: expected finite square (N, H, W) attribution maps, got shape {stack.shape}")
    points = _check_keypoints(keypoints)
    if len(points) != len(stack):
        raise DataError(f"expected one (6, 2) keypoint array per map, got {len(points)} for {len(stack)} maps")
    labels = region_labels(points, stack.shape[1]).reshape(len(stack), -1).astype(np.int64)
    offsets = labels + np.arange(len(stack))[:, None] * len(REGIONS)
    positive = np.maximum(stack, 0).reshape(len(stack), -1)
    sums = np.bincount(offsets.ravel(), positive.ravel(), minlength=len(stack) * len(REGIONS))
    sums = sums.reshape(len(stack), len(REGIONS))
    totals = sums.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(totals > 0, sums / np.where(totals > 0, totals, 1), np.nan)
    if per_area:
        areas = np.stack([(labels == index).mean(axis=1) for index in range(len(REGIONS))], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            shares = np.where(areas > 0, shares / np.where(areas > 0, areas, 1), np.nan)
    return shares


@validate_params({"upscale": [Interval(Integral, 1, None)]})
def crop_keypoints(images: Sequence[np.ndarray], detector: FaceDetector | None, upscale: int = 4
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints of pre-cropped square faces (FER2013 / FER+ crops): ``(N, 6, 2)`` float32 in
    each image's pixels, and ``(N,)`` bools saying which were detected. Each crop is upscaled
    ``upscale`` times (bicubic) for ``detector``; the largest face's keypoints are kept, and
    :data:`PRECROPPED_TEMPLATE` stands in where none is found (or without a detector)."""
    points = np.empty((len(images), len(KEYPOINT_NAMES), 2), dtype=np.float32)
    detected = np.zeros(len(images), dtype=bool)
    for index, image in enumerate(images):
        rgb = as_rgb(image)
        height, width = rgb.shape[:2]
        if height != width:
            raise DataError(f"crop_keypoints expects square face crops, got {width}x{height} (image {index})")
        points[index] = PRECROPPED_TEMPLATE * width
        if detector is None:
            continue
        large = cv2.resize(rgb, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_CUBIC) if upscale > 1 else rgb
        found = [d for d in detector.detect(large) if d.keypoints is not None]
        if found:
            points[index] = max(found, key=lambda d: d.area).keypoints / upscale
            detected[index] = True
    return points, detected


def template_transforms(keypoints: np.ndarray, size: int, margin: float = TEMPLATE_MARGIN) -> np.ndarray:
    """``(N, 2, 3)`` similarity transforms (rotation, uniform scale, shift; least squares on
    the eyes, nose and mouth) that map each face's keypoints onto :func:`aligned_template`
    of a ``size`` crop: continuous pixel coordinates in, continuous pixel coordinates out."""
    points = _check_keypoints(keypoints)[:, :4]
    target = aligned_template(size, margin)[:4]
    transforms = np.empty((len(points), 2, 3))
    for index, source in enumerate(points):
        # Umeyama's closed form for a similarity (no reflection)
        mean_s, mean_t = source.mean(axis=0), target.mean(axis=0)
        s, t = source - mean_s, target - mean_t
        covariance = t.T @ s / len(s)
        u, singular, vt = np.linalg.svd(covariance)
        sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
        rotation = u @ sign @ vt
        scale = np.trace(np.diag(singular) @ sign) / (s ** 2).sum(axis=1).mean()
        transforms[index, :, :2] = scale * rotation
        transforms[index, :, 2] = mean_t - scale * rotation @ mean_s
    return transforms


def to_template(arrays: np.ndarray, keypoints: np.ndarray, size: int, margin: float = TEMPLATE_MARGIN) -> np.ndarray:
    """``arrays`` (``(N, H, W)`` maps or ``(N, H, W, C)`` images) warped so each face's
    keypoints (in its own pixels) land on :func:`aligned_template`: ``(N, size, size[, C])``
    float32, NaN where the source image does not reach. Maps of faces from different crops
    (FER crops and aligned detections alike) then line up pixel for pixel."""
    stack = np.asarray(arrays, dtype=np.float32)
    if stack.ndim not in (3, 4):
        raise DataError(f"expected (N, H, W) maps or (N, H, W, C) images, got shape {stack.shape}")
    transforms = template_transforms(keypoints, size, margin)
    if len(transforms) != len(stack):
        raise DataError(f"expected one (6, 2) keypoint array per map, got {len(transforms)} for {len(stack)}")
    warped = []
    for array, matrix in zip(stack, transforms):
        local = matrix.copy()
        local[:, 2] += local[:, :2] @ (0.5, 0.5) - 0.5  # cv2 indexes pixel centres
        warped.append(cv2.warpAffine(array, local, (size, size), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_CONSTANT, borderValue=(np.nan,) * 4))
    return np.stack(warped).reshape(len(stack), size, size, *stack.shape[3:])


@validate_params({"side": [SIDE]})
def harmonise_faces(images: Sequence[np.ndarray], side: int, grayscale: bool = True) -> list[np.ndarray]:
    """Face crops in one format for a domain comparison: each resampled to ``side`` pixels (area
    averaging when shrinking) and, with ``grayscale``, turned grey (three equal channels). Use the
    coarser domain's format (FER crops: 48 px grey) so neither domain keeps detail or colour the
    other lacks; keypoints in a crop's pixels scale by ``side / crop side``."""
    side = int(side)
    formatted = []
    for image in images:
        rgb = as_rgb(image)
        if rgb.shape[0] != rgb.shape[1]:
            raise DataError(f"harmonise_faces expects square face crops, got {rgb.shape[1]}x{rgb.shape[0]}")
        if rgb.shape[0] != side:
            shrinking = rgb.shape[0] > side
            rgb = cv2.resize(rgb, (side, side), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
        if grayscale:
            rgb = np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
        formatted.append(np.ascontiguousarray(rgb))
    return formatted


def _null_map(null: str | np.ndarray, maps: np.ndarray) -> np.ndarray:
    """The fixed ``(H, W)`` map of :func:`compare_domains`' null."""
    if isinstance(null, np.ndarray):
        if null.shape != maps.shape[1:] or not np.isfinite(null).all():
            raise DataError(f"null: expected a finite {maps.shape[1:]} map, got shape {null.shape}")
        return np.maximum(null.astype(np.float64), 0)
    return _NULL_MAPS[null](maps)


def _pooled_mean(maps: np.ndarray) -> np.ndarray:
    peaks = maps.reshape(len(maps), -1).max(axis=1)
    scaled = maps / np.where(peaks > 0, peaks, 1)[:, None, None]
    return scaled.mean(axis=0)


#: Fixed maps :func:`compare_domains` can take its null from: the pooled mean of every face's
#: map (each scaled to its maximum; default) or the centre prior.
_NULL_MAPS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "pooled": _pooled_mean, "centre": lambda maps: centre_prior(maps.shape[1]).astype(np.float64)}


def _support_shares(warped: np.ndarray, template: np.ndarray, support: np.ndarray) -> np.ndarray:
    """``(N, len(REGIONS))`` per-area share of each warped map's positive attribution inside
    ``support`` (1 = a uniform map; NaN for a region outside the support or an empty map)."""
    inside = template[support].astype(np.int64)
    values = np.maximum(warped[:, support], 0)
    sums = np.stack([values[:, inside == index].sum(axis=1) for index in range(len(REGIONS))], axis=1)
    areas = np.array([(inside == index).mean() for index in range(len(REGIONS))])
    totals = sums.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(totals > 0, sums / np.where(totals > 0, totals, 1), np.nan)
        return np.where(areas > 0, shares / np.where(areas > 0, areas, 1), np.nan)


def _finite_mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")


def region_widths(size: int, support: np.ndarray | None = None) -> dict[str, float]:
    """Width in pixels (the diameter of the largest inscribed disc) of each region of the
    aligned template of a ``size`` crop, inside ``support`` (a ``(size, size)`` bool mask)."""
    template = region_labels(aligned_template(size), size)
    inside = np.ones((size, size), dtype=bool) if support is None else support
    widths = {}
    for index, name in enumerate(REGIONS):
        mask = ((template == index) & inside).astype(np.uint8)
        padded = np.pad(mask, 1)  # the crop border ends a region too
        widths[name] = float(2 * cv2.distanceTransform(padded, cv2.DIST_L2, 5).max())
    return widths


@validate_params({"size": [SIDE, None], "null": [StrOptions(_NULL_MAPS), np.ndarray],
                  "cell_size": [Interval(Real, 0, None, closed="neither")]})
def compare_domains(maps: np.ndarray, keypoints: np.ndarray, domains: Sequence[str] | np.ndarray,
                    labels: Sequence[int] | np.ndarray | None = None, size: int | None = None,
                    null: str | np.ndarray = "pooled", cell_size: float = 1.0, emotions: Sequence[str] = EMOTIONS,
                    confidence: float = 0.95, n_resamples: int = 1000, n_permutations: int = 9999,
                    seed: int = 0) -> dict[str, object]:
    """Region shares of the domains' maps compared on one aligned face template, against a
    fixed-map null. ``maps`` ``(N, H, W)`` with ``keypoints`` ``(N, 6, 2)`` in the maps' pixels
    (make the faces' format alike first: :func:`harmonise_faces`); ``labels`` class indices
    into ``emotions`` (None: one group).

    Each face's positive map is warped onto :func:`aligned_template` at ``size`` (default H) by
    :func:`to_template`, and shares are taken per area inside the template pixels every face
    reaches (so every face has the same regions of the same size). Framing still leaves a trace
    (a map fixed in crop pixels lands on different facial features of a tight FER crop and of a
    looser detection), so the same pipeline is run on a fixed ``null`` map (see
    :data:`_NULL_MAPS`) warped with each face's keypoints: its domain difference is what
    framing alone gives. The test is on each face's share minus its null share (a two-sided
    permutation test of the domain difference, Holm over the regions, via :func:`region_report`):
    ``effect`` is the domain difference beyond the null's.

    ``cell_size`` is the side, in map pixels, of the finest detail the maps hold (see
    :func:`~fer_core.explain.base.map_cell_size`); regions narrower than it on the template are
    listed in ``coarser_than_map`` and ``notes``. JSON-ready: ``{"regions", "test", "null",
    "support", "cell_size_template_px", "region_widths_px", "coarser_than_map", "notes",
    "shares" (residual shares per domain, with CIs), "differences": [{emotion, domain_a,
    domain_b, region, n_a, n_b, mean_a, mean_b, difference, null_a, null_b, null_difference,
    effect, p_value, p_holm}]}``."""
    stack = np.asarray(maps, dtype=np.float64)
    if stack.ndim != 3 or stack.shape[1] != stack.shape[2] or not np.isfinite(stack).all() or not len(stack):
        raise DataError(f"maps: expected finite square (N, H, W) attribution maps, got shape {stack.shape}")
    points = _check_keypoints(keypoints)
    if len(points) != len(stack):
        raise DataError(f"expected one (6, 2) keypoint array per map, got {len(points)} for {len(stack)} maps")
    size = int(size or stack.shape[1])
    positive = np.maximum(stack, 0)
    fixed = _null_map(null, positive)
    warped = to_template(positive, points, size).astype(np.float64)
    warped_null = to_template(np.broadcast_to(fixed, stack.shape), points, size).astype(np.float64)
    support = np.isfinite(warped).all(axis=0) & np.isfinite(warped_null).all(axis=0)
    if support.mean() < 0.1:
        raise DataError(f"the faces share only {support.mean():.0%} of the {size} px template: check their keypoints")
    template = region_labels(aligned_template(size), size)
    shares = _support_shares(warped, template, support)
    null_shares = _support_shares(warped_null, template, support)
    one_group = "(one group)"  # without labels region_report's "all" rows are the only ones kept
    groups = np.zeros(len(stack), dtype=np.int64) if labels is None else np.asarray(labels)
    names = [one_group] if labels is None else list(emotions)
    report = region_report(shares - null_shares, groups, domains, emotions=names, confidence=confidence,
                           n_resamples=n_resamples, n_permutations=n_permutations, seed=seed)
    for key in ("shares", "differences"):
        report[key] = [row for row in report[key] if row["emotion"] != one_group]
    domain_names = np.asarray(domains).astype(str)
    for row in report["differences"]:
        in_group = np.ones(len(stack), dtype=bool) if row["emotion"] == "all" else groups == names.index(row["emotion"])
        column = REGIONS.index(row["region"])
        for side, key in (("a", "domain_a"), ("b", "domain_b")):
            chosen = in_group & (domain_names == row[key])
            row[f"mean_{side}"], row[f"null_{side}"] = (_finite_mean(values[chosen, column])
                                                        for values in (shares, null_shares))
        row["effect"] = row["difference"]
        row["difference"] = row["mean_a"] - row["mean_b"]
        row["null_difference"] = row["null_a"] - row["null_b"]
    scale = float(np.median(np.sqrt(np.abs(np.linalg.det(template_transforms(points, size)[:, :, :2])))))
    cell = cell_size * scale  # the transforms take map pixels to template pixels
    widths = region_widths(size, support)
    coarse = [name for name, width in widths.items() if 0 < width < cell]
    notes = ([f"the maps hold detail of about {cell:.1f} template px, wider than {', '.join(coarse)} "
              f"({', '.join(f'{widths[name]:.1f}' for name in coarse)} px across): neighbouring regions there "
              "cannot be told apart"] if coarse else [])
    return {**report, "null": null if isinstance(null, str) else "array", "support": float(support.mean()),
            "cell_size_template_px": cell, "region_widths_px": widths, "coarser_than_map": coarse, "notes": notes,
            "test": (f"per-face share minus the fixed-map null's share, on one aligned {size} px template: "
                     + report["test"])}


def _holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaN left out)."""
    adjusted = np.full_like(p_values, np.nan)
    finite = np.flatnonzero(np.isfinite(p_values))
    order = finite[np.argsort(p_values[finite])]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def _mean_difference(first: np.ndarray, second: np.ndarray, axis: int) -> np.ndarray:
    return first.mean(axis=axis) - second.mean(axis=axis)


def _mean_interval(sample: np.ndarray, confidence: float, n_resamples: int,
                   rng: np.random.Generator) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``sample`` (NaN for fewer than two values)."""
    if len(sample) < 2:
        return float("nan"), float("nan")
    if np.ptp(sample) == 0:  # every face the same: the interval is that value
        return float(sample[0]), float(sample[0])
    interval = stats.bootstrap((sample,), np.mean, vectorized=True, n_resamples=n_resamples,
                               confidence_level=confidence, method="percentile", random_state=rng).confidence_interval
    return float(interval.low), float(interval.high)


def _permutation_p_value(first: np.ndarray, second: np.ndarray, n_permutations: int,
                         rng: np.random.Generator) -> float:
    """Two-sided permutation p-value of the difference in means (NaN for under two per side)."""
    if len(first) < 2 or len(second) < 2:
        return float("nan")
    return float(stats.permutation_test((first, second), _mean_difference, permutation_type="independent",
                                        vectorized=True, n_resamples=n_permutations, alternative="two-sided",
                                        random_state=rng).pvalue)


@validate_params({"confidence": [Interval(Real, 0, 1, closed="neither")]})
def region_report(shares: np.ndarray, labels: Sequence[int] | np.ndarray, domains: Sequence[str] | np.ndarray,
                  emotions: Sequence[str] = EMOTIONS, confidence: float = 0.95, n_resamples: int = 1000,
                  n_permutations: int = 9999, seed: int = 0) -> dict[str, object]:
    """Mean region shares per emotion (and over ``"all"`` faces) and per domain, with
    percentile bootstrap CIs (``scipy.stats.bootstrap``, faces resampled), and for every pair
    of domains a two-sided permutation test (``scipy.stats.permutation_test``, independent
    samples, ``n_permutations``) of the difference in mean share, per region, with Holm's
    adjustment over the regions of one comparison. ``shares`` is :func:`region_shares`'s
    output (raw or ``per_area``); ``labels`` class indices into ``emotions``; ``domains`` a
    name per face. NaN values (a face without positive attribution, a region absent from a
    crop) are left out of their region; ``n`` counts the faces used. JSON-ready, flat rows
    (``pandas.DataFrame(report["shares"])``): ``{"regions", "test", "confidence", "shares":
    [{emotion, domain, region, n, mean, ci_low, ci_high}], "differences": [{emotion,
    domain_a, domain_b, region, n_a, n_b, mean_a, mean_b, difference, p_value, p_holm}]}``."""
    values = np.asarray(shares, dtype=np.float64)
    labels, domains = np.asarray(labels), np.asarray(domains).astype(str)
    if values.ndim != 2 or values.shape[1] != len(REGIONS):
        raise DataError(f"shares: expected an (N, {len(REGIONS)}) array from region_shares, got {values.shape}")
    if labels.shape != (len(values),) or domains.shape != (len(values),):
        raise DataError(f"expected one label and one domain per face ({len(values)}), "
                        f"got {labels.shape} and {domains.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(emotions)):
        raise DataError(f"labels: expected class indices in [0, {len(emotions)}), got {sorted(set(labels.tolist()))}")
    rng = np.random.default_rng(seed)
    groups = [("all", np.ones(len(values), dtype=bool))]
    groups += [(emotion, labels == index) for index, emotion in enumerate(emotions) if np.any(labels == index)]
    share_rows: list[dict[str, object]] = []
    difference_rows: list[dict[str, object]] = []
    for emotion, in_group in groups:
        names = sorted(set(domains[in_group]))
        samples = {domain: [column[np.isfinite(column)] for column in values[in_group & (domains == domain)].T]
                   for domain in names}
        for domain in names:
            for region, sample in zip(REGIONS, samples[domain]):
                low, high = _mean_interval(sample, confidence, n_resamples, rng)
                share_rows.append({"emotion": emotion, "domain": domain, "region": region, "n": len(sample),
                                   "mean": float(sample.mean()) if len(sample) else float("nan"),
                                   "ci_low": low, "ci_high": high})
        for first, second in combinations(names, 2):
            pairs = list(zip(samples[first], samples[second]))
            p_values = np.array([_permutation_p_value(a, b, n_permutations, rng) for a, b in pairs])
            adjusted = _holm(p_values)
            for index, (region, (a, b)) in enumerate(zip(REGIONS, pairs)):
                mean_a = float(a.mean()) if len(a) else float("nan")
                mean_b = float(b.mean()) if len(b) else float("nan")
                difference_rows.append({"emotion": emotion, "domain_a": first, "domain_b": second, "region": region,
                                        "n_a": len(a), "n_b": len(b), "mean_a": mean_a, "mean_b": mean_b,
                                        "difference": mean_a - mean_b, "p_value": float(p_values[index]),
                                        "p_holm": float(adjusted[index])})
    return {"regions": list(REGIONS), "confidence": confidence,
            "test": (f"two-sided permutation test of the difference in mean share between domains "
                     f"(scipy.stats.permutation_test, independent samples, {n_permutations} permutations); "
                     f"p_holm: Holm-adjusted over the {len(REGIONS)} regions of one comparison"),
            "shares": share_rows, "differences": difference_rows}
