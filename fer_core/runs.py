"""Self-describing run directories: ``runs/<id>/`` with ``run.json``, ``metrics.json`` and
``predictions.parquet``, written atomically so a reader never sees half a file; and the
provenance every record carries (:func:`provenance_record`): the command, the project's git
commit, package versions and a fingerprint of the data."""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import pandas as pd

from fer_core import __version__
from fer_core.errors import DataError, InvalidArgument

if TYPE_CHECKING:
    from fer_core.data import FaceDataset

RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.parquet"
#: The packages whose versions a record names (each with the distributions that provide it).
RECORDED_PACKAGES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",), "timm": ("timm",), "numpy": ("numpy",), "mediapipe": ("mediapipe",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu")}
#: What a record says for a folder outside any git checkout.
NOT_A_REPO = "not a repo"
_GIT_SECONDS = 10
_CLI_COMMAND: ContextVar[tuple[str, ...] | None] = ContextVar("fer_core_cli_command", default=None)


def write_json_atomic(path: Path, value: Any) -> None:
    """Write JSON to a temporary file beside ``path``, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(value, handle, indent=2, default=str)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_parquet_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write a parquet file to a temporary name, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def utc_now() -> str:
    """The current time, ISO 8601 in UTC."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def run_id(*parts: str) -> str:
    """A file-system-safe run id from its parts and the current time."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    slug = "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", p).strip("_") for p in parts if p)
    return f"{slug}-{stamp}" if slug else stamp


def run_path(runs_dir: Path | str, name: str) -> Path:
    """``runs_dir/name`` for a user-given run name; a name that is empty, ``.``/``..`` or holds a
    path separator (so that it would leave ``runs_dir``) is an :class:`InvalidArgument`."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise InvalidArgument(f"run name {name!r}: expected a plain folder name (no '/', '\\' or '..'), "
                              f"created under {runs_dir}")
    return Path(runs_dir) / name


def contained_path(root: Path | str, relative: str | Path, what: str) -> Path:
    """``root/relative`` for a path read from a file (a ledger, a manifest); a :class:`DataError`
    when it would lead outside ``root`` (an absolute path, ``..``, or a symlink pointing out)."""
    root = Path(root)
    path = root / relative
    if not path.resolve().is_relative_to(root.resolve()):
        raise DataError(f"{what}: {str(relative)!r} leads outside {root}; refusing to read it")
    return path


@dataclass
class Run:
    """A run directory as written by ``fer-core evaluate`` (and later ``train``)."""

    path: Path
    info: dict[str, Any] = field(repr=False)

    @classmethod
    def load(cls, path: Path | str) -> "Run":
        """Read ``path/run.json``; a folder without one is not a run."""
        path = Path(path)
        try:
            info = json.loads((path / RUN_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"not a run directory (no {RUN_FILE}): {path}") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"corrupt {RUN_FILE} in {path}: {exc}") from None
        return cls(path, info)

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def kind(self) -> str:
        return self.info.get("kind", "unknown")

    @property
    def complete(self) -> bool:
        return (self.path / METRICS_FILE).is_file()

    @cached_property
    def metrics(self) -> dict[str, Any]:
        """``metrics.json``; a DataError while the run has not finished."""
        file = self.path / METRICS_FILE
        if not file.is_file():
            raise DataError(f"run {self.id} has no {METRICS_FILE} yet (unfinished or failed)")
        return json.loads(file.read_text(encoding="utf-8"))

    @cached_property
    def predictions(self) -> pd.DataFrame:
        """``predictions.parquet``: one row per face."""
        file = self.path / PREDICTIONS_FILE
        if not file.is_file():
            raise DataError(f"run {self.id} has no {PREDICTIONS_FILE}")
        return pd.read_parquet(file)


def list_runs(runs_dir: Path | str, kind: str | None = None) -> list[Run]:
    """Every run under ``runs_dir`` (newest first), optionally of one kind; unreadable ones skipped."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    runs = []
    for child in runs_dir.iterdir():
        if (child / RUN_FILE).is_file():
            try:
                run = Run.load(child)
            except DataError:
                continue
            if kind is None or run.kind == kind:
                runs.append(run)
    return sorted(runs, key=lambda r: r.info.get("created", ""), reverse=True)


# --------------------------------------------------------------------------------------------
# provenance


@contextmanager
def cli_command(argv: Sequence[str]) -> Iterator[None]:
    """Within this block, records name ``argv`` as the command that made them (the CLI wraps
    every sub-command in it); outside it they name the library call instead."""
    token = _CLI_COMMAND.set(tuple(argv))
    try:
        yield
    finally:
        _CLI_COMMAND.reset(token)


def _argument_text(value: Any) -> str:
    if value is None or isinstance(value, (bool, int, float, str, Path)):
        return repr(str(value) if isinstance(value, Path) else value)
    return f"<{type(value).__name__}>"


def _api_call(frame: FrameType | None) -> str:
    """The outermost fer_core function on the stack above ``frame`` (the call a library user
    made), with its plain arguments as the function holds them by then (one it has replaced,
    e.g. a dataset by its sample, shows the new value); objects are shown by type. The argument
    checks' wrapper (:mod:`fer_core.validation`) is not the call: the function it wraps is."""
    outermost = None
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith("fer_core.") and module != "fer_core.validation":
            outermost = frame
        frame = frame.f_back
    if outermost is None:
        return "unknown"
    arguments = inspect.getargvalues(outermost)
    shown = ", ".join(f"{name}={_argument_text(arguments.locals.get(name))}" for name in arguments.args
                      if name not in ("self", "cls"))
    return f"{outermost.f_globals['__name__']}.{outermost.f_code.co_qualname}({shown})"


