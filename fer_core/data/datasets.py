"""Face datasets as lightweight indexes: paths or byte offsets plus labels, never pixels.

Every dataset is a :class:`FaceDataset`: ``len(ds)``, ``ds[i] -> Sample``, iteration,
``ds.read(sample) -> RGB uint8 array``, ``ds.labels``, ``ds.class_counts()`` and
``ds.subset(indices)``. Pixels are decoded one sample at a time by :meth:`FaceDataset.read`,
so a dataset is streamed, never held whole in memory.

Labels are canonical indices into :data:`fer_core.labels.EMOTIONS` (-1 when unknown).
"""

from __future__ import annotations

import csv
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from fer_core import labels as label_space
from fer_core.errors import DataError, ImageDecodeError
from fer_core.images import is_image_file, load_rgb
from fer_core.labels import EMOTIONS, NUM_CLASSES, LabelMap

#: Domains a dataset can declare.
DOMAINS = ("real", "synthetic")
#: Most items listed in one skip warning; the rest are counted.
WARN_LIST_LIMIT = 50
#: A folder holds face crops when every sampled image is square and at most this many pixels
#: a side (FER2013 and FER+ crops are 48 px; photos, even of one face, are larger).
PRE_CROPPED_MAX_SIDE = 128
#: Images sampled (seeded) to tell face crops from photos.
PRE_CROPPED_SAMPLE = 50


class DataWarning(UserWarning):
    """Some rows or files of a dataset were skipped; the message lists them."""


def warn_skipped(what: str, items: Sequence[str], stacklevel: int = 3) -> None:
    """Issue ONE :class:`DataWarning` listing ``items`` (the first :data:`WARN_LIST_LIMIT`)."""
    if not items:
        return
    shown = "\n  ".join(items[:WARN_LIST_LIMIT])
    more = f"\n  ... and {len(items) - WARN_LIST_LIMIT} more" if len(items) > WARN_LIST_LIMIT else ""
    warnings.warn(f"skipped {len(items)} {what}:\n  {shown}{more}", DataWarning, stacklevel=stacklevel)


@dataclass(frozen=True, slots=True)
class Sample:
    """One labelled face of a dataset, without its pixels.

    ``key`` is a stable id within the dataset (a path relative to its root, or ``csv:<row>``);
    ``label`` a canonical index into :data:`EMOTIONS` (-1 when unknown); ``soft_label`` the
    vote distribution over :data:`EMOTIONS` (FER+), summing to 1, or ``None``; ``source``
    the file (or locator) the pixels come from.
    """

    key: str
    label: int
    soft_label: tuple[float, ...] | None
    split: str
    source: str


