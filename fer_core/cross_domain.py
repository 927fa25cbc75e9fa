"""Accuracy across domains, read from run directories: which data a model was trained on
(real, synthetic or a mix) against which data it was scored on.

Every complete evaluation run (``fer-core evaluate``, ``sweep``, ``crossval``) records its model
and test set; its model is traced back to the training run that made it (the weights file's
own folder, or the run named in the weights' provenance) for the training data and synthetic
fraction. :func:`evaluation_records` gathers one row per evaluation; the tables the dashboard
plots are built from it: the cross-domain matrix (RQ2/RQ4), accuracy by synthetic fraction
(RQ2) and per-class accuracy on each test set (RQ1).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fer_core.errors import ConfigError, DataError
from fer_core.labels import EMOTIONS
from fer_core.runs import RUN_FILE, Run, list_runs

#: What :func:`cross_domain_matrix` can put on its axes.
AXES = ("train_domain", "train_data", "train_run", "model", "test_set", "test_domain")
#: The scores of an evaluation a table can show.
METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
_COLUMNS = ["evaluation", "created", "model", "architecture", "train_run", "train_data", "train_domain",
            "synthetic_fraction", "test_set", "test_domain", "n", *METRICS, "accuracy_ci_low", "accuracy_ci_high",
            "path"]


def _runs_below(folders: Iterable[Path | str]) -> list[Run]:
    """Runs directly in each folder and one level further down (sweeps and cross-validations
    write their runs into their own folder, often inside ``runs/``)."""
    found: dict[Path, Run] = {}
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise DataError(f"runs folder not found: {folder}")
        for run in list_runs(folder):
            found[run.path.resolve()] = run
        for child in folder.iterdir():
            if child.is_dir() and not (child / RUN_FILE).is_file():
                for run in list_runs(child):
                    found[run.path.resolve()] = run
    return list(found.values())


def _training_run(evaluation: Run, training: dict[str, Run]) -> Run | None:
    """The training run that made the evaluated model: the weights file's folder when it is
    one, else the run named in the weights' provenance (looked up by folder name)."""
    model = evaluation.info.get("model", {})
    path = model.get("path")
    if path:
        folder = Path(path).parent
        if (folder / RUN_FILE).is_file():
            try:
                run = Run.load(folder)
            except DataError:
                run = None
            if run is not None and run.kind == "training":
                return run
    name = (model.get("provenance") or {}).get("run")
    return training.get(name) if name else None


def _synthetic_fraction(run: Run | None) -> float:
    """The training data's synthetic share: the sweep's setting, else its domain counts, else
    0 or 1 for single-domain data; NaN when unknown."""
    if run is None:
        return float("nan")
    if "synthetic_fraction" in run.info:
        return float(run.info["synthetic_fraction"])
    composition = run.info.get("composition")
    if composition:
        total = sum(composition.values())
        return composition.get("synthetic", 0) / total if total else float("nan")
    domain = run.info.get("data", {}).get("train", {}).get("domain")
    return {"real": 0.0, "synthetic": 1.0}.get(domain, float("nan"))


def train_domain(fraction: float) -> str:
    """``real``, ``synthetic``, ``mixed (25% synthetic)`` or ``unknown`` for a synthetic share."""
    if not np.isfinite(fraction):
        return "unknown"
    if fraction == 0:
        return "real"
    if fraction == 1:
        return "synthetic"
    return f"mixed ({fraction:.0%} synthetic)"


def evaluation_records(runs_dirs: Path | str | Iterable[Path | str]) -> pd.DataFrame:
    """One row per complete evaluation run under ``runs_dirs`` (and their sub-folders): the
    model (fingerprint, architecture, training run, training data and domain, synthetic
    fraction), the test set and its domain, ``n`` and the scores with the accuracy's 95% CI.
    Newest first; unfinished runs are left out."""
    folders = [runs_dirs] if isinstance(runs_dirs, (str, Path)) else list(runs_dirs)
    runs = _runs_below(folders)
    training = {run.id: run for run in runs if run.kind == "training"}
    rows: list[dict[str, Any]] = []
    for run in runs:
        if run.kind != "evaluation" or not run.complete:
            continue
        try:
            metrics = run.metrics
        except (DataError, json.JSONDecodeError):
            continue
        model = run.info.get("model", {})
        dataset = run.info.get("dataset", {})
        trained = _training_run(run, training)
        fraction = _synthetic_fraction(trained)
        train_data = (trained.info.get("data", {}).get("train", {}).get("name") if trained is not None else None) \
            or (model.get("provenance") or {}).get("train_data") or "unknown"
        if trained is not None and trained.info.get("experiment") == "sweep":
            train_data = "+".join(filter(None, (trained.info.get("real_train"), trained.info.get("synthetic_train"))))
        low, high = metrics.get("ci95", {}).get("accuracy", (np.nan, np.nan))
        rows.append({
            "evaluation": run.id, "created": run.info.get("created", ""), "model": model.get("fingerprint"),
            "architecture": model.get("architecture"), "train_run": trained.id if trained is not None else None,
            "train_data": train_data, "train_domain": train_domain(fraction), "synthetic_fraction": fraction,
            "test_set": dataset.get("label") or dataset.get("name"), "test_domain": dataset.get("domain", "unknown"),
            "n": metrics.get("n"), **{m: metrics.get(m, np.nan) for m in METRICS},
            "accuracy_ci_low": low, "accuracy_ci_high": high, "path": str(run.path)})
    table = pd.DataFrame(rows, columns=_COLUMNS)
    return table.sort_values("created", ascending=False, kind="stable").reset_index(drop=True)


