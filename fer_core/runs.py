"""Self-describing run directories: ``runs/<id>/`` with ``run.json``, ``metrics.json`` and
``predictions.parquet``, written atomically so a reader never sees half a file."""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from fer_core.errors import ConfigError, DataError

RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.parquet"


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
    path separator (so that it would leave ``runs_dir``) is a :class:`ConfigError`."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ConfigError(f"run name {name!r}: expected a plain folder name (no '/', '\\' or '..'), "
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