class FaceDataset(ABC):
    """A labelled face dataset, indexed lazily: subclasses keep labels and locations only.

    Attributes: ``name``; ``emotions`` (the canonical classes it has, in canonical order);
    ``pre_cropped`` (True when every image is already a face crop, so detection can be
    skipped); ``domain`` (``"real"`` or ``"synthetic"``).
    """

    name: str
    emotions: tuple[str, ...]
    pre_cropped: bool
    domain: str
    #: How settings that were not given were inferred, one sentence each (the CLI prints them).
    notes: tuple[str, ...] = ()

    def __init__(self, name: str, emotions: Sequence[str], pre_cropped: bool, domain: str) -> None:
        declared = set(emotions)
        label_space.class_indices(sorted(declared))  # validates the names
        self.name = name
        self.emotions = tuple(e for e in EMOTIONS if e in declared)
        self.override(pre_cropped, domain)

    def override(self, pre_cropped: bool | None = None, domain: str | None = None) -> None:
        """Set :attr:`pre_cropped` and :attr:`domain` where given (None keeps the value)."""
        if domain is not None and domain not in DOMAINS:
            raise DataError(f"domain must be one of {list(DOMAINS)}, got {domain!r}")
        if pre_cropped is not None:
            self.pre_cropped = bool(pre_cropped)
        if domain is not None:
            self.domain = domain

    @property
    @abstractmethod
    def labels(self) -> np.ndarray:
        """Canonical label of every sample (``int64``, -1 when unknown), read-only."""

    @abstractmethod
    def _sample(self, index: int) -> Sample:
        """The sample at a valid non-negative ``index``."""

    @abstractmethod
    def read(self, sample: Sample) -> np.ndarray:
        """The ``(H, W, 3)`` RGB uint8 pixels of ``sample``; raises :class:`ImageDecodeError`."""

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Sample:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"dataset indices must be integers, got {type(index).__name__}; "
                            "use subset(indices) for several")
        size = len(self)
        position = int(index) + size if index < 0 else int(index)
        if not 0 <= position < size:
            raise IndexError(f"index {index} out of range for {self.name} with {size} samples")
        return self._sample(position)

    def __iter__(self) -> Iterator[Sample]:
        for position in range(len(self)):
            yield self._sample(position)

    @cached_property
    def label(self) -> str:
        """``name:split`` when every sample comes from one split (e.g. ``ferplus:test``), else the name
        (worked out once: it reads every sample, and a dataset's samples never change)."""
        splits = {self._sample(i).split for i in range(len(self))}
        return f"{self.name}:{splits.pop()}" if len(splits) == 1 and "all" not in splits else self.name

    def class_counts(self) -> dict[str, int]:
        """Number of samples of each of :attr:`emotions` (unknown labels are not counted)."""
        known = self.labels[self.labels >= 0]
        counts = np.bincount(known, minlength=NUM_CLASSES)
        return {emotion: int(counts[label_space.EMOTION_INDEX[emotion]]) for emotion in self.emotions}

    def subset(self, indices: Sequence[int] | np.ndarray) -> FaceDataset:
        """A view on the samples at ``indices`` (in that order); nothing is copied or read."""
        return SubsetDataset(self, indices)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, samples={len(self)}, emotions={list(self.emotions)}, "
                f"domain={self.domain!r}, pre_cropped={self.pre_cropped})")


