"""Named datasets under the data root, in one registry (like timm's ``create_model``).

``open_dataset("fer2013:test", data_root)`` builds the dataset a name stands for;
``available_datasets(data_root)`` lists the specs present on disk; ``install_archive``
unpacks one of the shared archives into the layout the registry expects.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fer_core import labels as label_space
from fer_core.data.datasets import (
    FERPLUS_CSV,
    FERPLUS_SPLITS,
    FaceDataset,
    FerPlusDataset,
    FolderDataset,
    SplitDataset,
)
from fer_core.data.splits import per_class_split
from fer_core.errors import DataError

DatasetBuilder = Callable[[Path, str | None], FaceDataset]


@dataclass(frozen=True)
class DatasetEntry:
    """A named dataset: where it lives under the data root and how to get it there.

    ``location``: folder relative to the data root. ``splits``: accepted splits (empty for a
    flat ``<class>/`` folder). ``split_paths``: folder of each split relative to ``location``
    (default: the split name). ``archive``: the shared zip that provides it, and
    ``archive_prefix`` the folder inside the zip whose content goes to ``location``.
    ``required_files``: files beside the split folders (relative to ``location``).
    ``how_to_get``: what to tell a user when it is missing. ``split_optional``: the name alone
    (no split) opens every face.
    """

    name: str
    location: str
    splits: tuple[str, ...]
    build: DatasetBuilder
    how_to_get: str
    split_paths: tuple[tuple[str, str], ...] = ()
    required_files: tuple[str, ...] = ()
    archive: str | None = None
    archive_prefix: str = ""
    split_optional: bool = False

    def split_folder(self, data_root: Path, split: str | None) -> Path:
        """The folder that must exist for ``split`` (the dataset folder when flat)."""
        base = Path(data_root) / self.location
        return base if split is None else base / dict(self.split_paths).get(split, split)

    def required_paths(self, data_root: Path, split: str | None) -> list[Path]:
        """Every path that must exist to open ``split``."""
        files = [Path(data_root) / self.location / name for name in self.required_files]
        return [self.split_folder(data_root, split), *files]


_REGISTRY: dict[str, DatasetEntry] = {}


def register_dataset(name: str, location: str, splits: tuple[str, ...], how_to_get: str, *,
                     split_paths: dict[str, str] | None = None, required_files: tuple[str, ...] = (),
                     archive: str | None = None, archive_prefix: str = "",
                     split_optional: bool = False) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Decorator registering a builder ``(dataset folder, split) -> FaceDataset`` under ``name``."""
    def decorator(build: DatasetBuilder) -> DatasetBuilder:
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} is already registered")
        _REGISTRY[name] = DatasetEntry(name, location, splits, build, how_to_get,
                                       tuple((split_paths or {}).items()), required_files, archive, archive_prefix,
                                       split_optional)
        return build
    return decorator


@register_dataset("fer2013", "real/fer2013", ("train", "test"), archive="fer2013.zip",
                  how_to_get="unzip fer2013.zip (Kaggle FER2013 image folders) into {location}, so that "
                             "{location}/train/<class>/ and {location}/test/<class>/ exist")
def _fer2013(folder: Path, split: str | None) -> FaceDataset:
    return FolderDataset(folder, split, name="fer2013", pre_cropped=True, label_map=label_space.FER2013_FOLDERS)


@register_dataset("ferplus", "real/ferplus", tuple(FERPLUS_SPLITS), archive="ferplus.zip",
                  split_paths={split: folder for split, (_, folder) in FERPLUS_SPLITS.items()},
                  required_files=(FERPLUS_CSV,),
                  how_to_get="unzip ferplus.zip into {location}, so that {location}/fer2013new.csv and "
                             "{location}/FER2013Train/ FER2013Valid/ FER2013Test/ exist")
def _ferplus(folder: Path, split: str | None) -> FaceDataset:
    return FerPlusDataset(folder, split)


@register_dataset("affectnet", "real/affectnet", ("train", "val"),
                  how_to_get="AffectNet is licensed: request it from its authors (Mollahosseini et al.), then "
                             "arrange its images as {location}/train/<class>/ and {location}/val/<class>/ "
                             "with class folders such as anger, contempt, disgust, fear, happy, neutral, sad, surprise")
def _affectnet(folder: Path, split: str | None) -> FaceDataset:
    return FolderDataset(folder, split, name="affectnet", pre_cropped=True)


@register_dataset("synthetic", "synthetic/processed", ("train", "test"),
                  how_to_get="it is written by the synthetic pipeline: face crops extracted from the generated "
                             "images go to {location}/train/<class>/ and {location}/test/<class>/")
def _synthetic(folder: Path, split: str | None) -> FaceDataset:
    return FolderDataset(folder, split, name="synthetic", domain="synthetic", pre_cropped=True)


