"""Saliency quality kept for the dashboard: each method's model-randomisation check (with its
noise-stability and different-faces controls) and deletion / insertion areas against a random
order and the centre prior (:func:`~fer_core.explain.sanity_report`),
stored per model in ``<cache_dir>/quality/<model fingerprint>.json`` (written atomically;
methods checked later are merged in), and read back by :func:`load_quality` so a page can flag
a method that failed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from fer_core.config import Config
from fer_core.errors import DataError, InvalidArgument
from fer_core.explain.base import Target
from fer_core.explain.analysis.sanity import sanity_report
from fer_core.models.factory import FerModel
from fer_core.runs import utc_now, write_json_atomic

#: Folder under ``paths.cache_dir`` that holds one JSON file per model.
QUALITY_DIR = "quality"
_FINGERPRINT = re.compile(r"^[0-9A-Za-z_.-]{1,128}$")


def _cache_dir(config_or_cache_dir: Config | Path | str) -> Path:
    if isinstance(config_or_cache_dir, Config):
        return config_or_cache_dir.resolve(config_or_cache_dir.paths.cache_dir)
    return Path(config_or_cache_dir)


def quality_path(config_or_cache_dir: Config | Path | str, model_fingerprint: str) -> Path:
    """Where the quality results of the model with ``model_fingerprint`` are kept."""
    if not isinstance(model_fingerprint, str) or not _FINGERPRINT.match(model_fingerprint):
        raise InvalidArgument(f"model fingerprint: expected FerModel.fingerprint (letters, digits, '._-'), "
                              f"got {model_fingerprint!r}")
    return _cache_dir(config_or_cache_dir) / QUALITY_DIR / f"{model_fingerprint}.json"


def record_quality(config_or_cache_dir: Config | Path | str, model: FerModel, faces: torch.Tensor,
                   methods: Sequence[str], source: str = "", target: Target = "predicted",
                   params: Mapping[str, Mapping[str, Any]] | None = None, depth: int | None = None,
                   steps: int = 20, baseline: str = "blurred", seed: int = 0) -> dict[str, dict[str, Any]]:
    """Run :func:`~fer_core.explain.sanity_report` for ``methods`` on ``faces`` (a preprocessed
    batch; ``source`` says where they came from, e.g. ``"ferplus:test[0:32]"``) and store each
    method's result, with the faces, target and settings it was measured with, in
    :func:`quality_path` (results of other methods already there are kept). Returns the new
    ``{method: result}``; each result has ``passed`` (both checks), ``randomisation`` and
    ``faithfulness``."""
    report = sanity_report(model, faces, methods, target=target, params=params, depth=depth, steps=steps,
                           seed=seed, baseline=baseline)
    measured = {"created": utc_now(), "faces": {"n": int(faces.shape[0]), "source": source},
                "target": target if isinstance(target, (str, int)) else "per face", "seed": seed}
    results = {method: {**entry, **measured} for method, entry in report.items()}
    path = quality_path(config_or_cache_dir, model.fingerprint)
    stored = _read(path) if path.is_file() else {"methods": {}}
    stored.update({"model": model.fingerprint, "architecture": model.architecture, "input_size": model.input_size,
                   "updated": utc_now()})
    stored["methods"].update(results)
    write_json_atomic(path, stored)
    return results


def load_quality(config_or_cache_dir: Config | Path | str, model_fingerprint: str) -> dict[str, dict[str, Any]]:
    """``{method: result}`` stored by :func:`record_quality` for the model with
    ``model_fingerprint``; empty when none was stored (run ``record_quality`` first)."""
    path = quality_path(config_or_cache_dir, model_fingerprint)
    if not path.is_file():
        return {}
    return _read(path)["methods"]


def _read(path: Path) -> dict[str, Any]:
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"unreadable saliency-quality file {path}: {error}; delete it and record it again") from None
    if not isinstance(stored, dict) or not isinstance(stored.get("methods"), dict):
        raise DataError(f"saliency-quality file {path} has no 'methods' table; delete it and record it again")
    return stored
