"""Each page's download of what it shows, as thesis-ready files: one zip of its tables (CSV +
LaTeX booktabs) and figures (PNG + PDF + SVG) with a report.md that prints the protocol beside
each, made by the functions behind ``fer-core report`` (:mod:`fer_core.report`) only when the
button is pressed (off the page's script thread: nothing here touches Streamlit state)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Mapping

import pandas as pd
import streamlit as st

from dashboard import compute, ui
from fer_core.config import Config
from fer_core.errors import FerCoreError
from fer_core.models import FerModel
from fer_core.precompute import Embeddings
from fer_core.report import ReportOptions, Section, build_report, export_zip
from fer_core.report.base import slug
from fer_core.report.rq1 import export_evaluation, export_matrix
from fer_core.report.rq2 import export_fractions
from fer_core.report.rq3 import DomainMaps, export_saliency
from fer_core.report.rq4 import export_class_gap, export_embeddings, export_gap
from fer_core.runs import Run

FORMATS = "tables as CSV + LaTeX, figures as PNG + PDF + SVG, with report.md"


def _guarded(fill: Callable[[Section], object]) -> Callable[[Section], object]:
    """``fill``, with an error written into the download's report.md instead of an empty file."""
    def run(section: Section) -> None:
        try:
            fill(section)
        except FerCoreError as exc:
            section.note(f"could not export: {exc}")
    return run


def offer(what: str, page: str, name: str, fill: Callable[[Section], object], key: str) -> None:
    """A button that downloads ``<name>.zip``: the section ``fill`` writes, its files named
    ``<page>-...`` (built on click)."""
    st.download_button(f"Download {what} ({FORMATS})", data=lambda: export_zip(page, what, _guarded(fill)),
                       file_name=f"{slug(name)}.zip", mime="application/zip", key=key, on_click="ignore",
                       icon=":material/download:")


def evaluation(run: Run, cell: pd.DataFrame | None = None, cell_name: str = "") -> None:
    """Baseline metrics and Confusion: the run's scores with CIs, per-class table and bars, the
    confusion matrix, and the confusion cell shown (``cell``, when given)."""
    def fill(section: Section) -> None:
        export_evaluation(section, run)
        if cell is not None:
            section.table(cell, f"cell-{cell_name}", f"Faces of the confusion cell {cell_name}",
                          f"Evaluation {run.id}; most confident first.")
    offer(f"the figures and tables of {run.id}", "evaluation", f"evaluation-{run.id}", fill, key=f"download-{run.id}")


def cross_domain(records: pd.DataFrame, metric: str, aggregate: str | None, per_class: pd.DataFrame) -> None:
    """Cross-domain: the trained-on x tested-on matrix as shown, the score by synthetic share and
    the per-class accuracy on synthetic faces."""
    def fill(section: Section) -> None:
        export_matrix(section, records, metric, aggregate, "cross-domain", "Trained on x tested on")
        export_fractions(section, records, metric)
        if not per_class.empty:
            section.table(per_class, "per-class-synthetic", "Per-class accuracy on synthetic faces",
                          "Each evaluation's share of a class's faces called that class (from its predictions).")
    offer("the cross-domain figures and tables", "cross-domain", f"cross-domain-{metric}", fill,
          key="download-cross-domain")


def saliency(config: Config, sets: Mapping[str, tuple], model: FerModel, method: str, target: str,
             layer: str | None) -> None:
    """Saliency browser: the mean maps on aligned faces and the region statistics of the faces
    shown (``sets``: ``{domain: (dataset spec, maps, ...)}``); no button until both domains have maps."""
    if set(sets) != {"real", "synthetic"} or not all(len(values[1].maps) for values in sets.values()):
        return
    maps = {domain: DomainMaps(spec, found, compute.dataset(config, spec).pre_cropped)
            for domain, (spec, found, *_) in sets.items()}
    detector = ui.get_face_pipeline(config, model.input_size).detector
    found_by = f"faces found by {detector.fingerprint()} unless pre-cropped" if detector else "faces whole"
    offer("the saliency figures and region tables", "saliency",
          "-".join(["saliency", method, *(spec for spec, *_ in sets.values())]),
          lambda section: export_saliency(section, maps, model, method, target, {"layer": layer} if layer else {},
                                          found_by, n_permutations=1999),
          key="download-saliency")


def embeddings(config: Config, found: Embeddings, model: FerModel, gap: Mapping | None) -> None:
    """Embeddings: the projection shown, where each domain's faces go wrong, the gap within each
    class, and the domain-gap measures (``gap``, when measured)."""
    detector = ui.get_face_pipeline(config, model.input_size).detector
    found_by = f"faces found by {detector.fingerprint()} unless pre-cropped" if detector else "faces whole"

    def fill(section: Section) -> None:
        export_embeddings(section, found, model, found_by)
        export_class_gap(section, found)
        if gap is not None:
            export_gap(section, gap)
    offer("the embedding figures and gap tables", "embeddings", f"embeddings-{model.fingerprint}", fill,
          key="download-embeddings")


def tables(what: str, name: str, frames: Mapping[str, pd.DataFrame], protocol: str) -> None:
    """Runs and Synthetic data: the tables a page shows (``{title: table}``, empty ones left out;
    no button when every one is)."""
    shown = {title: frame for title, frame in frames.items() if frame is not None and not frame.empty}
    if not shown:
        return

    def fill(section: Section) -> None:
        for title, frame in shown.items():
            section.table(frame, title, title, protocol)
    offer(what, slug(name), name, fill, key=f"download-{slug(name)}")


def whole_report(config: Config) -> None:
    """Home: every research question, as ``fer-core report all`` writes it (read from the runs
    and the result cache; what is missing is listed in its report.md)."""
    def build() -> bytes:
        with tempfile.TemporaryDirectory(prefix="fer-core-report-") as folder:
            return build_report(config, ["all"], Path(folder) / "report", ReportOptions(),
                                "fer-core report all (from the dashboard)").zip_bytes()
    st.download_button(f"Download the report of every research question ({FORMATS})", data=build,
                       file_name="report-all.zip", mime="application/zip", key="download-report",
                       on_click="ignore", icon=":material/download:",
                       help="the same as `fer-core report all --out runs/report-<name>`: read from the runs and the "
                            "result cache (nothing is computed); what is missing is listed in its report.md with the "
                            "command that makes it")
