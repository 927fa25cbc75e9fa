"""Heatmaps over face crops: percentile normalisation, cv2 colormaps (and a diverging one for
signed maps), and per-class mean maps over aligned faces (crops warped onto one face template
by their keypoints when they are not aligned already) with the mean face as their backdrop."""

from __future__ import annotations

from numbers import Real
from typing import Sequence

import cv2
import numpy as np

from fer_core.errors import InvalidArgument
from fer_core.explain.analysis.regions import to_template
from fer_core.validation import Interval, StrOptions, validate_params


def _diverging_lut() -> np.ndarray:
    """Blue (negative) - white (zero) - red (positive), as a 256-entry BGR lookup table."""
    ramp = np.linspace(-1.0, 1.0, 256)
    red = np.where(ramp < 0, 1 + ramp, 1.0)
    green = 1 - np.abs(ramp)
    blue = np.where(ramp > 0, 1 - ramp, 1.0)
    return (np.stack([blue, green, red], axis=1) * 255 + 0.5).astype(np.uint8)[:, None, :]


#: cv2's colormaps by lower-case name (``jet``, ``viridis``, ``turbo``, ...) and ``bwr``, a
#: diverging blue-white-red map for signed attributions.
_COLORMAPS: dict[str, int | np.ndarray] = {
    name[len("COLORMAP_"):].lower(): getattr(cv2, name) for name in dir(cv2) if name.startswith("COLORMAP_")
}
_COLORMAPS["bwr"] = _diverging_lut()


def colormap_names() -> list[str]:
    """Names :func:`overlay` accepts as ``colormap``."""
    return sorted(_COLORMAPS)


#: A percentile to scale maps by: in (0, 100].
PERCENTILE = Interval(Real, 0, 100, closed="right")


def _check_map(attribution: np.ndarray) -> np.ndarray:
    """``attribution`` as float32 ``(H, W)``; NaN marks pixels without a value (outside the
    faces of an aligned mean map), infinities are errors."""
    array = np.asarray(attribution, dtype=np.float32)
    if array.ndim != 2 or np.isinf(array).any() or np.isnan(array).all():
        raise InvalidArgument(f"attribution map: expected an (H, W) array of finite values (NaN where none), "
                              f"got shape {array.shape}")
    return array


@validate_params({"percentile": [PERCENTILE]})
def normalize_map(attribution: np.ndarray, signed: bool = False, percentile: float = 99.0) -> np.ndarray:
    """``attribution`` scaled by its ``percentile``-th absolute value and clipped: to [0, 1]
    (negative values count as zero) or, when ``signed``, to [-1, 1] with zero kept at zero.
    NaN pixels stay NaN and are left out of the percentile."""
    array = _check_map(attribution)
    values = array if signed else np.maximum(array, 0)
    scale = float(np.nanpercentile(np.abs(values), percentile))
    if scale <= 0:
        return np.where(np.isnan(array), np.nan, 0).astype(np.float32)
    return np.clip(values / scale, -1.0 if signed else 0.0, 1.0)


@validate_params({"colormap": [StrOptions(colormap_names), None], "alpha": [Interval(Real, 0, 1)],
                  "percentile": [PERCENTILE]})
