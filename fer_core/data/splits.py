"""Deterministic stratified splits of label arrays (scikit-learn underneath), and splits that
keep groups (the faces of one generated grid) on one side."""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from fer_core.errors import DataError
from fer_core.labels import EMOTIONS

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


def per_class_split(labels: np.ndarray | Sequence[int], held_out_fraction: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) sorted positions: in each class, ``round(held_out_fraction * n)`` of its
    ``n`` faces held out (at least one when it has two or more, never all), drawn by a generator
    seeded with ``(seed, class)``, so a class's draw does not depend on the other classes. Works
    for any size (a class of one face stays kept)."""
    array = _labels_1d(labels)
    if not 0.0 < held_out_fraction < 1.0:
        raise DataError(f"held_out_fraction must lie in (0, 1), got {held_out_fraction}")
    held_out = []
    for value in np.unique(array):
        members = np.flatnonzero(array == value)
        count = 0 if members.size < 2 else min(members.size - 1, max(1, round(held_out_fraction * members.size)))
        rng = np.random.default_rng([seed, int(value) + 1])
        held_out.append(rng.permutation(members)[:count])
    held = np.sort(np.concatenate(held_out))
    return np.setdiff1d(np.arange(array.size), held), held


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


#: Faces cut from a generated grid are named ``<grid file stem>_r<row>_c<column>.<ext>`` by
#: ``fer-core synth extract`` (:func:`fer_core.synthetic.extract.extract_faces`).
GRID_FACE_NAME = re.compile(r"^(?P<grid>.+)_r\d+_c\d+$")


class SplitWarning(UserWarning):
    """A split leaves a class without faces on one side (the message says which and why)."""


def grid_groups(keys: Sequence[str]) -> np.ndarray:
    """The group of every sample key: ``grid:<stem>`` (the file stem before ``_r<row>_c<column>``)
    for faces cut from a grid, else the key itself (each face its own group)."""
    groups = []
    for key in keys:
        name = key.rpartition("/")[2]
        found = GRID_FACE_NAME.match(name.rpartition(".")[0] or name)
        groups.append(f"grid:{found['grid']}" if found else key)
    return np.asarray(groups, dtype=object)


def _every_group_single(groups: np.ndarray) -> bool:
    return len(np.unique(groups)) == len(groups)


def _group_array(labels: np.ndarray, groups: Sequence[str] | np.ndarray) -> np.ndarray:
    array = np.asarray(groups, dtype=object)
    if array.shape != labels.shape:
        raise DataError(f"groups must give one group per label: {array.shape} vs {labels.shape}")
    mixed = [g for g in np.unique(array) if len(np.unique(labels[array == g])) > 1]
    if mixed:
        raise DataError(f"{len(mixed)} group(s) hold faces of several classes (e.g. {mixed[0]!r}); a grid is "
                        "generated for one emotion")
    return array


def stratified_group_kfold(labels: np.ndarray | Sequence[int], groups: Sequence[str] | np.ndarray, k: int,
                           seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train positions, held-out positions) folds that keep every group inside one fold
    and the class proportions as far as whole groups allow (scikit-learn's
    ``StratifiedGroupKFold``). With every group a single face it is :func:`stratified_kfold`."""
    array = _labels_1d(labels)
    group_array = _group_array(array, groups)
    if _every_group_single(group_array):
        return stratified_kfold(array, k, seed)
    if k < 2:
        raise DataError(f"k must be at least 2, got {k}")
    grids = {int(c): len(np.unique(group_array[array == c])) for c in np.unique(array)}
    rarest = min(grids, key=grids.__getitem__)
    if grids[rarest] < k:
        name = EMOTIONS[rarest] if 0 <= rarest < len(EMOTIONS) else str(rarest)
        raise DataError(f"cannot make {k} folds that keep each grid whole: {name} has faces from only "
                        f"{grids[rarest]} grid(s); use k <= {grids[rarest]} or generate more grids of it")
    folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(train, held_out) for train, held_out in folds.split(np.zeros(array.size), array, group_array)]


def stratified_group_split(labels: np.ndarray | Sequence[int], groups: Sequence[str] | np.ndarray,
                           held_out_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) sorted positions with whole groups on each side: of each class's ``n``
    groups, ``round(held_out_fraction * n)`` held out (at least one, never all; a class of one
    group stays kept), drawn with ``seed``. With every group a single face it is
    :func:`stratified_split`."""
    array = _labels_1d(labels)
    group_array = _group_array(array, groups)
    if not 0.0 < held_out_fraction < 1.0:
        raise DataError(f"held_out_fraction must lie in (0, 1), got {held_out_fraction}")
    if _every_group_single(group_array):
        parts = stratified_split(array, {"kept": 1 - held_out_fraction, "held_out": held_out_fraction}, seed)
        return parts["kept"], parts["held_out"]
    rng = np.random.default_rng(seed)
    held_groups: list[str] = []
    for value in np.unique(array):
        class_groups = rng.permutation(np.unique(group_array[array == value]))
        count = min(len(class_groups) - 1, max(1, round(held_out_fraction * len(class_groups))))
        held_groups.extend(class_groups[:count])
    held = np.isin(group_array, np.asarray(held_groups, dtype=object))
    return np.flatnonzero(~held), np.flatnonzero(held)


def _phase(seed: int, group_class: str) -> float:
    """A seeded number in [0, 1) per class: where its sequence of test grids starts."""
    return int(hashlib.sha256(f"{seed}:{group_class}".encode()).hexdigest()[:12], 16) / 16 ** 12


def sequential_group_splits(group_classes: Sequence[str], test_fraction: float, seed: int) -> list[str]:
    """``"train"`` or ``"test"`` for each group (a generated grid), given each group's class in
    arrival order (the ledger's): stratified by class, and prefix-stable.

    Within each class the ``n``-th group keeps the count of test groups among the first ``n``
    at ``min(n - 1, max(1, floor(n * test_fraction + phase)))`` for ``n >= 2`` (0 for one group),
    ``phase`` a seeded number per class: every class with at least two groups has test and
    training groups, the test share tends to ``test_fraction``, and adding groups never moves
    an earlier one to the other side (no face a model trained on turns up in a later test set).
    ``test_fraction`` 0 puts everything in train, 1 everything in test.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise DataError(f"test_fraction must lie in [0, 1], got {test_fraction}")
    if test_fraction in (0.0, 1.0):
        return ["test" if test_fraction == 1.0 else "train"] * len(group_classes)

    def test_count(n: int, phase: float) -> int:
        return 0 if n < 2 else min(n - 1, max(1, int(np.floor(n * test_fraction + phase))))

    seen: dict[str, int] = {}
    splits = []
    for group_class in group_classes:
        n = seen.get(group_class, 0)
        phase = _phase(seed, str(group_class))
        splits.append("test" if test_count(n + 1, phase) > test_count(n, phase) else "train")
        seen[group_class] = n + 1
    return splits


def warn_empty_sides(counts: Mapping[str, Mapping[str, int]], what: str) -> list[str]:
    """Warn (:class:`SplitWarning`, once) about the classes of ``counts`` (class -> split -> faces)
    with no faces in ``train`` or ``test``; returns the sentences."""
    problems = [f"{name}: {sides.get('train', 0)} training and {sides.get('test', 0)} test faces"
                for name, sides in counts.items() if not sides.get("train", 0) or not sides.get("test", 0)]
    if problems:
        warnings.warn(f"{what}: some classes lack faces on one side of the split (all faces of a grid stay on one "
                      f"side, so a class needs at least two grids with accepted faces): {'; '.join(problems)}",
                      SplitWarning, stacklevel=3)
    return problems
