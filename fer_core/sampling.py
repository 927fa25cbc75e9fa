"""Which faces a job runs on: a seeded sample stratified by class (``--limit N``: N faces shared
among the classes in proportion to their sizes; ``--per-class N``: N faces of each class), and
the dataset view that carries it, so that every run id, run.json and table says how its faces
were drawn (``fer2013:test[stratified 500, seed 0]``). :func:`fer_core.precompute.select` applies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral
from typing import Any, Sequence

import numpy as np

from fer_core.data import FaceDataset, SubsetDataset
from fer_core.errors import InvalidArgument
from fer_core.validation import Interval, validate_params

#: A number of faces: an integer >= 1, or None for no limit.
_FACES = [Interval(Integral, 1, None), None]


@validate_params({"limit": _FACES, "per_class": _FACES, "seed": [Interval(Integral, None, None)]})
@dataclass(frozen=True)
class Sampling:
    """Which faces of a dataset a run uses: a seeded sample stratified by class, either
    ``limit`` faces shared among the classes in proportion to their sizes, or ``per_class``
    faces of each class (all of a smaller class). Unlabelled faces (-1) form one more class."""

    limit: int | None = None
    per_class: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.limit is not None and self.per_class is not None:
            raise InvalidArgument("limit and per_class both choose the faces; give one of them")
        for name in ("limit", "per_class", "seed"):  # plain ints for run.json (a numpy integer is not JSON)
            value = getattr(self, name)
            object.__setattr__(self, name, None if value is None else int(value))

    @property
    def active(self) -> bool:
        return self.limit is not None or self.per_class is not None

    def describe(self) -> str:
        """``stratified 500, seed 0`` or ``50 per class, seed 0``."""
        size = f"stratified {self.limit}" if self.limit is not None else f"{self.per_class} per class"
        return f"{size}, seed {self.seed}"

    def id_parts(self) -> tuple[str, str]:
        """Parts of a run id (:func:`fer_core.runs.run_id`): ``limit500``, ``seed0`` (or ``per_class50``, ...)."""
        return f"limit{self.limit}" if self.limit is not None else f"per_class{self.per_class}", f"seed{self.seed}"

    def record(self) -> dict[str, Any]:
        return {"method": "stratified by class", "limit": self.limit, "per_class": self.per_class, "seed": self.seed,
                "description": self.describe()}

    def counts(self, sizes: np.ndarray) -> np.ndarray:
        """Faces to draw from classes of ``sizes``: ``per_class`` each (at most a class's size), or
        ``limit`` by largest remainders of the exact proportional shares (each within one face
        of its share), then one face for every non-empty class left with none when
        ``limit`` allows it (taken from the class furthest above its share)."""
        sizes = np.asarray(sizes, dtype=np.int64)
        if self.per_class is not None:
            return np.minimum(sizes, self.per_class)
        limit = min(int(self.limit), int(sizes.sum()))
        shares = limit * sizes / sizes.sum()
        counts = np.floor(shares).astype(np.int64)
        order = np.argsort(-(shares - counts), kind="stable")  # largest remainder first, ties by class order
        counts[order[:limit - counts.sum()]] += 1
        if limit >= (sizes > 0).sum():
            for empty in np.flatnonzero((counts == 0) & (sizes > 0)):
                donor = np.argmax(np.where(counts > 1, counts - shares, -np.inf))
                counts[donor] -= 1
                counts[empty] = 1
        return counts

    def indices(self, labels: np.ndarray) -> np.ndarray:
        """Sorted positions of the sampled faces among faces with these ``labels``."""
        classes, inverse = np.unique(np.asarray(labels), return_inverse=True)
        members = [np.flatnonzero(inverse == k) for k in range(len(classes))]
        rng = np.random.default_rng(self.seed)
        drawn = [rng.choice(group, count, replace=False) for group, count in
                 zip(members, self.counts(np.array([len(group) for group in members])))]
        return np.sort(np.concatenate(drawn)) if drawn else np.zeros(0, np.int64)


class SampledDataset(SubsetDataset):
    """A :class:`Sampling` of ``parent``'s faces (or a shard of one); its label says so:
    ``fer2013:test[stratified 500, seed 0]``."""

    def __init__(self, parent: FaceDataset, indices: Sequence[int] | np.ndarray, sampling: Sampling) -> None:
        super().__init__(parent, indices)
        self.sampling = sampling

    @property
    def base_label(self) -> str:
        """The label of the whole dataset the faces were drawn from."""
        return self.parent.label

    @property
    def label(self) -> str:
        return f"{self.parent.label}[{self.sampling.describe()}]"


def sampling_of(dataset: FaceDataset) -> Sampling | None:
    """The sampling ``dataset`` was drawn by (:func:`select`), None for whole datasets."""
    return dataset.sampling if isinstance(dataset, SampledDataset) else None


def base_label(dataset: FaceDataset) -> str:
    """The label of the dataset ``dataset`` was sampled from (its own label when not sampled)."""
    return dataset.base_label if isinstance(dataset, SampledDataset) else dataset.label


def sampled_name(name: str, dataset: FaceDataset) -> str:
    """``name`` (a dataset spec) with ``dataset``'s sampling: ``fer2013:test[stratified 40, seed 0]``."""
    sampling = sampling_of(dataset)
    return name if sampling is None else f"{name}[{sampling.describe()}]"
