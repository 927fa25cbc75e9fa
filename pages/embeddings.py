"""Embeddings: real and synthetic faces in the model's feature space (UMAP / t-SNE / PCA) with
each face shown on hover, the faces behind a selection (a click opens one face's drill-down), a
second model beside the first, and the domain-gap measures: overall, on class-matched faces and
within each emotion."""

import shlex

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import charts, compute, downloads, drilldown, jobs, ui
from fer_core.config import Config
from fer_core.data import available_datasets
from fer_core.domain_gap import PROJECTIONS
from fer_core.errors import FerCoreError
from fer_core.models import FerModel
from fer_core.precompute import Embeddings, gap_report_folders
from fer_core.views import model_files, preferred_index, spec_domain, stored_gap_report

PAGE = "embeddings"
#: Most points whose faces ride along in the chart for the hover preview (~1.2 kB each).
HOVER_LIMIT = 3000


def selected_rows(event: object, figure: go.Figure) -> list[int]:
    """Row positions of the points picked in the scatter (click, box or lasso): each point's
    ``customdata`` (its first value), else looked up by its trace and index."""
    points = (event or {}).get("selection", {}).get("points", []) if event else []
    rows = []
    for point in points:
        value = point.get("customdata")
        if value is None and point.get("curve_number") is not None and point.get("point_index") is not None:
            value = figure.data[int(point["curve_number"])].customdata[int(point["point_index"])]
        if isinstance(value, (list, tuple)):
            value = value[0] if len(value) else None
        if value is not None:
            rows.append(int(value))
    return list(dict.fromkeys(rows))


def scatter(config: Config, found: Embeddings, projection: str, color_by: str, hover: bool, key: str,
            title: str = "") -> list[int]:
    """The projection's scatter (faces on hover when ``hover``); the rows selected in it."""
    table = found.table
    points = pd.DataFrame({"x": table[f"{projection}_x"], "y": table[f"{projection}_y"], "domain": table["domain"],
                           "emotion": table["emotion"].replace("", "unknown"), "key": table["key"],
                           "correct": table["pred"] == table["label"]})
    thumbnails = None
    if hover:
        specs = table["dataset"].str.split("[", n=1).str[0]
        uris = pd.Series("", index=table.index)
        for spec in dict.fromkeys(specs):
            rows = specs == spec
            uris[rows] = compute.thumbnails(config, spec, tuple(table.loc[rows, "key"]))
        thumbnails = uris.tolist()
    figure = charts.embedding_scatter(points, color_by, title, thumbnails)
    event = st.plotly_chart(figure, key=key, on_select="rerun", selection_mode=("points", "box", "lasso"))
    return selected_rows(event, figure)


def gap_rows(report: dict, column: str) -> dict[str, str]:
    """One column of the gap table: each measure of ``report`` written out in full."""
    classifier, kid, mmd = report["domain_classifier"], report["kid"], report["mmd_rbf"]
    return {"faces (real + synthetic)": f"{report['n_real']} + {report['n_synthetic']}",
            "domain classifier, balanced accuracy": f"{classifier['balanced_accuracy']:.1%}",
            "proxy A-distance": f"{classifier['proxy_a_distance']:.3f}",
            "KID (mean ± sd over subsets)": f"{kid['mean']:.3g} ± {kid['std']:.2g}",
            "MMD² (RBF kernel)": f"{mmd['mmd2']:.5f}",
            "MMD permutation p-value": f"{mmd['p_value']:.3g}"} | {"_column": column}


#: What each gap measure is read against (its null or control).
GAP_CONTROLS = {"faces (real + synthetic)": "",
                "domain classifier, balanced accuracy": "chance: 50% (5-fold CV logistic regression)",
                "proxy A-distance": "0: indistinguishable, 2: separable",
                "KID (mean ± sd over subsets)": "0: the same distribution",
                "MMD² (RBF kernel)": "0: the same distribution (median-heuristic bandwidth)",
                "MMD permutation p-value": "null: domain labels shuffled, 200 permutations"}


def gap_report_of(model: FerModel, measure: bool) -> dict | None:
    """The stored ``fer-core gap`` report of ``model`` on these faces, else (when ``measure``)
    one measured now, else None."""
    stored = stored_gap_report(gap_report_folders(config), model.fingerprint, real, synthetic, limit or None)
    if stored is not None or not measure:
        return stored
    return compute.gap(model, model.fingerprint, config, real, synthetic, limit or None)


st.title("Embeddings")
config = ui.get_config()
models = {} if config is None else model_files(config)
if config is not None and not models:
    ui.get_model(config)
