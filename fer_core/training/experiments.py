"""Real + synthetic training sets (RQ2): sets that mix the two domains at a synthetic share
(:func:`mixed_training_set`) or add N synthetic faces to fixed real ones
(:func:`added_training_set`), the sweep's two designs (:data:`DESIGNS`), and face crops cut
once (:class:`FaceCrops`). The sweep and cross-validation that train on them are jobs:
:mod:`fer_core.jobs.experiments`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Real

import numpy as np
from sklearn.model_selection import train_test_split

from fer_core.data import FaceDataset, Sample
from fer_core.errors import DataError, InvalidArgument
from fer_core.faces import FacePipeline
from fer_core.inference import find_face
from fer_core.validation import Interval, validate_params

#: The synthetic shares of the plan's sweep.
DEFAULT_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
SUMMARY = "summary"
#: A dataset spec (``fer2013:train``, a folder) or an opened dataset.
DatasetSpec = str | FaceDataset
#: Face crops kept in memory by :class:`FaceCrops` (a 224 px crop is 147 KiB).
CROP_CACHE_BYTES = 512 << 20


class MixedDataset(FaceDataset):
    """Several datasets in one index, in order; every sample keeps its part and domain.

    ``domains`` gives each sample's domain; keys are ``<tag>:<key of the part>`` with a
    tag per part, so keys stay unique. ``domain`` is the domain most samples have.
    ``pre_cropped`` holds only when every part is pre-cropped (so crop synthetic images once,
    e.g. into ``synthetic:train``, or wrap photos in :class:`FaceCrops`, rather than running face
    detection on the real crops too).
    """

    def __init__(self, parts: Sequence[FaceDataset], name: str) -> None:
        parts = [p for p in parts if len(p)]
        if not parts:
            raise DataError(f"{name}: nothing to mix (every part is empty)")
        self.parts = tuple(parts)
        self.tags = tuple(f"{i}-{p.domain}-{p.name}".replace(":", "_") for i, p in enumerate(parts))
        self._part_of = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)])
        self._offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])[:-1]])
        self._labels = np.concatenate([p.labels for p in parts])
        self._labels.flags.writeable = False
        self.domains = np.array([p.domain for p in parts])[self._part_of]
        values, counts = np.unique(self.domains, return_counts=True)
        super().__init__(name, sorted({e for p in parts for e in p.emotions}),
                         pre_cropped=all(p.pre_cropped for p in parts), domain=str(values[counts.argmax()]))

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def _sample(self, index: int) -> Sample:
        part = int(self._part_of[index])
        sample = self.parts[part][index - int(self._offsets[part])]
        return dataclasses.replace(sample, key=f"{self.tags[part]}:{sample.key}")

    def read(self, sample: Sample) -> np.ndarray:
        tag, _, key = sample.key.partition(":")
        if tag not in self.tags:
            raise DataError(f"sample {sample.key!r} is not from {self.name} (parts {list(self.tags)})")
        return self.parts[self.tags.index(tag)].read(dataclasses.replace(sample, key=key))

    def domain_counts(self) -> dict[str, int]:
        """Number of samples of each domain."""
        values, counts = np.unique(self.domains, return_counts=True)
        return {str(v): int(c) for v, c in zip(values, counts)}


class FaceCrops(FaceDataset):
    """``dataset`` (photos) as face crops: each image read is the largest face ``pipeline`` finds in
    it (the whole image when none; :func:`fer_core.inference.find_face`, as training and evaluation
    crop), so photos mix with pre-cropped faces. Crops are kept in memory (up to ``max_bytes``),
    so the detector runs once per face across epochs and runs."""

    def __init__(self, dataset: FaceDataset, pipeline: FacePipeline, max_bytes: int = CROP_CACHE_BYTES) -> None:
        super().__init__(dataset.name, dataset.emotions, pre_cropped=True, domain=dataset.domain)
        self.dataset, self.pipeline, self.max_bytes = dataset, pipeline, max_bytes
        self._crops: dict[str, np.ndarray] = {}
        self._bytes = 0

    @property
    def labels(self) -> np.ndarray:
        return self.dataset.labels

    def _sample(self, index: int) -> Sample:
        return self.dataset[index]

    def read(self, sample: Sample) -> np.ndarray:
        crop = self._crops.get(sample.key)
        if crop is None:
            crop = find_face(self.dataset.read(sample), False, self.pipeline)[0].image
            if self._bytes + crop.nbytes <= self.max_bytes:
                self._crops[sample.key] = crop
                self._bytes += crop.nbytes
        return crop.copy()  # the caller may change it in place


def as_face_crops(dataset: FaceDataset, pipeline: FacePipeline | None) -> FaceDataset:
    """``dataset`` itself when it is pre-cropped (or there is no pipeline), else its :class:`FaceCrops`."""
    return dataset if dataset.pre_cropped or pipeline is None else FaceCrops(dataset, pipeline)


def _stratified_pick(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` sorted positions keeping the class shares of ``labels`` (uniform when a
    class is too rare to stratify)."""
    if count >= len(labels):
        return np.arange(len(labels))
    if count == 0:
        return np.arange(0)
    positions = np.arange(len(labels))
    try:
        picked = train_test_split(positions, train_size=count, random_state=seed, stratify=labels)[0]
    except ValueError:
        picked = np.random.default_rng(seed).choice(positions, size=count, replace=False)
    return np.sort(picked)


