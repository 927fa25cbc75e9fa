"""RQ2: training with synthetic faces (a growing share, or a growing number added to the real
set), scored on real (and synthetic) test faces: accuracy by level with error bars and the
sweep's tests across levels with their between-seed control, from ``fer-core sweep``
summaries (one seed: each run's bootstrap CI over faces; several: the mean over seeds with its
t interval) or, without a sweep, from evaluations of models whose training mix is recorded;
and the trained-on x tested-on matrix of every model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fer_core.cross_domain import accuracy_by_fraction, latest_per_model
from fer_core.weights import SHIPPED_WEIGHTS
from fer_core.report.base import Section
from fer_core.report.context import ReportContext, register_question
from fer_core.report.figures import level_figure
from fer_core.report.rq1 import export_matrix
from fer_core.training.experiments import SUMMARY

#: A sweep on the shared data, fine-tuning the model (``--init``, the plan's gradual unfreezing), three seeds.
SWEEP_ARGS = ("--real", "ferplus:train", "--synthetic", "sd_faces:train", "--val", "ferplus:valid", "--test",
              "ferplus:test", "--test", "sd_faces:test", "--recipe", "gradual", "--seeds", "0,1,2", "--out",
              "runs/sweep")


def sweep_summaries(folders: list[Path]) -> dict[Path, dict[str, Any]]:
    """Every ``fer-core sweep`` summary (``summary.json`` of experiment ``sweep``) in ``folders``
    and up to two levels below, by its folder."""
    found = {}
    for folder in folders:
        for file in sorted({*folder.glob(f"{SUMMARY}.json"), *folder.glob(f"*/{SUMMARY}.json"),
                            *folder.glob(f"*/*/{SUMMARY}.json")}):
            try:
                summary = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(summary, dict) and summary.get("experiment") == "sweep" and summary.get("rows"):
                found[file.parent] = summary
    return found


def level_table(summary: dict[str, Any]) -> tuple[pd.DataFrame, str, str]:
    """A sweep's scores per test set and level (the synthetic ``fraction``, or the synthetic
    faces added), the level's column and what the error bars are: with several seeds the mean
    over seeds and its 95% t interval (the sweep's ``by_level``); with one seed (or a summary
    written before seeds) each run's 95% bootstrap CI over faces."""
    rows = pd.DataFrame(summary["rows"])
    level = summary.get("level", "fraction")
    columns = list(dict.fromkeys(["test_set", level, "fraction", "seeds", "n", "accuracy", "accuracy_sd", "ci_low",
                                  "ci_high", "macro_f1"]))
    if summary.get("by_level") and pd.DataFrame(summary["by_level"])["seeds"].max() > 1:
        table = pd.DataFrame(summary["by_level"]).rename(columns={
            "accuracy_mean": "accuracy", "accuracy_ci_low": "ci_low", "accuracy_ci_high": "ci_high",
            "macro_f1_mean": "macro_f1"})
        return table[columns], level, "seeds (95% t interval of the mean over seeds)"
    table = rows.assign(seeds=1, accuracy_sd=np.nan).rename(columns={"accuracy_ci_low": "ci_low",
                                                                     "accuracy_ci_high": "ci_high"})
    return (table[[*columns, "evaluation"]].sort_values(["test_set", level]).reset_index(drop=True), level,
            "faces (each run's 95% bootstrap CI)")


