"""RQ4: how real and synthetic faces differ inside the model: 2-D projections of the
penultimate features (stored by ``fer-core embed``), where each domain's faces go wrong, and
the domain-gap measures with their controls (stored by ``fer-core gap``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from fer_core.backends import InferenceOptions
from fer_core.domain_gap import MIN_CLASS_FACES, per_class_gap
from fer_core.errors import MissingResultsError
from fer_core.models import FerModel
from fer_core.precompute import Embeddings, embed_datasets, gap_report_folders
from fer_core.report.base import Section
from fer_core.report.context import ReportContext, register_question
from fer_core.report.figures import interval_bars, scatter_figure
from fer_core.sampling import base_label
from fer_core.views import stored_gap_report


def misclassifications(table: pd.DataFrame) -> pd.DataFrame:
    """Per domain and true class (labelled faces of an :class:`~fer_core.precompute.Embeddings`
    table): faces, accuracy, and the most frequent wrong prediction with its share of the class."""
    rows = []
    labelled = table[table["label"] >= 0]
    for (domain, emotion), faces in labelled.groupby(["domain", "emotion"], sort=True):
        wrong = faces.loc[faces["pred"] != faces["label"], "pred_emotion"]
        top = wrong.value_counts()
        rows.append({"domain": domain, "emotion": emotion, "faces": len(faces),
                     "accuracy": float((faces["pred"] == faces["label"]).mean()),
                     "most often called": top.index[0] if len(top) else "",
                     "share": float(top.iloc[0] / len(faces)) if len(top) else 0.0})
    return pd.DataFrame(rows)


def export_embeddings(section: Section, embeddings: Embeddings, model: FerModel, detector: str) -> None:
    """A scatter of each stored projection (by domain and by emotion) and the table of where
    each domain's faces go wrong."""
    table = embeddings.table
    counts = ", ".join(f"{name}: {n}" for name, n in embeddings.summary()["datasets"].items())
    protocol = (f"Penultimate features ({embeddings.features.shape[1]}-d) of {len(table)} faces ({counts}), projected "
                f"together (seed 0); faces as the model saw them ({detector}); predictions over the model's classes; "
                f"model {model.architecture} at {model.input_size} px, fingerprint {model.fingerprint}.")
    for projection in embeddings.projections:
        name = projection.upper()
        section.figure(scatter_figure(table, f"{projection}_x", f"{projection}_y", (f"{name} 1", f"{name} 2"),
                                      title=f"{name} of the penultimate features"),
                       f"embedding-{projection}", f"{name} of real and synthetic faces' features", protocol)
    section.table(misclassifications(table), "misclassifications",
                  "Where each domain's faces go: accuracy and the most frequent wrong class", protocol)


def export_class_gap(section: Section, embeddings: Embeddings) -> None:
    """The gap within each emotion both domains hold, on the embedded faces' features
    (:func:`fer_core.domain_gap.per_class_gap`); nothing when they share no labelled emotion."""
    table = embeddings.table
    labels = table["label"].to_numpy()
    real, synthetic = (((table["domain"] == domain) & (table["label"] >= 0)).to_numpy()
                       for domain in ("real", "synthetic"))
    rows = per_class_gap(embeddings.features[real], labels[real], embeddings.features[synthetic], labels[synthetic])
    if rows:
        section.table(pd.DataFrame(rows), "gap-per-class", "Domain gap within each emotion",
                      f"On the embedded faces ({int(real.sum())} real, {int(synthetic.sum())} synthetic, labelled): per "
                      f"emotion both domains hold with at least {MIN_CLASS_FACES} faces a side, the domain classifier's "
                      "cross-validated balanced accuracy (chance 0.5) and RBF MMD² with its permutation p-value (200 "
                      "permutations, seed 0), Holm-adjusted over the emotions; smaller classes are listed, not measured.")