#: The documented split of the shared Stable Diffusion faces (for RQ2 out of the box):
#: ``sd_faces:test`` holds 20% of every emotion's faces (rounded; :func:`per_class_split` with
#: seed 0 over the faces sorted by path: 95 of the 476), ``sd_faces:train`` the rest (381);
#: ``sd_faces`` alone is all 476 faces (what the shipped model is evaluated on).
SD_FACES_TEST_FRACTION = 0.2
SD_FACES_SPLIT_SEED = 0


@register_dataset("sd_faces", "synthetic/sd_faces", ("train", "test"), archive="synthetic_sd_faces.zip",
                  archive_prefix="synthetic_sd_faces", split_paths={"train": ".", "test": "."}, split_optional=True,
                  how_to_get="unzip synthetic_sd_faces.zip and move the content of its synthetic_sd_faces/ "
                             "folder into {location}, so that {location}/<class>/*.jpg exist")
def _sd_faces(folder: Path, split: str | None) -> FaceDataset:
    every = FolderDataset(folder, None, name="sd_faces", domain="synthetic", pre_cropped=False)
    if split is None:
        return every
    parts = dict(zip(("train", "test"), per_class_split(every.labels, SD_FACES_TEST_FRACTION, SD_FACES_SPLIT_SEED)))
    return SplitDataset(every, parts[split], split)


def dataset_names() -> list[str]:
    """Names of the registered datasets."""
    return sorted(_REGISTRY)


def dataset_folder(name: str, data_root: str | Path) -> Path:
    """Where the registered dataset ``name`` lives under ``data_root``."""
    return _entry(name).split_folder(Path(data_root), None)


def _entry(name: str) -> DatasetEntry:
    if name not in _REGISTRY:
        raise DataError(f"unknown dataset {name!r}; known datasets: {dataset_names()}, or give an existing folder")
    return _REGISTRY[name]


def _check_split(entry: DatasetEntry, split: str | None) -> None:
    if entry.splits and split not in entry.splits and not (split is None and entry.split_optional):
        raise DataError(f"{entry.name} needs a split: write {entry.name}:<split> "
                        f"with <split> one of {list(entry.splits)}")
    if not entry.splits and split is not None:
        raise DataError(f"{entry.name} has no splits (one folder of <class>/ subfolders); write just {entry.name!r}")


def _install_hint(entry: DatasetEntry, data_root: Path) -> str:
    hint = entry.how_to_get.format(location=Path(data_root) / entry.location)
    if entry.archive:
        hint += f" (or run: fer-core data install path/to/{entry.archive})"
    return hint


def _folder_domain(folder: Path, data_root: Path) -> tuple[str, str | None]:
    """``"synthetic"`` (and a note saying why) for a folder under ``data_root/synthetic``, else ``"real"``."""
    synthetic = (data_root / "synthetic").resolve()
    if folder.resolve().is_relative_to(synthetic):
        return "synthetic", f"{folder}: domain synthetic, as it lies under {synthetic} (domain='real', --domain real: real)"
    return "real", None


def _open_folder(folder: Path, split: str | None, data_root: Path, pre_cropped: bool | None,
                 domain: str | None) -> FaceDataset:
    note = None
    if domain is None:
        domain, note = _folder_domain(folder, data_root)
    dataset = FolderDataset(folder, split, domain=domain, pre_cropped=pre_cropped)
    dataset.notes = (*dataset.notes, *([note] if note else []))
    return dataset


def open_dataset(spec: str, data_root: str | Path, *, pre_cropped: bool | None = None,
                 domain: str | None = None) -> FaceDataset:
    """The dataset ``spec`` names: ``name[:split]`` of a registered dataset (e.g. ``fer2013:test``,
    ``ferplus:valid``, ``sd_faces``, ``sd_faces:test``), or an existing folder ``path`` (``<class>/`` subfolders)
    or ``path:split`` (``<split>/<class>/`` subfolders). Relative paths are taken from the
    current directory; named datasets live under ``data_root``.

    ``pre_cropped`` and ``domain`` override what the registry says (or, for a folder, what is
    inferred: face crops when a sample of its images is small and square, synthetic when it
    lies under ``data_root/synthetic``; :attr:`FaceDataset.notes` says what was inferred).
    """
    data_root = Path(data_root)
    name, sep, split = spec.partition(":")
    if name in _REGISTRY:
        entry = _REGISTRY[name]
        split_or_none = split if sep else None
        _check_split(entry, split_or_none)
        missing = [p for p in entry.required_paths(data_root, split_or_none) if not p.exists()]
        if missing:
            raise DataError(f"{spec} not found: looked for {', '.join(map(str, missing))}. "
                            f"To get it: {_install_hint(entry, data_root)}")
        dataset = entry.build(data_root / entry.location, split_or_none)
        dataset.override(pre_cropped, domain)
        return dataset
    if Path(spec).is_dir():
        return _open_folder(Path(spec), None, data_root, pre_cropped, domain)
    folder, sep, split = spec.rpartition(":")
    if sep and Path(folder).is_dir():
        return _open_folder(Path(folder), split, data_root, pre_cropped, domain)
    raise DataError(f"unknown dataset {spec!r}: not one of {dataset_names()} (as name or name:split) "
                    "and not an existing folder (path or path:split)")