def _stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """Positions in an order whose every prefix keeps the class shares of ``labels`` (each class
    within one face of its share): each class shuffled (seeded), then the classes interleaved by
    rank within class over class size. Prefixes are nested: the first 100 are among the first 200."""
    rng = np.random.default_rng(seed)
    order, keys = [], []
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        order.append(members)
        keys.append((np.arange(members.size) + 0.5) / members.size)
    positions, ranks = np.concatenate(order), np.concatenate(keys)
    return positions[np.argsort(ranks, kind="stable")]


@validate_params({"synthetic_fraction": [Interval(Real, 0, 1)]})
def check_fraction(synthetic_fraction: float) -> float:
    """``synthetic_fraction`` as a float: a share of synthetic faces in [0, 1]."""
    return float(synthetic_fraction)


def largest_mix(real_size: int, synthetic_size: int, synthetic_fraction: float) -> int:
    """The most faces a mix with ``synthetic_fraction`` can hold without repeating a face."""
    fraction = check_fraction(synthetic_fraction)
    limits = [real_size / (1 - fraction) if fraction < 1 else np.inf,
              synthetic_size / fraction if fraction > 0 else np.inf]
    return int(np.floor(min(limits) + 1e-9))


def mixed_training_set(real: FaceDataset | None, synthetic: FaceDataset | None, synthetic_fraction: float,
                       size: int | None = None, seed: int = 0) -> MixedDataset:
    """A training set of ``size`` faces of which ``synthetic_fraction`` are synthetic.

    Each domain's faces are drawn without repetition, stratified by class where the classes
    allow it, the same for the same ``seed``. Fraction 0 is real only, 1 synthetic only.
    ``size=None`` takes the largest mix the data allows.
    """
    fraction = check_fraction(synthetic_fraction)
    real_size = len(real) if real is not None else 0
    synthetic_size = len(synthetic) if synthetic is not None else 0
    if fraction > 0 and synthetic_size == 0:
        raise DataError(f"a synthetic fraction of {fraction} needs synthetic faces, but none were given; "
                        "pass a synthetic dataset (e.g. synthetic:train) or use fraction 0")
    if fraction < 1 and real_size == 0:
        raise DataError(f"a synthetic fraction of {fraction} needs real faces, but none were given; "
                        "pass a real dataset or use fraction 1")
    most = largest_mix(real_size, synthetic_size, fraction)
    size = most if size is None else size
    if not 0 < size <= most:
        raise DataError(f"a mix of {size} faces with synthetic fraction {fraction} needs "
                        f"{round(size * fraction)} synthetic and {size - round(size * fraction)} real faces; "
                        f"there are {synthetic_size} and {real_size} (at most {most} faces at this fraction)")
    synthetic_count = round(size * fraction)
    parts = []
    if size - synthetic_count:
        parts.append(real.subset(_stratified_pick(real.labels, size - synthetic_count, seed)))
    if synthetic_count:
        parts.append(synthetic.subset(_stratified_pick(synthetic.labels, synthetic_count, seed)))
    names = [d.name for d in (real, synthetic) if d is not None]
    return MixedDataset(parts, f"mix({'+'.join(names)}, synthetic={fraction:g})")