def _check(value: str, allowed: tuple[str, ...], name: str) -> str:
    if value not in allowed:
        raise ConfigError(f"{name}: expected one of {list(allowed)}, got {value!r}")
    return value


def latest_per_model(records: pd.DataFrame) -> pd.DataFrame:
    """The newest evaluation of each (model, test set): a re-run replaces, never double-counts."""
    return records.drop_duplicates(subset=["model", "test_set"], keep="first")


def cross_domain_matrix(records: pd.DataFrame, metric: str = "accuracy", rows: str = "train_domain",
                        columns: str = "test_set") -> pd.DataFrame:
    """``metric`` with ``rows`` (e.g. training domain) down and ``columns`` (e.g. test set)
    across: the mean over the models in a cell, each model's newest evaluation counted once.
    Cells without an evaluation are NaN."""
    _check(metric, METRICS, "metric")
    _check(rows, AXES, "rows")
    _check(columns, AXES, "columns")
    if records.empty:
        return pd.DataFrame()
    latest = latest_per_model(records)
    return latest.pivot_table(index=rows, columns=columns, values=metric, aggfunc="mean")


def accuracy_by_fraction(records: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """RQ2: ``metric`` of each model with a known synthetic fraction on each test set, with
    the accuracy's CI, sorted by test set and fraction (one line per test set to plot)."""
    _check(metric, METRICS, "metric")
    known = latest_per_model(records)
    known = known[np.isfinite(known["synthetic_fraction"].astype(float))]
    columns = ["synthetic_fraction", "test_set", "test_domain", metric, "accuracy_ci_low", "accuracy_ci_high", "n",
               "model", "train_run", "evaluation"]
    return known[list(dict.fromkeys(columns))].sort_values(["test_set", "synthetic_fraction"]).reset_index(drop=True)


def per_class_accuracy(records: pd.DataFrame, test_domain: str | None = "synthetic") -> pd.DataFrame:
    """RQ1: each class's accuracy (recall: the share of its faces called that class) on the
    test sets of ``test_domain`` (None: every test set), recomputed from each evaluation's
    predictions (runs without ``predictions.parquet`` are left out): ``evaluation``, ``model``,
    ``train_domain``, ``synthetic_fraction``, ``test_set``, ``emotion``, ``accuracy``, ``support``,
    ``correct``."""
    chosen = latest_per_model(records)
    if test_domain is not None:
        chosen = chosen[chosen["test_domain"] == test_domain]
    frames = []
    for record in chosen.itertuples(index=False):
        run = Run.load(record.path)
        emotions = run.metrics.get("emotions") or run.info.get("dataset", {}).get("emotions", [])
        try:
            table = run.predictions
        except DataError:   # a run without its predictions table cannot be broken down by class
            continue
        table = table[(table["label"] >= 0) & table["error"].isna()]
        for emotion in emotions:
            faces = table[table["label"] == EMOTIONS.index(emotion)]
            correct = int((faces["pred"] == faces["label"]).sum())
            frames.append({"evaluation": record.evaluation, "model": record.model,
                           "train_domain": record.train_domain, "synthetic_fraction": record.synthetic_fraction,
                           "test_set": record.test_set, "emotion": emotion,
                           "accuracy": correct / len(faces) if len(faces) else np.nan,
                           "support": len(faces), "correct": correct})
    return pd.DataFrame(frames, columns=["evaluation", "model", "train_domain", "synthetic_fraction", "test_set",
                                         "emotion", "accuracy", "support", "correct"])