def gap_table(report: Mapping[str, Any]) -> pd.DataFrame:
    """A stored domain-gap report's measures, each beside its control or null."""
    classifier, mmd, kid, nearest = report["domain_classifier"], report["mmd_rbf"], report["kid"], report["nearest_real"]
    rows = [("domain classifier, balanced accuracy", classifier["balanced_accuracy"],
             f"chance 0.5 ({classifier['folds']}-fold cross-validated logistic regression)"),
            ("proxy A-distance", classifier["proxy_a_distance"], "0: indistinguishable, 2: separable"),
            ("MMD² (RBF, median heuristic)", mmd["mmd2"], f"permutation p = {mmd['p_value']:.4g}"),
            ("KID", kid["mean"], f"sd {kid['std']:.4g} over random subsets; 0: one distribution"),
            ("nearest real face, median cosine distance", nearest["median_cosine_distance"],
             f"mean {nearest['mean_cosine_distance']:.4f}"),
            ("distinct real nearest neighbours", nearest["distinct_real_neighbours"],
             f"of {report.get('n_synthetic', '?')} synthetic faces")]
    return pd.DataFrame(rows, columns=["measure", "value", "control"])


def export_gap(section: Section, report: Mapping[str, Any]) -> None:
    """A stored domain-gap report: its measures (table), the real-synthetic distance of each
    class's centroid (figure, table) and, when stored, the gap within each class."""
    command = (report.get("provenance") or {}).get("command") or {}
    made_by = " ".join(command.get("argv", [])) or command.get("call") or "not recorded"
    name = Path(report.get("path", "gap report")).name
    section.source(name, made_by)
    protocol = (f"Gap report {name}: penultimate features of model {report['model']['architecture']} at "
                f"{report['model']['input_size']} px (fingerprint {report['model']['fingerprint']}); real: "
                f"{report['real']['sampled']} ({report['real']['faces']} faces), synthetic: "
                f"{report['synthetic']['sampled']} ({report['synthetic']['faces']} faces); at most "
                f"{report.get('sample') or 'all'} faces per domain enter the measures (seed {report.get('seed')}).")
    section.table(gap_table(report), "gap", "Domain gap between real and synthetic faces", protocol, digits=4)
    centroids = report.get("centroid_distances") or {}
    if centroids:
        frame = pd.DataFrame([{"emotion": emotion, **values} for emotion, values in centroids.items()])
        section.figure(interval_bars(frame, "emotion", "cosine", ylabel="cosine distance",
                                     title="Real vs synthetic class centroids"),
                       "centroids", "Cosine distance between the real and synthetic centroid of each class", protocol)
        section.table(frame, "centroids", "Distance between the real and synthetic centroid of each class", protocol)


@register_question("rq4", "How do real and synthetic faces differ inside the model?")
def build(context: ReportContext, section: Section) -> None:
    """Stored features and projections of the report's faces, and the stored gap report."""
    model = context.model(section)
    options = context.options
    datasets = {spec: context.dataset(spec, section) for spec in (options.real, options.synthetic)}
    if model is None or any(d is None for d in datasets.values()):
        return
    embed = context.command("embed", *context.model_args(), "--dataset", options.real, "--dataset",
                            options.synthetic, *context.sample_args(), "--projection", ",".join(options.projections))
    cache = context.cache()
    try:
        if cache is None:
            raise MissingResultsError("features (no result cache yet)", 1, 1)
        pipeline = context.face_pipeline(model)
        embeddings = embed_datasets(model, datasets, cache, pipeline, projections=options.projections, compute=False,
                                    options=InferenceOptions(backend=context.config.inference.backend, progress=False))
    except MissingResultsError as exc:
        section.lack(f"features or projections of {', '.join(d.label for d in datasets.values())}: {exc}", embed)
    else:
        section.source(f"features and {', '.join(options.projections)} projection (result cache)", embed)
        detected = [d.label for d in datasets.values() if not d.pre_cropped]
        detector = (f"faces of {', '.join(detected)} found by {pipeline.detector.fingerprint()}"
                    if detected and pipeline is not None and pipeline.detector is not None else "pre-cropped faces")
        export_embeddings(section, embeddings, model, detector)
        export_class_gap(section, embeddings)
    finally:
        if cache is not None:
            cache.close()
    real, synthetic = (base_label(d) for d in datasets.values())
    report = stored_gap_report(gap_report_folders(context.config), model.fingerprint, real, synthetic, options.limit)
    sampled = options.limit is not None or options.per_class is not None
    if report is None or report.get("per_class") != options.per_class \
            or (sampled and report.get("seed") != options.sample_seed):
        section.lack(f"no stored domain-gap report of {real} vs {synthetic} for model {model.fingerprint} with this "
                     "sample", context.command("gap", *context.model_args(), "--real", options.real, "--synthetic",
                                               options.synthetic, *context.sample_args("--seed")))
        return
    export_gap(section, report)