def available_datasets(data_root: str | Path) -> list[str]:
    """Specs (``name`` or ``name:split``) of the registered datasets present under ``data_root``."""
    data_root = Path(data_root)
    present = []
    for name in dataset_names():
        entry = _REGISTRY[name]
        for split in (None, *entry.splits) if entry.split_optional else entry.splits or (None,):
            if all(p.exists() for p in entry.required_paths(data_root, split)):
                present.append(name if split is None else f"{name}:{split}")
    return present


def _member_target(member: str, prefix: str) -> PurePosixPath | None:
    """Where ``member`` goes relative to the dataset folder (None: outside ``prefix``, skipped)."""
    path = PurePosixPath(member)
    if not prefix:
        return path
    prefix_path = PurePosixPath(prefix)
    return path.relative_to(prefix_path) if path.is_relative_to(prefix_path) else None


def install_archive(zip_path: str | Path, name: str | None, data_root: str | Path, *,
                    overwrite: bool = False) -> Path:
    """Unpack a shared archive (``fer2013.zip``, ``ferplus.zip``, ``synthetic_sd_faces.zip``)
    into its registry location under ``data_root`` and return that folder.

    ``name`` picks the dataset; when None it is found from the archive's file name. The
    archive is refused before anything is written if a member is absolute or escapes the
    target (path traversal). The unpacked dataset is opened once to check its layout.
    An existing dataset folder is only replaced with ``overwrite=True``.
    """
    zip_path, data_root = Path(zip_path), Path(data_root)
    if name is None:
        by_archive = {e.archive: e for e in _REGISTRY.values() if e.archive}
        if zip_path.name not in by_archive:
            raise DataError(f"cannot tell which dataset {zip_path.name} is; known archives: {sorted(by_archive)} "
                            "(or give the dataset name)")
        entry = by_archive[zip_path.name]
    else:
        entry = _entry(name)
    if not zip_path.is_file():
        raise DataError(f"archive not found: {zip_path}")
    target = data_root / entry.location
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise DataError(f"{target} already exists and is not empty; remove it or pass overwrite=True")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        with zipfile.ZipFile(zip_path) as archive:
            _extract_safely(archive, entry.archive_prefix, staging, zip_path)
        for split in entry.splits or (None,):
            entry.build(staging, split)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{zip_path} is not a readable zip archive: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


#: A member that unpacks to more than this many times its packed size (and over a MiB) is
#: refused as a zip bomb; the shared archives reach 9x (FER+ label CSV).
MAX_COMPRESSION_RATIO = 100
#: Free space left on the disk after unpacking, at the least.
MIN_FREE_BYTES = 1 << 30


def _check_unpacked_size(members: list[zipfile.ZipInfo], destination: Path, zip_path: Path) -> None:
    """Refuse a zip bomb (a member of extreme compression ratio) or an archive the disk cannot
    hold, before anything is written (zipfile never unpacks more than a member's declared size)."""
    for info in members:
        if info.file_size > (1 << 20) and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
            raise DataError(f"refusing {zip_path}: member {info.filename!r} unpacks to {info.file_size:,} bytes from "
                            f"{info.compress_size:,} (over {MAX_COMPRESSION_RATIO}x: a zip bomb?)")
    needed = sum(info.file_size for info in members)
    free = shutil.disk_usage(destination).free
    if needed + MIN_FREE_BYTES > free:
        raise DataError(f"refusing {zip_path}: it unpacks to {needed / 2**30:.1f} GiB but {destination} has "
                        f"{free / 2**30:.1f} GiB free (1 GiB must stay free)")


def _extract_safely(archive: zipfile.ZipFile, prefix: str, destination: Path, zip_path: Path) -> None:
    """Extract the members under ``prefix`` into ``destination``, refusing unsafe member names."""
    planned: list[tuple[zipfile.ZipInfo, Path]] = []
    for info in archive.infolist():
        name = info.filename.replace("\\", "/")
        if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
            raise DataError(f"refusing {zip_path}: member {info.filename!r} has an absolute path")
        if ".." in PurePosixPath(name).parts:
            raise DataError(f"refusing {zip_path}: member {info.filename!r} would be written outside {destination}")
        relative = _member_target(name, prefix)
        if relative is None or not relative.parts:
            continue
        planned.append((info, destination / relative))
    if not planned:
        raise DataError(f"{zip_path} has nothing under {prefix or 'its root'}/; is it the right archive?")
    _check_unpacked_size([info for info, _ in planned], destination, zip_path)
    for info, out in planned:
        if info.is_dir():
            out.mkdir(parents=True, exist_ok=True)
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as source, out.open("wb") as sink:
            shutil.copyfileobj(source, sink)
