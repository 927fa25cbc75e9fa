"""One persistent, content-addressed store for every heavy per-image result.

Logits, penultimate features, detected faces, attribution maps and projections are kept in
one SQLite file (WAL mode: many readers and one writer at a time, writers wait for each
other). Each result is addressed by a :class:`CacheKey`: what it is, the model's weights
fingerprint, the preprocessing and face-pipeline fingerprint, the sha256 of the image's
bytes and any extra parameters. Changing the model or the preprocessing changes the key, so
a stale result is never served; the same image under another name is found again.

Every write is one short transaction: a killed writer leaves either whole entries or none.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Iterator, Mapping

import numpy as np

from fer_core.config import Config
from fer_core.errors import DataError, InvalidArgument
from fer_core.validation import Interval, StrOptions, validate_params

#: The file under ``paths.cache_dir`` that :meth:`ResultCache.from_config` opens.
RESULTS_FILE = "results.sqlite"

#: Every kind of result, with the dtype it is stored in: attribution maps are kept in
#: float16 (downsample them before storing), everything else exactly as computed. ``face`` is
#: ``[found, score, x0, y0, x1, y1]`` in source pixels; ``keypoints`` the 6 detector keypoints on
#: the model's input crop as fractions of its side (``(6, 2)``, NaN where no face was located);
#: ``diagnostics`` an attribution's per-face record as UTF-8 JSON bytes: the scale its float16
#: map was divided by and the method's own measurements (e.g. LRP's conservation error).
KINDS: Mapping[str, np.dtype] = MappingProxyType({
    "logits": np.dtype(np.float32),
    "embedding": np.dtype(np.float32),
    "face": np.dtype(np.float32),
    "keypoints": np.dtype(np.float32),
    "attribution": np.dtype(np.float16),
    "diagnostics": np.dtype(np.uint8),
    "projection": np.dtype(np.float32),
})

#: Access times are refreshed at most this often, so reading stays (almost) write-free.
ACCESS_RESOLUTION_S = 3600.0
#: How long a writer waits for another one by default.
DEFAULT_TIMEOUT_S = 60.0
#: SQLite's limit on ``?`` parameters per statement is 32766; stay well below it.
_QUERY_BATCH = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    digest TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    preparation TEXT NOT NULL,
    content TEXT NOT NULL,
    params TEXT NOT NULL,
    dtype TEXT NOT NULL,
    shape TEXT NOT NULL,
    data BLOB NOT NULL,
    created REAL NOT NULL,
    accessed REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS results_model ON results (model, kind);
CREATE INDEX IF NOT EXISTS results_kind ON results (kind);
CREATE INDEX IF NOT EXISTS results_accessed ON results (accessed);
"""


def _check_text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"CacheKey.{name}: expected a non-empty string, got {value!r}")
    return value


@dataclass(frozen=True)
class CacheKey:
    """The address of one result.

    Args:
        kind: one of :data:`KINDS`.
        model: the model's weights fingerprint (:attr:`FerModel.fingerprint`).
        preparation: fingerprint of the preprocessing and face pipeline that made the input.
        content: sha256 of the image's bytes (:func:`content_hash`).
        params: extra settings the result depends on (an attribution's method, target and
            layer, ...); given as a mapping, kept as sorted ``(name, value)`` string pairs.
    """

    kind: str
    model: str
    preparation: str
    content: str
    params: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidArgument(f"CacheKey.kind: expected one of {list(KINDS)}, got {self.kind!r}")
        for name in ("model", "preparation", "content"):
            _check_text(name, getattr(self, name))
        pairs = self.params.items() if isinstance(self.params, Mapping) else self.params
        try:
            params = tuple(sorted((_check_text("params name", str(k)), str(v)) for k, v in pairs))
        except (TypeError, ValueError):
            raise InvalidArgument(f"CacheKey.params: expected a mapping of names to values, "
                                  f"got {self.params!r}") from None
        object.__setattr__(self, "params", params)

    def digest(self) -> str:
        """A stable sha256 (hex) of every field: the entry's primary key (computed once per key:
        a lookup and the write that follows share it)."""
        known = self.__dict__.get("_digest")
        if known is None:
            text = json.dumps([self.kind, self.model, self.preparation, self.content, self.params],
                              separators=(",", ":"))
            known = hashlib.sha256(text.encode()).hexdigest()
            object.__setattr__(self, "_digest", known)
        return known