def overlay(image: np.ndarray, attribution: np.ndarray, colormap: str | None = None, alpha: float = 0.5,
            signed: bool = False, percentile: float = 99.0) -> np.ndarray:
    """``image`` (RGB uint8 face) blended with ``attribution`` (resized to the image) drawn
    with ``colormap`` at opacity ``alpha``. Maps are normalised by :func:`normalize_map`;
    ``signed`` maps use a diverging colormap (default ``bwr``: red supports the class, blue
    opposes it), others default to ``jet``. NaN pixels of the map leave the image as it is."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InvalidArgument(f"image: expected an (H, W, 3) RGB uint8 array, got "
                              f"{getattr(image, 'shape', type(image).__name__)} {getattr(image, 'dtype', '')}")
    lut = _COLORMAPS[colormap or ("bwr" if signed else "jet")]
    scaled = normalize_map(attribution, signed, percentile)
    height, width = image.shape[:2]
    if scaled.shape != (height, width):
        scaled = cv2.resize(scaled, (width, height), interpolation=cv2.INTER_LINEAR)
    missing = np.isnan(scaled)
    levels = np.nan_to_num((scaled + 1) / 2 if signed else scaled)
    heat = cv2.cvtColor(cv2.applyColorMap(np.round(levels * 255).astype(np.uint8), lut), cv2.COLOR_BGR2RGB)
    weight = np.where(missing, 0.0, alpha)[:, :, None]
    blended = (1 - weight) * image.astype(np.float32) + weight * heat.astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


@validate_params({"percentile": [PERCENTILE, None]})
def class_mean_maps(maps: np.ndarray, labels: Sequence[int] | np.ndarray, emotions: Sequence[str],
                    percentile: float | None = 99.0, signed: bool = False, keypoints: np.ndarray | None = None,
                    size: int | None = None) -> dict[str, np.ndarray]:
    """The mean ``(H, W)`` map of each emotion: ``maps`` is ``(N, H, W)``, ``labels`` their
    class indices into ``emotions``. Each map is first normalised by :func:`normalize_map`
    (``percentile``) so every face weighs the same; ``None`` averages the raw maps. Maps of
    aligned crops line up as they are; with ``keypoints`` (``(N, 6, 2)`` in the maps' pixels)
    each map is first warped onto the aligned face template at ``size`` (default ``H``) by
    :func:`~fer_core.explain.analysis.regions.to_template`, so maps of unaligned crops (FER2013 / FER+)
    and of aligned detections line up too; pixels no face reaches are NaN. Classes without
    faces are left out."""
    stack = np.asarray(maps, dtype=np.float32)
    labels = np.asarray(labels)
    if stack.ndim != 3 or labels.shape != (stack.shape[0],):
        raise InvalidArgument(f"expected (N, H, W) maps and N labels, got {stack.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(emotions)):
        raise InvalidArgument(f"labels: expected class indices in [0, {len(emotions)}), "
                              f"got {sorted(set(labels.tolist()))}")
    if percentile is not None:
        stack = np.stack([normalize_map(m, signed, percentile) for m in stack]) if len(stack) else stack
    if keypoints is not None:
        stack = to_template(stack, keypoints, size or stack.shape[1])
    return {emotion: _nan_mean(stack[labels == index])
            for index, emotion in enumerate(emotions) if np.any(labels == index)}


def _nan_mean(stack: np.ndarray) -> np.ndarray:
    """Mean over the first axis ignoring NaN (NaN where every value is)."""
    finite = np.isfinite(stack)
    counts = finite.sum(axis=0)
    totals = np.where(finite, stack, 0).sum(axis=0, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, totals / np.maximum(counts, 1), np.nan).astype(np.float32)


def mean_face(images: Sequence[np.ndarray] | np.ndarray, keypoints: np.ndarray, size: int) -> np.ndarray:
    """The ``(size, size, 3)`` RGB uint8 mean of face crops warped onto the aligned face
    template (``keypoints``: ``(N, 6, 2)`` in each crop's pixels; crops of one size): a
    backdrop for :func:`class_mean_maps` drawn with :func:`overlay`. Pixels no face reaches
    are black."""
    stack = np.stack([np.asarray(image) for image in images]) if len(images) else np.empty((0, size, size, 3))
    if stack.ndim != 4 or stack.shape[3] != 3 or stack.dtype != np.uint8 or not len(stack):
        raise InvalidArgument(f"images: expected one or more (H, W, 3) RGB uint8 crops of one size, "
                              f"got {stack.shape}")
    mean = _nan_mean(to_template(stack, keypoints, size))
    return np.clip(np.round(np.nan_to_num(mean, nan=0.0)), 0, 255).astype(np.uint8)