def command_record() -> dict[str, Any]:
    """How this process was asked for the work: the ``fer-core`` command line, else the library
    call (the outermost fer_core function on the stack) and the interpreter's ``sys.argv``."""
    cli = _CLI_COMMAND.get()
    if cli is not None:
        return {"via": "cli", "argv": list(cli), "cwd": os.getcwd()}
    return {"via": "library", "call": _api_call(sys._getframe(1)), "argv": list(sys.argv), "cwd": os.getcwd()}


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                              timeout=_GIT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(folder: Path | str) -> dict[str, Any]:
    """The git checkout ``folder`` lies in: its ``commit`` (:data:`NOT_A_REPO` outside one, or
    without git), ``dirty`` (tracked files changed since it; None outside a repo) and its ``root``."""
    folder = next(p for p in (Path(folder).absolute(), *Path(folder).absolute().parents) if p.is_dir())  # not made yet
    root = _git(folder, "rev-parse", "--show-toplevel")
    commit = _git(folder, "rev-parse", "HEAD") if root is not None else None
    if commit is None:
        return {"commit": NOT_A_REPO, "dirty": None, "root": root}
    status = _git(folder, "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status), "root": root}


def package_versions() -> dict[str, str]:
    """Versions of Python, fer_core and each of :data:`RECORDED_PACKAGES` that is installed: an
    imported package's own ``__version__`` (with its build, e.g. torch's ``+cu130``), else the
    installed metadata's (nothing is imported for this)."""
    versions = {"python": platform.python_version(), "fer_core": __version__}
    for package, distributions in RECORDED_PACKAGES.items():
        loaded = getattr(sys.modules.get(package), "__version__", None)
        if loaded is not None:
            versions[package] = str(loaded)
            continue
        for distribution in distributions:
            try:
                versions[package] = importlib.metadata.version(distribution)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return versions


def data_fingerprint(dataset: FaceDataset, limit: int | None = None) -> dict[str, Any]:
    """``label``, ``size``, ``limit`` and ``sha256`` (16 hex digits) of the sorted ``key<TAB>label``
    lines of every sample: the same faces with the same labels give the same digest, in any
    order, and no image is read."""
    lines = sorted(f"{sample.key}\t{sample.label}" for sample in dataset)
    return {"label": dataset.label, "size": len(dataset), "limit": limit,
            "sha256": hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()[:16]}


def provenance_record(project: Path | str, data: Mapping[str, FaceDataset] | None = None,
                      limit: int | None = None) -> dict[str, Any]:
    """What a run record needs to be reproduced: the ``command`` (:func:`command_record`), the
    ``git`` state of ``project`` (the project root, or any folder inside it such as a run
    directory), package ``versions`` and a ``data`` fingerprint of each named dataset (with the
    ``limit`` on how many of its faces were used)."""
    return {"command": command_record(), "git": git_state(project), "versions": package_versions(),
            "data": {role: data_fingerprint(dataset, limit) for role, dataset in (data or {}).items()}}


def faces_summary(faces: dict[str, Any]) -> str:
    """The detector, and the crop's margin and alignment where the run recorded them."""
    detector = faces.get("detector", "not recorded")
    if faces.get("margin") is None:
        return detector
    return f"{detector}, margin {faces['margin']:g}, {'aligned' if faces.get('align') else 'not aligned'}"


def trained_by(provenance: dict) -> str | None:
    """The training run a model comes from (``provenance["run"]``); for a weight average (``fer-core
    average``), its sources' runs joined by ``+`` (``b0-112-cont2+b0-112-cont3``); None when no run is
    recorded."""
    if "averaged_from" in provenance:
        return "+".join(str(trained_by(source["provenance"])) for source in provenance["averaged_from"])
    return provenance.get("run")


def trained_on(provenance: dict) -> str | None:
    """The training data a model's provenance names (``provenance["train_data"]``); for a weight average
    without its own, its sources' (recursively): the first source's label when every source names the
    same dataset (``ferplus:train``, with or without a note after it), else the distinct labels joined by
    `` + ``; None when no source names any."""
    if provenance.get("train_data"):
        return provenance["train_data"]
    labels = [trained_on(source["provenance"]) for source in provenance.get("averaged_from", [])]
    if not labels or not all(labels):
        return None
    parts = list(dict.fromkeys(part for label in labels for part in label.split(" + ")))
    if len({re.split(r"[\s(]", part, maxsplit=1)[0] for part in parts}) == 1:
        return labels[0]
    return " + ".join(parts)
