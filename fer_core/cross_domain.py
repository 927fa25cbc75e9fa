"""Accuracy across domains, read from run directories: which data a model was trained on
(real, synthetic or a mix) against which data it was scored on.

Every complete evaluation run (``fer-core evaluate``, ``sweep``, ``crossval``) records its model
and test set; its model is traced back to the training run that made it (the weights file's
own folder, or the run named in the weights' provenance) for the training data and synthetic
fraction, else to the training data its weights' provenance names (``ferplus:train ...``,
``mix(ferplus+sd_faces, synthetic=0.25)``). :func:`evaluation_records` gathers one row per
evaluation; the tables the dashboard plots are built from it: the cross-domain cells and
matrix (RQ2/RQ4: one row per model, or an explicit aggregate with its spread), accuracy by
synthetic fraction (RQ2) and per-class accuracy on each test set (RQ1).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fer_core.errors import DataError, InvalidArgument
from fer_core.labels import EMOTIONS
from fer_core.runs import (RUN_FILE, Run, list_runs, provenance_record, trained_by, trained_on, utc_now,
                           write_json_atomic)
from fer_core.scoring import score, scored_rows
from fer_core.validation import StrOptions, validate_params

#: The domain of each registered dataset, by name (a folder given as a dataset is ``unknown``).
DATASET_DOMAINS = {"fer2013": "real", "ferplus": "real", "affectnet": "real", "synthetic": "synthetic",
                   "sd_faces": "synthetic"}
#: What :func:`cross_domain_cells` can aggregate the models of a row over.
ROW_GROUPS = ("train_domain", "train_data")
#: The scores of an evaluation a table can show.
METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
_COLUMNS = ["evaluation", "created", "model", "model_label", "architecture", "train_run", "train_data",
            "train_domain", "synthetic_fraction", "test_set", "test_domain", "n", "dataset_size", "sampling", "limited",
            "data_sha256", *METRICS, "accuracy_ci_low", "accuracy_ci_high", "path"]
#: A mixed training set's label, as :func:`fer_core.training.experiments.mixed_training_set` names it.
_MIX_LABEL = re.compile(r"^mix\(.*synthetic=([0-9.eE+-]+)\)")


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


def label_fraction(train_data: str | None) -> float:
    """The synthetic share a training-data label stands for: a mix's ``synthetic=F``, 0 or 1 for
    a registered real or synthetic dataset (``ferplus:train (FER+ votes ...)`` -> 0), the one share of
    labels joined by `` + `` when they agree, else NaN."""
    if not train_data:
        return float("nan")
    if " + " in train_data:  # a weight average's sources' data (runs.trained_on): one share if they agree
        shares = {label_fraction(part) for part in train_data.split(" + ")}
        return shares.pop() if len(shares) == 1 else float("nan")
    mix = _MIX_LABEL.match(train_data.strip())
    if mix:
        return float(mix[1])
    name = re.split(r"[\s(:]", train_data.strip(), maxsplit=1)[0]
    return {"real": 0.0, "synthetic": 1.0}.get(DATASET_DOMAINS.get(name, "unknown"), float("nan"))


def is_limited(dataset: dict[str, Any]) -> bool:
    """Whether an evaluation scored only part of its test set (``--limit``, ``--per-class``): its
    ``faces`` against the whole set's ``size``; older runs recorded the first ``limit`` faces."""
    size, limit = dataset.get("size"), dataset.get("limit")
    if dataset.get("faces") is not None and size is not None:
        return dataset["faces"] < size
    return limit is not None and (size is None or limit < size)


