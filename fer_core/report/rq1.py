"""RQ1: models trained on real faces, scored on synthetic faces (and, as the control, on real
test faces): headline scores with CIs, per-class recall with CIs, confusion matrices and the
trained-on x tested-on matrix, all read from evaluation runs."""

from __future__ import annotations

import pandas as pd
from scipy import stats

from fer_core.cross_domain import cell_notes, cross_domain_cells, cross_domain_matrix, latest_per_model
from fer_core.evaluation import CI_METRICS
from fer_core.report.base import Section
from fer_core.report.context import ReportContext, evaluation_protocol, register_question, run_command
from fer_core.report.figures import confusion_figure, heatmap_figure, interval_bars
from fer_core.runs import Run
from fer_core.scoring import scoring_summary
from fer_core.views import scoring_protocol

#: Confidence of the per-class recall intervals (Wilson score intervals).
CONFIDENCE = 0.95


def recall_table(per_class: dict, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per-class scores of a ``metrics.json`` with a Wilson score interval on each recall (the
    share of the class's faces called that class): emotion, support, correct, precision,
    recall, recall_ci_low, recall_ci_high, f1."""
    rows = []
    for emotion, scores in per_class.items():
        support = int(scores["support"])
        correct = int(round(scores["recall"] * support))
        low, high = (stats.binomtest(correct, support).proportion_ci(confidence, method="wilson")
                     if support else (float("nan"), float("nan")))
        rows.append({"emotion": emotion, "support": support, "correct": correct, "precision": scores["precision"],
                     "recall": scores["recall"], "recall_ci_low": float(low), "recall_ci_high": float(high),
                     "f1": scores["f1"]})
    return pd.DataFrame(rows)


def export_evaluation(section: Section, run: Run, bars: bool = True) -> None:
    """One evaluation's headline scores (95% bootstrap CIs), per-class table, recall bars (95%
    Wilson CIs; unless ``bars`` is False) and its confusion matrix; ``run`` is recorded as the
    section's source."""
    metrics, protocol = run.metrics, evaluation_protocol(run)
    label = run.info["dataset"].get("label") or run.info["dataset"].get("name")
    section.source(run.id, run_command(run))
    scores = pd.DataFrame([{"metric": name.replace("_", " "), "value": metrics[name],
                            "ci95_low": metrics["ci95"][name][0], "ci95_high": metrics["ci95"][name][1],
                            "n": metrics["n"]} for name in CI_METRICS])
    section.table(scores, f"{run.id}-scores", f"Scores on {label} (95% bootstrap CIs over faces)", protocol)
    classes = recall_table(metrics["per_class"])
    section.table(classes, f"{run.id}-per-class", f"Per-class scores on {label} (recall with 95% Wilson CIs)",
                  protocol)
    if bars:
        section.figure(interval_bars(classes, "emotion", "recall", "recall_ci_low", "recall_ci_high", ylim=(0, 1),
                                     ylabel="recall (95% Wilson CI)", title=f"Per-class recall on {label}"),
                       f"{run.id}-per-class", f"Per-class recall on {label}", protocol)
    section.figure(confusion_figure(metrics["confusion"], f"{label} (n={metrics['n']}), row-normalised"),
                   f"{run.id}-confusion", f"Confusion matrix on {label}", protocol,
                   "Rows: true classes; columns: every class a prediction could be (a class the test set lacks "
                   "shows where its faces went).")


def overview_table(records: pd.DataFrame) -> pd.DataFrame:
    """One row per evaluation: the model, what it was trained on, the test set, faces scored,
    sample, scoring protocol and the three headline scores with the accuracy's 95% CI."""
    return pd.DataFrame({
        "model": records["model_label"], "trained on": records["train_data"], "test set": records["test_set"],
        "test domain": records["test_domain"], "n": records["n"], "sample": records["sampling"].fillna("all"),
        "protocol": [scoring_protocol(Run.load(path)) for path in records["path"]],
        "accuracy": records["accuracy"], "accuracy_ci_low": records["accuracy_ci_low"],
        "accuracy_ci_high": records["accuracy_ci_high"], "balanced accuracy": records["balanced_accuracy"],
        "macro-F1": records["macro_f1"], "evaluation": records["evaluation"]})


def export_matrix(section: Section, records: pd.DataFrame, metric: str, aggregate: str | None, name: str,
                  title: str) -> None:
    """The trained-on x tested-on matrix of ``records`` as a heatmap and its cells as a table."""
    cells = cross_domain_cells(records, metric, aggregate)
    if cells.empty:
        return
    rows = "the mean over each row's models (n_models, std)" if aggregate else "one model per row"
    protocol = (f"{metric.replace('_', ' ')} of each model's newest evaluation of each test set; {rows}; n = faces "
                f"scored; limited = a sample of the test set; scoring protocols: "
                f"{', '.join(sorted({scoring_protocol(Run.load(p)) for p in records['path']}))}.")
    section.figure(heatmap_figure(cross_domain_matrix(cells, metric), cell_notes(cells), label=metric.replace("_", " ")),
                   name, title, protocol)
    section.table(cells.drop(columns=["model"], errors="ignore"), name, f"{title}: the cells", protocol)


@register_question("rq1", "How do models trained on real faces perform on synthetic faces?")
def build(context: ReportContext, section: Section) -> None:
    """Every model trained on real faces that was scored on synthetic faces, with its scores on
    real test faces beside them (the control)."""
    records = latest_per_model(context.records)
    evaluate = context.command("evaluate", *context.model_args(), "--dataset", context.options.synthetic)
    if records.empty:
        section.lack("no finished evaluation run", evaluate)
        return
    real_trained = records[records["train_domain"] == "real"]
    tested = set(real_trained.loc[real_trained["test_domain"] == "synthetic", "model"])
    if not tested:
        section.lack("no evaluation of a model trained on real faces on synthetic faces", evaluate)
        return
    chosen = real_trained[real_trained["model"].isin(tested)]
    if not (chosen["test_domain"] == "real").any():
        section.lack("no evaluation of these models on real test faces (the control)",
                     context.command("evaluate", *context.model_args(), "--dataset", context.options.real))
    unknown = records[records["train_domain"] == "unknown"]
    if len(unknown):
        section.note(f"{len(unknown)} evaluation(s) of models whose training data is not recorded are left out: "
                     + ", ".join(unknown["evaluation"]))
    protocols = {scoring_summary(Run.load(path).info.get("scoring")) for path in chosen["path"]}
    section.table(overview_table(chosen), "overview", "Models trained on real faces, on synthetic and real test faces",
                  f"One row per model and test set (each model's newest evaluation); accuracy with its 95% bootstrap "
                  f"CI; {'; '.join(sorted(protocols))}.")
    for model, evaluations in chosen.groupby("model", sort=False):
        runs = [Run.load(path) for path in evaluations["path"]]
        recalls = pd.concat([recall_table(run.metrics["per_class"]).assign(**{"test set": test})
                             for run, test in zip(runs, evaluations["test_set"])], ignore_index=True)
        label = evaluations["model_label"].iloc[0]
        section.figure(interval_bars(recalls, "emotion", "recall", "recall_ci_low", "recall_ci_high", group="test set",
                                     ylim=(0, 1), ylabel="recall (95% Wilson CI)",
                                     title=f"{label}: per-class recall, real vs synthetic test faces"),
                       f"recall-{model}", f"{label}: per-class recall on real and synthetic test faces",
                       " ".join(evaluation_protocol(run) for run in runs))
        for run in runs:
            export_evaluation(section, run, bars=False)  # the figure above holds its recall bars
    export_matrix(section, chosen, context.options.metric, None, "transfer-matrix",
                  "Trained on real faces x tested on real and synthetic faces")