if models:
    specs = available_datasets(config.resolve(config.data.root))
    real_specs = [s for s in specs if spec_domain(s) == "real"]
    synthetic_specs = [s for s in specs if spec_domain(s) == "synthetic"]
    if not real_specs or not synthetic_specs:
        ui.empty_state("The embeddings compare real and synthetic faces: install a dataset of each.",
                       "fer-core data install ../shared/data/fer2013.zip\n"
                       "fer-core data install ../shared/data/synthetic_sd_faces.zip")
        st.stop()
    row = st.columns(3)
    model_label = row[0].selectbox("Model", list(models), key="emb-model")
    model = ui.load_model_file(config, models[model_label])
    real = row[1].selectbox("Real faces", real_specs, key="emb-real", index=preferred_index(real_specs))
    synthetic = row[2].selectbox("Synthetic faces", synthetic_specs, key="emb-synthetic")
    row = st.columns(3)
    projections = sorted(PROJECTIONS, key=lambda name: (name != "pca", name))  # PCA first: instant on any size
    projection = row[0].radio("Projection", projections, horizontal=True, key="emb-projection")
    color_by = row[1].radio("Colour by", ["domain", "emotion", "correctness"], horizontal=True, key="emb-color")
    limit = int(row[2].number_input("Faces per dataset, a stratified sample (seed 0; 0: all)", min_value=0, value=1000,
                                    step=500, key="emb-limit"))
    row = st.columns(3)
    second_label = row[0].selectbox("Compare with model", [None, *(m for m in models if m != model_label)],
                                    key="emb-second", format_func=lambda m: "none" if m is None else m)
    hover = row[1].toggle("Faces on hover", value=True, key="emb-hover",
                          help=f"each point carries a small picture of its face (up to {HOVER_LIMIT} points)")
    matched = row[2].toggle("Class-matched comparison", value=False, key="emb-matched",
                            help="also measure the gap on as many faces of each emotion in both domains (the "
                                 "classes both hold): a gap that is not the class mix's")

    explainers = {"": model}
    if second_label:
        explainers[second_label] = ui.load_model_file(config, models[second_label])
    found = {}
    for name, explainer in explainers.items():
        try:
            found[name] = compute.embeddings(explainer, explainer.fingerprint, config, (real, synthetic), projection,
                                             limit or None)
        except FerCoreError as exc:
            st.error(f"Cannot embed these faces{' with ' + name if name else ''}: {exc}")
            st.stop()
    first = found[""]
    table = first.table
    counts = " + ".join(f"{n} {name}" for name, n in first.summary()["datasets"].items())
    hover = hover and len(table) <= HOVER_LIMIT
    st.caption(f"{len(table)} faces ({counts}); when this view was first loaded, {first.computed} were embedded and "
               f"the rest read from the cache, and {projection.upper()} was "
               f"{'computed' if first.projections_computed else 'read from the cache'}. "
               + ("Hover a point to see its face; click it" if hover else "Click a point") +
               " to open its detail, or pick the lasso in the chart's toolbar to see many faces.")
    columns = st.columns(len(found)) if second_label else [st.container()]
    picked = {}
    for column, (name, result) in zip(columns, found.items()):
        with column:
            picked[name] = scatter(config, result, projection, color_by, hover,
                                   "embedding-scatter" + ("-second" if name else ""),
                                   title=f"{name or model_label}" if second_label else "")
    if hover:
        st.html(charts.HOVER_FACES_SCRIPT, unsafe_allow_javascript=True)

    rows = picked[""] or picked.get(second_label or "", [])
    previous, st.session_state["emb-picked"] = st.session_state.get("emb-picked"), rows
    if rows:
        chosen = table.iloc[rows]
        if len(rows) == 1 and previous != rows:  # a click on one point opens its face
            item = chosen.iloc[0]
            drilldown.open_face(PAGE, real if item["domain"] == "real" else synthetic, item["key"], (real, synthetic))
        st.subheader(f"{len(chosen)} selected face(s)")
        for spec in (real, synthetic):
            part = chosen[chosen["domain"] == spec_domain(spec)].head(24)  # one real and one synthetic dataset
            if part.empty:
                continue
            faces = compute.faces_for_keys(config, spec, tuple(part["key"]), model.input_size)
            grid = st.columns(8)
            for number, (face, item) in enumerate(zip(faces, part.itertuples())):
                cell = grid[number % 8]
                cell.image(face, width=80,
                           caption=f"{item.emotion or '?'} -> {item.pred_emotion} {item.confidence:.0%}")
                drilldown.details_button(cell, PAGE, spec, item.key, (real, synthetic), f"drill-emb-{spec}-{number}")
        st.dataframe(chosen[["dataset", "key", "emotion", "pred_emotion", "confidence"]], hide_index=True,
                     key="selected-faces")
    drilldown.show(config, model, PAGE)

    st.subheader("Domain gap")
    limit_args = ["--limit", str(limit)] if limit else []
    model_args = ["--model", str(models[model_label])]
    flag = f"gap::{model.fingerprint}::{real}::{synthetic}::{limit}"
    reports = {name: gap_report_of(explainer, bool(st.session_state.get(flag)))
               for name, explainer in explainers.items()}
    if reports[""] is None and st.button("Measure the domain gap on these faces", key="gap-button"):
        st.session_state[flag] = True
        reports = {name: gap_report_of(explainer, True) for name, explainer in explainers.items()}
    report = reports[""]
    if report is not None:
        a, b, c, d = st.columns(4)
        a.metric("Domain classifier (balanced acc.)", f"{report['domain_classifier']['balanced_accuracy']:.1%}",
                 help="cross-validated logistic regression telling real from synthetic; 50% = indistinguishable")
        b.metric("KID", f"{report['kid']['mean']:.4f}",
                 help=f"mean ± sd over 100 subsets: {report['kid']['mean']:.5f} ± {report['kid']['std']:.5f}")
        c.metric("MMD² (RBF)", f"{report['mmd_rbf']['mmd2']:.4f}")
        d.metric("MMD permutation p", f"{report['mmd_rbf']['p_value']:.3g}",
                 help="share of 200 shuffles of the domain labels with an MMD² as large (the null)")
        columns = [gap_rows(report, f"{model_label}: all faces")]
        if matched:
            columns.append(gap_rows(compute.matched_gap(first, model.fingerprint, (real, synthetic), limit or None),
                                    f"{model_label}: class-matched"))
        for name, other in reports.items():
            if name and other is not None:
                columns.append(gap_rows(other, f"{name}: all faces"))
                if matched:
                    columns.append(gap_rows(compute.matched_gap(found[name], explainers[name].fingerprint,
                                                                (real, synthetic), limit or None),
                                            f"{name}: class-matched"))
        gaps = pd.DataFrame({column.pop("_column"): column for column in columns})
        st.dataframe(gaps.assign(**{"read against": [GAP_CONTROLS[m] for m in gaps.index]}), key="gap-table")
        nearest = report.get("nearest_real", {})
        st.caption(f"On {report['real']['faces']} real and {report['synthetic']['faces']} synthetic faces (at most "
                   f"{report['sample']} per domain enter the kernels); nearest real face of each synthetic one: median "
                   f"cosine distance {nearest.get('median_cosine_distance', float('nan')):.3f}, "
                   f"{nearest.get('distinct_real_neighbours', '?')} distinct real neighbours. "
                   + ("Class-matched: for every emotion both domains hold, as many faces of it from each (seeded draw "
                      "from the larger), so the class mix cannot make the gap. " if matched else "")
                   + (f"Stored report: {report['path']}" if report.get("path") else ""))

        st.markdown("**Within each emotion** (every class both domains hold, on the faces plotted above)")
        per_class = compute.class_gap(first, model.fingerprint, (real, synthetic), limit or None)
        if per_class.empty:
            st.info("The real and synthetic faces share no labelled emotion.")
        else:
            distances = dict(zip(per_class["emotion"], per_class["centroid_cosine"].round(4)))
            st.plotly_chart(charts.count_bars(distances, "cosine distance between the real and synthetic class "
                                                         "centroids", by_emotion=True), key="centroids")
            st.dataframe(per_class, hide_index=True, key="class-gap", column_config={
                "classifier_balanced_accuracy": st.column_config.NumberColumn(format="%.3f"),
                "centroid_cosine": st.column_config.NumberColumn(format="%.4f"),
                "mmd2": st.column_config.NumberColumn(format="%.5f")})
            st.caption("Per emotion: the domain classifier's balanced accuracy (chance 0.5) and MMD² with its "
                       "permutation p-value (200 shuffles), Holm-adjusted over the emotions (p_holm); classes with "
                       "fewer than 5 faces on a side are listed, not measured.")
    else:
        st.info("The gap measures (domain classifier, KID, MMD with its permutation p-value, centroid distances) "
                "take a few seconds: press the button, or precompute them:")
        st.code(shlex.join(jobs.cli_command(["gap", *model_args, "--real", real, "--synthetic", synthetic,
                                             *limit_args], ui.config_file())), language="bash")
    st.caption("Precompute the embeddings and projections into the cache:")
    st.code(shlex.join(jobs.cli_command(["embed", *model_args, "--dataset", real, "--dataset", synthetic,
                                         *limit_args, "--projection", ",".join(projections)], ui.config_file())),
            language="bash")
    downloads.embeddings(config, first, model, report)
