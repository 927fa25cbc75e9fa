"""How two labellings of the same faces agree: FER+ relabelled FER2013's images with ten
annotators each, so a FER2013 test face is also a FER+ test face with another label. The faces
are matched by their pixels (FER2013's folders hold JPEG copies, so equal bytes cannot be
asked for), and the agreement of the labels is the ceiling of a model that reproduced one
labelling perfectly, scored against the other."""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real

import cv2
import numpy as np
import pandas as pd

from fer_core.data.datasets import FaceDataset
from fer_core.errors import DataError
from fer_core.labels import EMOTIONS
from fer_core.validation import Interval, validate_params

#: The grey-level side faces are compared at (FER2013's and FER+'s own size).
MATCH_SIDE = 48
#: A face of one set counts as the same image as its nearest face of the other when their
#: root-mean-square grey-level difference is below this: FER2013's JPEG copies of FER+'s PNGs
#: differ by 1.75 (median), different faces by tens of levels.
MAX_RMS = 3.0


def _pixels(dataset: FaceDataset) -> np.ndarray:
    """Every face as a ``(N, MATCH_SIDE**2)`` float32 row of grey levels."""
    rows = np.empty((len(dataset), MATCH_SIDE * MATCH_SIDE), np.float32)
    for index, sample in enumerate(dataset):
        grey = cv2.cvtColor(dataset.read(sample), cv2.COLOR_RGB2GRAY)
        if grey.shape != (MATCH_SIDE, MATCH_SIDE):
            grey = cv2.resize(grey, (MATCH_SIDE, MATCH_SIDE), interpolation=cv2.INTER_AREA)
        rows[index] = grey.ravel()
    return rows


@validate_params({"max_rms": [Interval(Real, 0, None, closed="neither")]})
def match_faces(first: FaceDataset, second: FaceDataset, max_rms: float = MAX_RMS,
                chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """For each face of ``first``, the index of the same image in ``second`` (-1: none within
    ``max_rms`` grey levels) and the RMS difference to its nearest face there."""
    a, b = _pixels(first), _pixels(second)
    if not len(a) or not len(b):
        raise DataError(f"nothing to match: {first.label} has {len(a)} faces, {second.label} {len(b)}")
    b_norms = (b.astype(np.float64) ** 2).sum(1)
    nearest, rms = np.empty(len(a), np.int64), np.empty(len(a))
    for start in range(0, len(a), chunk):
        block = a[start:start + chunk]
        squared = (block.astype(np.float64) ** 2).sum(1)[:, None] + b_norms[None] - 2.0 * (block @ b.T)
        nearest[start:start + chunk] = squared.argmin(1)
        rms[start:start + chunk] = np.sqrt(np.maximum(squared.min(1), 0.0) / a.shape[1])
    return np.where(rms < max_rms, nearest, -1), rms


@dataclass(frozen=True)
class LabelAgreement:
    """``matched`` faces of ``first`` found in ``second`` (of ``total``); ``agreement``: the share
    of matched faces with the same label in both (the accuracy, against ``second``'s labels, of
    a model that reproduced ``first``'s exactly); ``per_class``: per class of ``second``, its
    matched faces, the share ``first`` agrees on, and the class ``first`` gives them most often
    besides their own; ``max_rms``: the matching threshold used."""

    first: str
    second: str
    total: int
    matched: int
    agreement: float
    per_class: pd.DataFrame
    max_rms: float = MAX_RMS

    def describe(self) -> str:
        lines = [f"{self.matched} of {self.total} faces of {self.first} found in {self.second} (RMS < {self.max_rms:g} "
                 f"grey levels); their labels agree on {self.agreement:.4f}: the accuracy against {self.second}'s "
                 f"labels of a model that reproduced {self.first}'s exactly"]
        for row in self.per_class.itertuples():
            lines.append(f"  {self.second} {row.emotion:<10} {row.faces:5d} faces: {self.first} agrees on "
                         f"{row.agreement:.3f}; most often otherwise {row.other} ({row.other_share:.3f})")
        return "\n".join(lines)


def label_agreement(first: FaceDataset, second: FaceDataset, max_rms: float = MAX_RMS) -> LabelAgreement:
    """Match ``first``'s faces in ``second`` (:func:`match_faces`) and compare their labels."""
    index, _ = match_faces(first, second, max_rms)
    found = index >= 0
    if not found.any():
        raise DataError(f"no face of {first.label} is an image of {second.label}: they are not two labellings "
                        f"of the same faces")
    mine, theirs = first.labels[found], second.labels[index[found]]
    rows = []
    for label in np.unique(theirs):
        given = mine[theirs == label]
        others = np.bincount(given[given != label], minlength=len(EMOTIONS))
        rows.append({"emotion": EMOTIONS[label], "faces": len(given), "agreement": float(np.mean(given == label)),
                     "other": EMOTIONS[int(others.argmax())], "other_share": float(others.max() / len(given))})
    return LabelAgreement(first.label, second.label, len(first), int(found.sum()), float(np.mean(mine == theirs)),
                          pd.DataFrame(rows), max_rms)
