"""The framing of a pre-cropped dataset, as a face margin: how much border its crops keep around
the detector's face box. Faces cut from photos (uploads, synthetic grids) should be framed as the
model's training crops were, or the face fills less of the input than it did in training."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from fer_core.data import FaceDataset
from fer_core.errors import DataError
from fer_core.faces.detectors import FaceDetector


@dataclass(frozen=True)
class Framing:
    """Per measured crop, the detector's box side over the crop side, and the margin
    (:func:`~fer_core.faces.align_face`'s) that gives the same framing: ``(1 / ratio - 1) / 2``."""

    ratios: np.ndarray
    asked: int

    @property
    def margins(self) -> np.ndarray:
        return (1.0 / self.ratios - 1.0) / 2.0

    def summary(self) -> dict[str, float]:
        """Median and quartiles of the box ratio and of the matching margin."""
        (ratio, r25, r75), (margin, m25, m75) = (np.percentile(values, [50, 25, 75]).tolist()
                                                 for values in (self.ratios, self.margins))
        return {"crops": self.asked, "faces_found": int(len(self.ratios)), "box_ratio": ratio,
                "box_ratio_iqr": (r25, r75), "margin": margin, "margin_iqr": (m25, m75)}


def measure_framing(dataset: FaceDataset, detector: FaceDetector, count: int = 400, seed: int = 0,
                    side: int = 192) -> Framing:
    """Detect the face in ``count`` seeded crops of ``dataset`` (each resized to ``side`` px, as
    48 px FER crops are too small for BlazeFace) and measure the box's longer side against the crop."""
    if not dataset.pre_cropped:
        raise DataError(f"{dataset.name}: framing is measured on pre-cropped faces")
    if count < 1 or side < 32:
        raise DataError(f"framing: expected count >= 1 and side >= 32, got {count} and {side}")
    chosen = np.random.default_rng(seed).choice(len(dataset), min(count, len(dataset)), replace=False)
    ratios = []
    for index in chosen:
        crop = dataset.read(dataset[int(index)])
        resized = np.asarray(Image.fromarray(crop).resize((side, side), Image.BICUBIC))
        found = detector.detect(resized)
        if found:
            box = max(found, key=lambda d: d.width * d.height)
            ratios.append(max(box.width, box.height) / side)
    if not ratios:
        raise DataError(f"{dataset.name}: no face found in {len(chosen)} crops")
    return Framing(np.asarray(ratios), len(chosen))