def content_hash(data: bytes | np.ndarray) -> str:
    """sha256 (hex) of an image file's bytes, or of a decoded array's shape, dtype and pixels
    (for images that are not files, such as FER2013 CSV rows)."""
    digest = hashlib.sha256()
    if isinstance(data, np.ndarray):
        digest.update(f"array:{data.dtype.str}:{data.shape}:".encode())
        digest.update(np.ascontiguousarray(data).tobytes())
    elif isinstance(data, (bytes, bytearray, memoryview)):
        digest.update(data)
    else:
        raise DataError(f"content_hash expects file bytes or a numpy array, got {type(data).__name__}")
    return digest.hexdigest()


def _encode(key: CacheKey, array: np.ndarray) -> tuple[str, bytes]:
    if not isinstance(key, CacheKey):
        raise InvalidArgument(f"cache keys must be CacheKey objects, got {type(key).__name__}")
    values = np.asarray(array)
    if values.dtype.kind not in "fiub":
        raise DataError(f"only numeric arrays can be cached, got dtype {values.dtype} for {key.kind}")
    stored = np.ascontiguousarray(values, dtype=KINDS[key.kind].newbyteorder("<"))
    return json.dumps(list(stored.shape)), stored.tobytes()


def _decode(dtype: str, shape: str, data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(json.loads(shape)).copy()


class ResultCache:
    """A content-addressed store of per-image arrays in one SQLite file.

    Safe for several processes at once: readers never block, writers queue for up to
    ``timeout_s`` seconds. One instance per thread (SQLite connections are not shared).

    Args:
        path: the database file; created with its folder when missing.
        timeout_s: how long a writer waits for another writer before failing.
    """

    def __init__(self, path: Path | str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise InvalidArgument(f"cache path {self.path} is a folder; expected a database file such as "
                                  f"{self.path / RESULTS_FILE}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._timeout_ms = int(timeout_s * 1000)
        self._db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            with self._write():
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    self._db.execute(statement)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise DataError(f"{self.path} is not a usable result cache ({exc}); delete it to start afresh") from None

    @classmethod
    def from_config(cls, config: Config) -> "ResultCache":
        """The project's cache: ``paths.cache_dir/results.sqlite``."""
        return cls(config.resolve(config.paths.cache_dir) / RESULTS_FILE)

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction: ``BEGIN IMMEDIATE`` takes the write lock up front (so two
        writers queue instead of deadlocking), ``COMMIT`` on success, ``ROLLBACK`` on error."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise DataError(f"result cache {self.path} stayed locked by another writer ({exc})") from None
        try:
            yield
            self._db.execute("COMMIT")
        except sqlite3.OperationalError as exc:  # e.g. "database or disk is full"
            if self._db.in_transaction:  # SQLite may have rolled back already
                self._db.execute("ROLLBACK")
            raise DataError(f"result cache {self.path}: the write failed and was rolled back ({exc}); "
                            "the entries stored before it are intact") from None
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def get(self, key: CacheKey) -> np.ndarray | None:
        """The array stored under ``key``, or None."""
        return self.get_many([key]).get(key)

    def get_many(self, keys: Iterable[CacheKey]) -> dict[CacheKey, np.ndarray]:
        """The stored arrays of those ``keys`` that are present, in the order asked (missing keys are left out)."""
        by_digest = {key.digest(): key for key in keys}
        digests = list(by_digest)
        arrays: dict[str, np.ndarray] = {}
        stale: list[str] = []
        now = time.time()
        for start in range(0, len(digests), _QUERY_BATCH):
            batch = digests[start:start + _QUERY_BATCH]
            rows = self._db.execute(
                f"SELECT digest, dtype, shape, data, accessed FROM results WHERE digest IN ({_marks(batch)})",
                batch).fetchall()
            for digest, dtype, shape, data, accessed in rows:
                arrays[digest] = _decode(dtype, shape, data)
                if accessed < now - ACCESS_RESOLUTION_S:
                    stale.append(digest)
        if stale:
            self._touch(stale, now)
        return {key: arrays[digest] for digest, key in by_digest.items() if digest in arrays}

    def _touch(self, digests: list[str], now: float) -> None:
        """Record an access; skipped when another process holds the write lock (it is only a hint)."""
        try:
            self._db.execute("PRAGMA busy_timeout = 0")
            with self._write():
                for start in range(0, len(digests), _QUERY_BATCH):
                    batch = digests[start:start + _QUERY_BATCH]
                    self._db.execute(f"UPDATE results SET accessed = ? WHERE digest IN ({_marks(batch)})",
                                     [now, *batch])
        except (DataError, sqlite3.OperationalError):
            pass
        finally:
            self._db.execute(f"PRAGMA busy_timeout = {self._timeout_ms}")

    def put(self, key: CacheKey, array: np.ndarray) -> None:
        """Store ``array`` under ``key`` (replacing what was there)."""
        self.put_many({key: array})

    def put_many(self, items: Mapping[CacheKey, np.ndarray]) -> None:
        """Store every ``key: array`` in one transaction: all of them or, if interrupted, none."""
        now = time.time()
        rows = []
        for key, array in items.items():
            shape, data = _encode(key, array)
            rows.append((key.digest(), key.kind, key.model, key.preparation, key.content,
                         json.dumps(key.params), KINDS[key.kind].newbyteorder("<").str, shape, data, now, now))
        if not rows:
            return
        with self._write():
            self._db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def info(self) -> dict:
        """Entries and stored bytes in all, per kind and per model (with each model's last access)."""
        kinds = {kind: {"entries": n, "bytes": size} for kind, n, size in self._db.execute(
            "SELECT kind, COUNT(*), SUM(LENGTH(data)) FROM results GROUP BY kind ORDER BY kind")}
        models = {model: {"entries": n, "bytes": size, "last_access": _iso(last)}
                  for model, n, size, last in self._db.execute(
                      "SELECT model, COUNT(*), SUM(LENGTH(data)), MAX(accessed) FROM results "
                      "GROUP BY model ORDER BY MAX(accessed) DESC")}
        files = [self.path, self.path.with_name(self.path.name + "-wal")]
        return {"path": str(self.path), "entries": sum(k["entries"] for k in kinds.values()),
                "bytes": sum(k["bytes"] for k in kinds.values()),
                "file_bytes": sum(f.stat().st_size for f in files if f.exists()), "kinds": kinds, "models": models}

    @validate_params({"kind": [StrOptions(KINDS), None], "older_than_days": [Interval(Real, 0, None), None],
                      "keep_models": [Interval(Integral, 0, None), None]})
    def prune(self, model_fingerprint: str | None = None, kind: str | None = None,
              older_than_days: float | None = None, keep_models: int | None = None) -> int:
        """Remove the entries that match every criterion given; returns how many were removed.

        Args:
            model_fingerprint: only entries of this model.
            kind: only entries of this kind.
            older_than_days: only entries not read or written for this many days.
            keep_models: only entries outside the ``keep_models`` most recently used models.
        """
        conditions: list[str] = []
        values: list[object] = []
        if model_fingerprint is not None:
            conditions.append("model = ?")
            values.append(_check_text("model", model_fingerprint))
        if kind is not None:
            conditions.append("kind = ?")
            values.append(kind)
        if older_than_days is not None:  # plain numbers: sqlite3 binds no numpy scalar
            conditions.append("accessed < ?")
            values.append(time.time() - float(older_than_days) * 86400)
        if keep_models is not None:
            conditions.append("model NOT IN (SELECT model FROM results GROUP BY model "
                              "ORDER BY MAX(accessed) DESC LIMIT ?)")
            values.append(int(keep_models))
        if not conditions:
            raise InvalidArgument("prune needs at least one of model_fingerprint, kind, older_than_days, keep_models")
        with self._write():
            return self._db.execute(f"DELETE FROM results WHERE {' AND '.join(conditions)}", values).rowcount

    def vacuum(self) -> int:
        """Fold the write-ahead log into the database and give freed pages back to the disk;
        returns the bytes saved."""
        files = [self.path, self.path.with_name(self.path.name + "-wal")]
        before = sum(f.stat().st_size for f in files if f.exists())
        try:
            self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError as exc:
            raise DataError(f"cannot compact result cache {self.path} while others write to it ({exc})") from None
        return before - sum(f.stat().st_size for f in files if f.exists())

    def close(self) -> None:
        """Close the connection (also done by ``with ResultCache(...) as cache``)."""
        self._db.close()

    def __enter__(self) -> "ResultCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResultCache({str(self.path)!r})"


def _marks(values: list) -> str:
    """``?, ?, ...``: one SQL parameter per value."""
    return ", ".join("?" * len(values))


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