def _model_label(model: dict[str, Any], trained: Run | None) -> str:
    """``<training run (a weight average's: RUN+RUN) or weights name> (<fingerprint's first 8 digits>)``: one
    per model."""
    path = model.get("path")
    name = (trained.id if trained is not None else None) or trained_by(model.get("provenance") or {}) \
        or (Path(path).stem if path else None) or model.get("architecture") or "model"
    return f"{name} ({str(model.get('fingerprint'))[:8]})"


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
    model (fingerprint, a label naming its run, architecture, training run, training data and
    domain, synthetic fraction), the test set (a sample's is the set it was drawn from) and its
    domain, ``n`` (faces scored), the test set's ``dataset_size``, the ``sampling`` that drew
    the faces (``stratified 500, seed 0``; None for all) and whether that ``limited`` them to
    part of the test set, the data fingerprint and the scores with the accuracy's 95% CI.
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
        provenance_data = trained_on(model.get("provenance") or {})
        fraction = _synthetic_fraction(trained)
        if not np.isfinite(fraction):
            fraction = label_fraction(provenance_data)
        train_data = (trained.info.get("data", {}).get("train", {}).get("name") if trained is not None else None) \
            or provenance_data or "unknown"
        if trained is not None and trained.info.get("experiment") == "sweep":
            train_data = "+".join(filter(None, (trained.info.get("real_train"), trained.info.get("synthetic_train"))))
        low, high = metrics.get("ci95", {}).get("accuracy", (np.nan, np.nan))
        label, size, limit = dataset.get("label") or dataset.get("name"), dataset.get("size"), dataset.get("limit")
        sampling = dataset.get("sampling") or {}
        rows.append({
            "evaluation": run.id, "created": run.info.get("created", ""), "model": model.get("fingerprint"),
            "model_label": _model_label(model, trained), "architecture": model.get("architecture"),
            "train_run": trained.id if trained is not None else None,
            "train_data": train_data, "train_domain": train_domain(fraction), "synthetic_fraction": fraction,
            "test_set": label.split("[", 1)[0] if sampling else label,   # a sample's cell is its test set's
            "test_domain": dataset.get("domain", "unknown"), "n": metrics.get("n"), "dataset_size": size,
            "sampling": sampling.get("description") or (f"first {limit}" if limit is not None else None),
            "limited": is_limited(dataset),
            "data_sha256": ((run.info.get("provenance") or {}).get("data", {}).get("test") or {}).get("sha256"),
            **{m: metrics.get(m, np.nan) for m in METRICS},
            "accuracy_ci_low": low, "accuracy_ci_high": high, "path": str(run.path)})
    table = pd.DataFrame(rows, columns=_COLUMNS)
    return table.sort_values("created", ascending=False, kind="stable").reset_index(drop=True)


def latest_per_model(records: pd.DataFrame) -> pd.DataFrame:
    """The newest evaluation of each (model, test set): a re-run replaces, never double-counts."""
    return records.drop_duplicates(subset=["model", "test_set"], keep="first")


_MODEL_CELL = ["row", "model", "model_label", "train_run", "train_data", "train_domain", "synthetic_fraction",
               "test_set", "test_domain", "n", "dataset_size", "sampling", "limited", "data_sha256", "evaluation"]
_AGGREGATE_CELL = ["row", "test_set", "test_domain", "n_models", "std", "min", "max", "n", "limited", "models",
                   "evaluation"]


@validate_params({"metric": [StrOptions(METRICS)], "aggregate": [StrOptions(ROW_GROUPS), None]})
def cross_domain_cells(records: pd.DataFrame, metric: str = "accuracy", aggregate: str | None = None) -> pd.DataFrame:
    """The train x test cells, one per row and test set, each model's newest evaluation of a
    test set counted once.

    Without ``aggregate`` a row is a model (``row``: ``<training domain> · <model label>``), and
    a cell is its ``metric`` with ``n`` (faces scored), the test set's size, its ``sampling`` and
    whether that ``limited`` it to part of the test set. With ``aggregate`` (one of :data:`ROW_GROUPS`) a row is that
    group and a cell says over how many models (``n_models``, ``models``) its ``metric`` is the
    mean, with their ``std`` (NaN for one model), ``min`` and ``max``, the faces scored in all
    (``n``), whether any evaluation was ``limited`` and the evaluations (comma-separated)."""
    if records.empty:
        return pd.DataFrame(columns=[*(_MODEL_CELL if aggregate is None else _AGGREGATE_CELL), metric])
    latest = latest_per_model(records)
    if aggregate is None:
        named = latest.drop_duplicates("model").set_index("model")   # one row name per model, from its newest run
        cells = latest.assign(row=latest["model"].map(named["train_domain"] + " · " + named["model_label"]))
        return cells[[*_MODEL_CELL, metric]].sort_values(["row", "test_set"]).reset_index(drop=True)
    grouped = latest.groupby([aggregate, "test_set"], sort=True)
    cells = grouped.agg(test_domain=("test_domain", "first"), n_models=("model", "nunique"),
                        **{metric: (metric, "mean")}, std=(metric, "std"), min=(metric, "min"), max=(metric, "max"),
                        n=("n", "sum"), limited=("limited", "any"),
                        models=("model_label", lambda labels: ", ".join(sorted(labels))),
                        evaluation=("evaluation", lambda runs: ", ".join(sorted(runs))))
    return cells.reset_index().rename(columns={aggregate: "row"})[[*_AGGREGATE_CELL, metric]]


def cross_domain_matrix(cells: pd.DataFrame, value: str = "accuracy") -> pd.DataFrame:
    """``value`` of :func:`cross_domain_cells` with its rows down and the test sets across (NaN
    where a row has no evaluation of a test set); never averages: a cell is one model's score,
    or one aggregate the cells table spells out."""
    if cells.empty:
        return pd.DataFrame()
    return cells.pivot(index="row", columns="test_set", values=value)


def cell_notes(cells: pd.DataFrame) -> pd.DataFrame:
    """What stands beside each cell's score (laid out like :func:`cross_domain_matrix`): the
    faces scored, ``limited`` for a limited evaluation, and for an aggregate the number of
    models with their standard deviation."""
    if cells.empty:
        return pd.DataFrame()
    notes = [f"n={n:,}" + (" limited" if limited else "") for n, limited in zip(cells["n"], cells["limited"])]
    if "n_models" in cells:
        notes = [f"{count} model{'s' if count > 1 else ''}" + (f", sd {std:.3f}" if np.isfinite(std) else "")
                 + f", {note}" for count, std, note in zip(cells["n_models"], cells["std"], notes)]
    return cells.assign(note=notes).pivot(index="row", columns="test_set", values="note")


def matrix_markdown(cells: pd.DataFrame, metric: str = "accuracy") -> str:
    """The cross-domain matrix as a markdown table, each cell ``0.765 (n=3,375)`` with
    :func:`cell_notes`, rows as :func:`cross_domain_cells` made them."""
    values, notes = cross_domain_matrix(cells, metric), cell_notes(cells)
    if values.empty:
        return "(no finished evaluation runs)\n"
    aggregated = "n_models" in cells
    head = "trained on" if aggregated else "trained on · model (fingerprint)"
    lines = [f"| {head} | " + " | ".join(map(str, values.columns)) + " |",
             "| --- |" + " --- |" * len(values.columns)]
    for row in values.index:
        shown = ["" if pd.isna(values.loc[row, c]) else f"{values.loc[row, c]:.3f} ({notes.loc[row, c]})"
                 for c in values.columns]
        lines.append(f"| {row} | " + " | ".join(shown) + " |")
    what = ("mean over the models of each row and test set" if aggregated
            else "one model per row, its newest evaluation of each test set")
    return "\n".join([*lines, "", f"{metric.replace('_', ' ')}: {what}; n = faces scored; limited = scored on "
                                   "a sample of the test set (`--limit`, `--per-class`)."]) + "\n"


def export_cross_domain(cells: pd.DataFrame, metric: str, out: Path | str, project: Path | str,
                        sources: Iterable[Path | str], aggregate: str | None = None) -> dict[str, Path]:
    """Write the cells as ``out`` (CSV), the matrix as ``out`` with ``.md``, and beside them a
    ``.json`` record (what was exported from which runs, with :func:`~fer_core.runs.provenance_record`
    of ``project``); returns the three paths."""
    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise InvalidArgument(f"cross-domain export: expected a .csv file to write, got {out}")
    paths = {"csv": out, "markdown": out.with_suffix(".md"), "record": out.with_suffix(".json")}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    cells.to_csv(tmp, index=False)
    tmp.replace(out)
    paths["markdown"].write_text(matrix_markdown(cells, metric), encoding="utf-8")
    write_json_atomic(paths["record"], {
        "kind": "export", "what": "cross-domain matrix", "created": utc_now(), "metric": metric,
        "aggregate": aggregate, "sources": [str(Path(s)) for s in sources],
        "evaluations": sorted({run for runs in cells["evaluation"] for run in str(runs).split(", ")}),
        "files": {k: str(v) for k, v in paths.items()},
        "provenance": provenance_record(project)})
    return paths


@validate_params({"metric": [StrOptions(METRICS)]})
def accuracy_by_fraction(records: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """RQ2: ``metric`` of each model with a known synthetic fraction on each test set, with
    the accuracy's CI, sorted by test set and fraction (one line per test set to plot)."""
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
        table = scored_rows(table)
        scores = score(table["label"].to_numpy(), table["pred"].to_numpy(), [EMOTIONS.index(e) for e in emotions])
        for emotion, recall, support in zip(emotions, scores.recall, scores.support):
            frames.append({"evaluation": record.evaluation, "model": record.model,
                           "train_domain": record.train_domain, "synthetic_fraction": record.synthetic_fraction,
                           "test_set": record.test_set, "emotion": emotion,
                           "accuracy": float(recall) if support else np.nan,
                           "support": int(support), "correct": int(round(recall * support))})
    return pd.DataFrame(frames, columns=["evaluation", "model", "train_domain", "synthetic_fraction", "test_set",
                                         "emotion", "accuracy", "support", "correct"])