def added_training_set(real: FaceDataset, synthetic: FaceDataset | None, n_synthetic: int,
                       real_size: int | None = None, seed: int = 0) -> MixedDataset:
    """``real_size`` real faces (default all; stratified, the same for the same ``seed``) plus
    ``n_synthetic`` synthetic faces: the first ``n_synthetic`` of a seeded order whose prefixes
    keep the class shares, so the 100 added faces are among the 200 added ones."""
    if isinstance(n_synthetic, bool) or int(n_synthetic) != n_synthetic or n_synthetic < 0:
        raise InvalidArgument(f"the number of synthetic faces to add must be a whole number >= 0, "
                              f"got {n_synthetic}")
    n_synthetic = int(n_synthetic)
    synthetic_size = len(synthetic) if synthetic is not None else 0
    if n_synthetic > synthetic_size:
        raise DataError(f"cannot add {n_synthetic} synthetic faces: there are {synthetic_size}"
                        + ("" if synthetic is not None else " (no synthetic dataset given)"))
    real_size = len(real) if real_size is None else real_size
    if not 0 < real_size <= len(real):
        raise DataError(f"the fixed real set needs {real_size} faces; {real.name} has {len(real)}")
    parts = [real.subset(_stratified_pick(real.labels, real_size, seed))]
    if n_synthetic:
        parts.append(synthetic.subset(np.sort(_stratified_order(synthetic.labels, seed)[:n_synthetic])))
    added = f"+{n_synthetic} {synthetic.name}" if synthetic is not None else "+0"
    return MixedDataset(parts, f"mix({real.name}{added})")


@dataclass(frozen=True)
class MixDesign:
    """How the runs of a sweep differ. ``level``: the column of the varied quantity; ``check``
    validates a level; ``default_size`` gives ``size`` when none is given from (real faces,
    synthetic faces, levels); ``mix`` builds a training set from (real, synthetic, level, size,
    seed); ``run_name`` names the run of a level."""

    name: str
    level: str
    size_meaning: str
    check: Callable[[float], float]
    default_size: Callable[[int, int, Sequence[float]], int]
    mix: Callable[[FaceDataset, FaceDataset | None, float, int, int], MixedDataset]
    run_name: Callable[[float], str]


def _check_count(count: float) -> int:
    if int(count) != count or count < 0:
        raise InvalidArgument(f"synthetic faces to add must be whole numbers >= 0, got {count:g}")
    return int(count)


#: The sweep designs: ``share`` (the training set's size fixed, the synthetic share varied) and
#: ``added`` (the real faces fixed, N synthetic faces added).
DESIGNS: dict[str, MixDesign] = {design.name: design for design in (
    MixDesign("share", "fraction", "training faces in every run (default: the most every fraction allows)",
              check_fraction,
              lambda n_real, n_synthetic, levels: min(largest_mix(n_real, n_synthetic, f) for f in levels),
              lambda real, synthetic, level, size, seed: mixed_training_set(real, synthetic, level, size, seed),
              lambda level: f"synthetic-{round(level * 100):03d}"),
    MixDesign("added", "n_added", "real faces in every run (default: all)", _check_count,
              lambda n_real, n_synthetic, levels: n_real,
              lambda real, synthetic, level, size, seed: added_training_set(real, synthetic, int(level), size, seed),
              lambda level: f"added-{int(level):05d}"),
)}
