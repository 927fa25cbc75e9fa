"""Deterministic stratified splits of label arrays (scikit-learn underneath)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from fer_core.errors import DataError

#: Split names given to positional fractions, by how many fractions there are.
DEFAULT_SPLIT_NAMES = {2: ("train", "test"), 3: ("train", "valid", "test")}


def _named_fractions(fractions: Mapping[str, float] | Sequence[float]) -> dict[str, float]:
    if isinstance(fractions, Mapping):
        named = {str(k): float(v) for k, v in fractions.items()}
    else:
        values = [float(v) for v in fractions]
        if len(values) not in DEFAULT_SPLIT_NAMES:
            raise DataError(f"give 2 or 3 fractions (train, [valid,] test) or a dict of named fractions, got {values}")
        named = dict(zip(DEFAULT_SPLIT_NAMES[len(values)], values, strict=True))
    if len(named) < 2 or any(not 0.0 < v < 1.0 for v in named.values()) or abs(sum(named.values()) - 1.0) > 1e-6:
        raise DataError(f"split fractions must be at least two values in (0, 1) summing to 1, got {named}")
    return named


def _labels_1d(labels: np.ndarray | Sequence[int]) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1 or array.size == 0:
        raise DataError(f"labels must be a non-empty 1-D array, got shape {array.shape}")
    return array


def stratified_split(labels: np.ndarray | Sequence[int], fractions: Mapping[str, float] | Sequence[float],
                     seed: int) -> dict[str, np.ndarray]:
    """Split sample positions into named parts that keep the class proportions of ``labels``.

    ``fractions``: ``{"train": 0.8, "test": 0.2}``, or a tuple ``(train, test)`` /
    ``(train, valid, test)``. Returns sorted position arrays per name; they partition
    ``range(len(labels))``. The same ``seed`` gives the same split.
    """
    array = _labels_1d(labels)
    named = _named_fractions(fractions)
    remaining = np.arange(array.size)
    remaining_fraction = 1.0
    parts: dict[str, np.ndarray] = {}
    names = list(named)
    for name in names[:-1]:
        share = named[name] / remaining_fraction
        try:
            taken, remaining = train_test_split(remaining, train_size=share, random_state=seed,
                                                stratify=array[remaining])
        except ValueError as exc:
            raise DataError(f"cannot split {array.size} labels into {named}: {exc}. Every class needs "
                            "enough samples for each part; merge or drop rare classes") from None
        parts[name] = np.sort(taken)
        remaining_fraction -= named[name]
    parts[names[-1]] = np.sort(remaining)
    return parts


def stratified_kfold(labels: np.ndarray | Sequence[int], k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train positions, held-out positions) folds that keep class proportions.

    Every position is held out exactly once. The same ``seed`` gives the same folds.
    """
    array = _labels_1d(labels)
    if k < 2:
        raise DataError(f"k must be at least 2, got {k}")
    smallest = int(np.unique(array, return_counts=True)[1].min())
    if smallest < k:
        raise DataError(f"cannot make {k} stratified folds: the rarest class has only {smallest} samples")
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(train, held_out) for train, held_out in folds.split(np.zeros(array.size), array)]