def statistics_tables(statistics: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """A sweep's tests across levels as tables: Cochran's Q per test set, the pairwise McNemar
    tests with Holm's adjustment, and the between-seed control (empty ones left out)."""
    tables: dict[str, list[dict[str, Any]]] = {"cochran": [], "pairwise": [], "control": []}
    for test_set, result in statistics.items():
        if "cochran_q" not in result:
            continue
        tables["cochran"].append({"test set": test_set, **result["cochran_q"], "faces": result.get("faces"),
                                  "seeds": ", ".join(map(str, result.get("seeds", [])))})
        tables["pairwise"] += [{"test set": test_set, **pair} for pair in result.get("pairwise_mcnemar", [])]
        tables["control"] += [{"test set": test_set, **row} for row in result.get("control_between_seeds", [])]
    return {name: pd.DataFrame(rows) for name, rows in tables.items() if rows}


def export_sweep(section: Section, folder: Path, summary: dict[str, Any]) -> None:
    """A sweep's accuracy by level (figure and table) with its tests across levels and their
    control (tables); its folder and command recorded as the section's source."""
    table, level, interval = level_table(summary)
    command = (summary.get("provenance") or {}).get("command") or {}
    section.source(str(folder), " ".join(command.get("argv", [])) or command.get("call") or "not recorded")
    settings = summary.get("settings") or {}
    init = summary["init"].get("fingerprint") if isinstance(summary.get("init"), dict) else None
    protocol = (f"Sweep {folder.name} ({summary.get('design', 'share')} design): trained on "
                f"{summary.get('real_train')} + {summary.get('synthetic_train')}, "
                f"{'fine-tuned from ' + init if init else 'from scratch'}"
                f"{', recipe ' + summary['recipe'] if summary.get('recipe') else ''}, best epoch chosen on "
                f"{summary.get('val')}; {settings.get('architecture')} at {settings.get('input_size')} px; seeds "
                f"{summary.get('seeds', [settings.get('seed')])}; error bars: {interval}; each test set scored "
                "whole over the model's classes.")
    by = "synthetic share of the training set" if level == "fraction" else "synthetic faces added to the real set"
    section.figure(level_figure(table.rename(columns={"test_set": "test set"}), level, "accuracy", "ci_low", "ci_high",
                                series="test set", percent=level == "fraction", xlabel=by,
                                title=f"Accuracy by {by} ({folder.name})"),
                   f"{folder.name}-by-level", f"Accuracy by {by}", protocol)
    section.table(table, f"{folder.name}-by-level", f"Accuracy by {by}", protocol)
    statistics = summary.get("statistics") or {}
    test = next((result["protocol"] for result in statistics.values() if "protocol" in result), "")
    titles = {"cochran": f"Cochran's Q across the levels of {level}, per test set",
              "pairwise": f"Pairwise McNemar tests between levels of {level} (Holm-adjusted)",
              "control": "Control: McNemar between two seeds of the same mix"}
    for name, frame in statistics_tables(statistics).items():
        section.table(frame, f"{folder.name}-{name}", titles[name], f"{protocol} Test: {test}")


def export_fractions(section: Section, records: pd.DataFrame, metric: str = "accuracy") -> bool:
    """The score of every model with a recorded synthetic share against that share (figure and
    table, from its newest evaluation of each test set); False when fewer than two shares are
    evaluated (nothing written)."""
    fractions = accuracy_by_fraction(records, metric) if not records.empty else pd.DataFrame()
    if fractions.empty or fractions["synthetic_fraction"].nunique() < 2:
        return False
    table = fractions.rename(columns={"synthetic_fraction": "fraction", "test_set": "test set"})
    if metric != "accuracy":  # the runs store a CI of the accuracy only
        table = table.assign(accuracy_ci_low=np.nan, accuracy_ci_high=np.nan)
    protocol = (f"{metric.replace('_', ' ')} of each model with a recorded synthetic share (its newest evaluation of "
                "each test set), error bars the accuracy's 95% bootstrap CI over faces; models from separate "
                f"training runs: {', '.join(sorted(set(table['train_run'].dropna())))}.")
    section.figure(level_figure(table, "fraction", metric, "accuracy_ci_low", "accuracy_ci_high", series="test set",
                                percent=True, xlabel="synthetic share of the training set",
                                ylabel=metric.replace("_", " ")),
                   "by-fraction", "Score by synthetic share of the training set", protocol)
    section.table(table, "by-fraction", "Score by synthetic share of the training set", protocol)
    return True


@register_question("rq2", "How does training on synthetic faces change accuracy on real faces?")
def build(context: ReportContext, section: Section) -> None:
    """Sweeps found under the runs folders; without one, evaluations of models with a recorded
    synthetic share; then the matrix of every model (and per training domain when a domain
    has several models)."""
    sweeps = sweep_summaries(context.runs_dirs)
    for folder, summary in sweeps.items():
        export_sweep(section, folder, summary)
    records, metric = context.records, context.options.metric
    if not sweeps and not export_fractions(section, records, metric):
        section.lack("no synthetic-fraction sweep, and fewer than two synthetic shares among the evaluated models",
                     context.command("sweep", "--init", context.options.model or SHIPPED_WEIGHTS, *SWEEP_ARGS))
    if records.empty:
        return
    latest = latest_per_model(records)
    if set(latest["train_domain"]) <= {"real"}:
        section.note("Every evaluated model was trained on real faces only: their matrix is RQ1's.")
        return
    export_matrix(section, records, metric, None, "cross-domain", "Trained on x tested on, one row per model")
    if latest.groupby("train_domain")["model"].nunique().max() > 1:
        export_matrix(section, records, metric, "train_domain", "cross-domain-by-domain",
                      "Trained on x tested on, mean per training domain")