def _readonly(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


class SubsetDataset(FaceDataset):
    """The samples of ``parent`` at ``indices``; reads go to the parent."""

    def __init__(self, parent: FaceDataset, indices: Sequence[int] | np.ndarray) -> None:
        positions = np.asarray(indices, dtype=np.int64).reshape(-1)
        size = len(parent)
        if positions.size and (positions.min() < -size or positions.max() >= size):
            raise DataError(f"subset indices must lie in [-{size}, {size}) for {parent.name}; "
                            f"got values from {positions.min()} to {positions.max()}")
        super().__init__(parent.name, parent.emotions, parent.pre_cropped, parent.domain)
        self.parent = parent
        self.indices = _readonly(np.where(positions < 0, positions + size, positions))
        self._labels = _readonly(parent.labels[self.indices])

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def _sample(self, index: int) -> Sample:
        return self.parent[int(self.indices[index])]

    def read(self, sample: Sample) -> np.ndarray:
        return self.parent.read(sample)


class SplitDataset(SubsetDataset):
    """The samples of ``parent`` at ``indices`` as its split ``split``: every ``Sample.split``
    and the label say so (``sd_faces:test``); keys stay the parent's."""

    def __init__(self, parent: FaceDataset, indices: Sequence[int] | np.ndarray, split: str) -> None:
        super().__init__(parent, indices)
        self.split = split

    def _sample(self, index: int) -> Sample:
        return replace(super()._sample(index), split=self.split)


def _image_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from the file's header, None when it is no readable image."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def looks_pre_cropped(paths: Sequence[Path], seed: int = 0) -> tuple[bool, str]:
    """Whether ``paths`` are face crops already, and a sentence saying why: True when every
    readable image of a seeded sample of :data:`PRE_CROPPED_SAMPLE` is square and at most
    :data:`PRE_CROPPED_MAX_SIDE` pixels a side (False when none reads)."""
    picks = np.random.default_rng(seed).choice(len(paths), size=min(PRE_CROPPED_SAMPLE, len(paths)), replace=False)
    sizes = [size for size in (_image_size(Path(paths[i])) for i in np.sort(picks)) if size is not None]
    crops = sum(width == height <= PRE_CROPPED_MAX_SIDE for width, height in sizes)
    return bool(sizes) and crops == len(sizes), (f"{crops} of {len(sizes)} sampled images are square and at most "
                                                 f"{PRE_CROPPED_MAX_SIDE} px")


class FolderDataset(FaceDataset):
    """Images in class folders: ``root/<split>/<class>/*.jpg`` (or ``root/<class>/`` when
    ``split`` is None). Class folder names are matched case-insensitively against
    ``label_map`` (default :data:`fer_core.labels.CLASS_FOLDERS`). Samples are sorted by path;
    keys are paths relative to ``root``; ``Sample.split`` is ``split`` (``"all"`` when flat).
    ``pre_cropped=None`` infers it (:func:`looks_pre_cropped`) and says so in :attr:`notes`.
    """

    def __init__(self, root: str | Path, split: str | None = None, *, name: str | None = None,
                 domain: str = "real", pre_cropped: bool | None = None,
                 label_map: LabelMap = label_space.CLASS_FOLDERS) -> None:
        self.root = Path(root)
        self.split = split
        folder = self.root / split if split is not None else self.root
        if not folder.is_dir():
            raise DataError(f"dataset folder not found: {folder}")
        by_name = {source.lower(): source for source in label_map.source_names}
        class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            raise DataError(f"no class folders in {folder}; expected <class>/ subfolders named from "
                            f"{list(label_map.source_names)}")
        unknown = [p.name for p in class_dirs if p.name.lower() not in by_name]
        if unknown:
            hint = "" if split is not None else " (if these are split folders, give a split, e.g. 'test')"
            raise DataError(f"unknown class folders {unknown} in {folder}{hint}; accepted names "
                            f"(case-insensitive): {list(label_map.source_names)}")
        keys: list[str] = []
        labels: list[int] = []
        for class_dir in class_dirs:
            label = label_map.index(by_name[class_dir.name.lower()])
            files = sorted(p for p in class_dir.iterdir()
                           if p.is_file() and not p.name.startswith(".") and is_image_file(p))
            if not files:
                raise DataError(f"class folder {class_dir} has no images (expected *.jpg, *.png, ...)")
            keys.extend(p.relative_to(self.root).as_posix() for p in files)
            labels.extend([label] * len(files))
        order = sorted(range(len(keys)), key=keys.__getitem__)
        self._keys = [keys[i] for i in order]
        self._labels = _readonly(np.asarray(labels, dtype=np.int64)[order])
        present = [EMOTIONS[i] for i in set(labels) if i >= 0]
        if pre_cropped is None:
            pre_cropped, why = looks_pre_cropped([self.root / key for key in self._keys])
            treated = ("face crops, classified whole (pre_cropped=False, --detect: detect faces)" if pre_cropped
                       else "photos, faces detected (pre_cropped=True, --pre-cropped: classify whole)")
            self.notes = (f"{folder}: taken for {treated}; {why}",)
        super().__init__(name or self.root.name, present, pre_cropped, domain)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def _sample(self, index: int) -> Sample:
        key = self._keys[index]
        return Sample(key, int(self._labels[index]), None, self.split or "all", str(self.root / key))

    def read(self, sample: Sample) -> np.ndarray:
        return load_rgb(sample.source)


#: FER2013 ``Usage`` values, in the order of their codes.
FER2013_USAGES = ("Training", "PublicTest", "PrivateTest")
FER2013_SIDE = 48


def _parse_fer2013_pixels(text: str) -> np.ndarray:
    """48x48 grayscale from the ``pixels`` field; ValueError saying what is wrong."""
    tokens = text.split()
    if len(tokens) != FER2013_SIDE * FER2013_SIDE:
        raise ValueError(f"{len(tokens)} pixel values, expected {FER2013_SIDE * FER2013_SIDE}")
    try:
        values = np.array(tokens, dtype=np.int64)
    except ValueError:
        raise ValueError("non-numeric pixel values") from None
    if values.min() < 0 or values.max() > 255:
        raise ValueError(f"pixel values from {values.min()} to {values.max()}, expected 0..255")
    return values.astype(np.uint8).reshape(FER2013_SIDE, FER2013_SIDE)


class Fer2013CsvDataset(FaceDataset):
    """The Kaggle ``fer2013.csv`` (columns ``emotion``, ``pixels``, ``Usage``; labels per
    :data:`fer_core.labels.FER2013_CSV`), indexed by byte offset and read row by row.

    ``usage`` keeps one of ``Training``, ``PublicTest``, ``PrivateTest`` (None: all rows).
    Bad rows (wrong pixel count, non-numeric pixels, bad label or usage) are skipped while
    indexing and reported in one :class:`DataWarning`; they are kept in ``skipped_rows``.
    Keys are ``csv:<row>`` with ``row`` the 0-based data row (FER+ names images by it).
    """

    def __init__(self, csv_path: str | Path, usage: str | None = None) -> None:
        self.csv_path = Path(csv_path)
        if usage is not None and usage not in FER2013_USAGES:
            raise DataError(f"usage must be one of {list(FER2013_USAGES)} or None, got {usage!r}")
        if not self.csv_path.is_file():
            raise DataError(f"FER2013 csv not found: {self.csv_path}")
        self.usage = usage
        rows: list[int] = []
        offsets: list[int] = []
        labels: list[int] = []
        usages: list[int] = []
        skipped: list[tuple[int, str]] = []
        with self.csv_path.open("rb") as handle:
            header = handle.readline()
            self._columns = self._column_positions(header)
            offset = len(header)
            for row, line in enumerate(handle):
                start, offset = offset, offset + len(line)
                if not line.strip():
                    continue
                try:
                    fields = self._fields(line)
                    usage_code = self._usage_code(fields)
                    if usage is not None and FER2013_USAGES[usage_code] != usage:
                        continue
                    label = self._label(fields)
                    _parse_fer2013_pixels(fields[self._columns[1]])
                except ValueError as exc:
                    skipped.append((row, str(exc)))
                    continue
                rows.append(row)
                offsets.append(start)
                labels.append(label)
                usages.append(usage_code)
        if not rows:
            raise DataError(f"no usable rows in {self.csv_path}" + (f" with Usage {usage}" if usage else ""))
        self._rows = np.asarray(rows, dtype=np.int64)
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._labels = _readonly(np.asarray(labels, dtype=np.int64))
        self._usages = np.asarray(usages, dtype=np.int8)
        self.skipped_rows = tuple(skipped)
        warn_skipped(f"bad rows of {self.csv_path} (0-based data rows; file line = row + 2)",
                     [f"row {row}: {reason}" for row, reason in skipped])
        super().__init__("fer2013-csv", label_space.FER2013_CSV.emotions, pre_cropped=True, domain="real")

    def _column_positions(self, header: bytes) -> tuple[int, int, int]:
        names = [n.strip().lower() for n in next(csv.reader([header.decode("utf-8-sig", "replace")]))]
        wanted = ("emotion", "pixels", "usage")
        missing = [w for w in wanted if w not in names]
        if missing:
            raise DataError(f"{self.csv_path} lacks columns {missing}; expected a header with "
                            f"emotion, pixels, Usage (the Kaggle fer2013.csv), got {names}")
        return tuple(names.index(w) for w in wanted)  # type: ignore[return-value]

    def _fields(self, line: bytes) -> list[str]:
        try:
            fields = next(csv.reader([line.decode("utf-8")]))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ValueError(f"unreadable line ({exc})") from None
        if len(fields) <= max(self._columns):
            raise ValueError(f"{len(fields)} fields, expected {max(self._columns) + 1}")
        return fields

    def _usage_code(self, fields: list[str]) -> int:
        usage = fields[self._columns[2]].strip()
        if usage not in FER2013_USAGES:
            raise ValueError(f"bad Usage {usage!r}, expected one of {list(FER2013_USAGES)}")
        return FER2013_USAGES.index(usage)

    def _label(self, fields: list[str]) -> int:
        emotion = fields[self._columns[0]].strip()
        classes = label_space.FER2013_CSV.source_names
        if not emotion.isdigit() or int(emotion) >= len(classes):
            raise ValueError(f"bad emotion {emotion!r}, expected 0..{len(classes) - 1}")
        return label_space.FER2013_CSV.index(int(emotion))

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def _sample(self, index: int) -> Sample:
        row = int(self._rows[index])
        return Sample(f"csv:{row}", int(self._labels[index]), None, FER2013_USAGES[self._usages[index]],
                      f"{self.csv_path}#row={row}")

    def read(self, sample: Sample) -> np.ndarray:
        row_text = sample.key.removeprefix("csv:")
        position = np.searchsorted(self._rows, int(row_text)) if row_text.isdigit() else len(self._rows)
        if position >= len(self._rows) or self._rows[position] != int(row_text):
            raise DataError(f"sample {sample.key!r} is not a row of {self.csv_path} (with Usage {self.usage})")
        with self.csv_path.open("rb") as handle:
            handle.seek(int(self._offsets[position]))
            line = handle.readline()
        try:
            gray = _parse_fer2013_pixels(self._fields(line)[self._columns[1]])
        except ValueError as exc:
            raise ImageDecodeError(f"{self.csv_path} row {row_text} no longer reads ({exc}); "
                                   "was the file changed after indexing?") from None
        return np.repeat(gray[:, :, None], 3, axis=2)


#: FER+ split -> (``Usage`` in fer2013new.csv, image folder).
FERPLUS_SPLITS = {
    "train": ("Training", "FER2013Train"),
    "valid": ("PublicTest", "FER2013Valid"),
    "test": ("PrivateTest", "FER2013Test"),
}
FERPLUS_CSV = "fer2013new.csv"
FERPLUS_LABEL_MODES = ("majority", "soft")
#: Canonical index of every FER+ vote column (-1 for ``unknown`` and ``NF``).
_FERPLUS_COLUMN_LABEL = np.array([label_space.FERPLUS_VOTES.index(n) for n in label_space.FERPLUS_VOTES.source_names])


class FerPlusVotes(NamedTuple):
    """The FER+ votes of the images of one split folder: ``votes[i]`` belongs to ``names[i]``,
    columns in :data:`fer_core.labels.FERPLUS_VOTES` order (8 emotions, unknown, NF)."""

    names: tuple[str, ...]
    votes: np.ndarray


def load_ferplus_votes(root: str | Path, split: str) -> FerPlusVotes:
    """Votes from ``root/fer2013new.csv`` for the images of ``root/<split folder>/``, sorted by name.

    Rows with an empty image name are faces FER+ dropped (no file). Four names occur twice in
    the csv; FER+'s ``generate_training_data.py`` writes rows in order, so the file holds the
    last row's image and the last row's votes are used (``fer0033120.png`` is a non-face whose
    first row carries votes of another image; the folders' ``label.csv`` keep that stale row,
    which is one reason they are not used). Names without a file are skipped with one warning.
    """
    if split not in FERPLUS_SPLITS:
        raise DataError(f"FER+ split must be one of {list(FERPLUS_SPLITS)}, got {split!r}")
    root = Path(root)
    usage, folder_name = FERPLUS_SPLITS[split]
    table, folder = root / FERPLUS_CSV, root / folder_name
    for needed in (table, folder):
        if not needed.exists():
            raise DataError(f"FER+ needs {needed}; expected {FERPLUS_CSV} and FER2013Train/ FER2013Valid/ "
                            f"FER2013Test/ in {root}")
    expected_header = ["Usage", "Image name", *label_space.FERPLUS_VOTES.source_names]
    votes_by_name: dict[str, list[int]] = {}
    try:
        with table.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            if [h.strip() for h in header] != expected_header:
                raise DataError(f"{table} header is {header}; expected {expected_header}")
            for line_number, fields in enumerate(reader, start=2):
                if len(fields) != len(expected_header):
                    raise DataError(f"{table} line {line_number} has {len(fields)} fields, "
                                    f"expected {len(expected_header)}")
                if fields[0] != usage or not fields[1]:
                    continue
                try:
                    votes_by_name[fields[1]] = [int(v) for v in fields[2:]]
                except ValueError:
                    raise DataError(f"{table} line {line_number}: votes must be integers, got {fields[2:]}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{table} is not a readable UTF-8 csv file ({exc})") from None
    on_disk = {p.name for p in folder.iterdir() if p.is_file()}
    missing = sorted(name for name in votes_by_name if name not in on_disk)
    warn_skipped(f"FER+ {split} images listed in {table.name} but missing from {folder}", missing)
    names = tuple(sorted(name for name in votes_by_name if name in on_disk))
    votes = np.array([votes_by_name[n] for n in names], dtype=np.int64).reshape(len(names), -1)
    return FerPlusVotes(names, votes)


def ferplus_majority(votes: np.ndarray) -> np.ndarray:
    """Majority labels of FER+ vote rows: the canonical index of the top-voted column, or -1
    when the top is ``unknown``/``NF`` or shared by two columns (the FER+ majority protocol)."""
    votes = np.asarray(votes)
    top = votes.max(axis=1, keepdims=True)
    tied = (votes == top).sum(axis=1) > 1
    labels = _FERPLUS_COLUMN_LABEL[votes.argmax(axis=1)]
    return np.where(tied, -1, labels)


def ferplus_emotion_votes(votes: np.ndarray) -> np.ndarray:
    """The 8 emotion vote columns of FER+ vote rows, reordered to canonical :data:`EMOTIONS` order."""
    emotion_columns = np.flatnonzero(_FERPLUS_COLUMN_LABEL >= 0)
    order = emotion_columns[np.argsort(_FERPLUS_COLUMN_LABEL[emotion_columns])]
    return np.asarray(votes)[:, order]


class FerPlusDataset(FaceDataset):
    """FER+ (``fer2013new.csv`` + ``FER2013Train/ FER2013Valid/ FER2013Test/``), 8 emotions.

    ``label_mode="majority"``: images whose top vote is unknown/NF or tied are dropped; the
    label is the top-voted emotion. ``"soft"``: ``soft_label`` is the vote distribution over
    the 8 emotions (rows without emotion votes dropped); ``label`` is the majority emotion
    when defined, else the most voted emotion (first in canonical order on ties).
    """

    def __init__(self, root: str | Path, split: str, label_mode: str = "majority") -> None:
        if label_mode not in FERPLUS_LABEL_MODES:
            raise DataError(f"label_mode must be one of {list(FERPLUS_LABEL_MODES)}, got {label_mode!r}")
        self.root = Path(root)
        self.split = split
        self.label_mode = label_mode
        names, votes = load_ferplus_votes(self.root, split)
        majority = ferplus_majority(votes)
        emotion_votes = ferplus_emotion_votes(votes)
        if label_mode == "majority":
            keep = majority >= 0
            labels = majority
        else:
            keep = emotion_votes.sum(axis=1) > 0
            labels = np.where(majority >= 0, majority, emotion_votes.argmax(axis=1))
        self._folder = FERPLUS_SPLITS[split][1]
        self._names = [n for n, k in zip(names, keep, strict=True) if k]
        self._labels = _readonly(labels[keep].astype(np.int64))
        self._votes = emotion_votes[keep].astype(np.int16) if label_mode == "soft" else None
        super().__init__("ferplus", EMOTIONS, pre_cropped=True, domain="real")

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def _sample(self, index: int) -> Sample:
        key = f"{self._folder}/{self._names[index]}"
        soft = None
        if self._votes is not None:
            row = self._votes[index].astype(np.float64)
            soft = tuple(float(v) for v in row / row.sum())
        return Sample(key, int(self._labels[index]), soft, self.split, str(self.root / key))

    def read(self, sample: Sample) -> np.ndarray:
        return load_rgb(sample.source)


