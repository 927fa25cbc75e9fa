"""Embeddings: real and synthetic faces in the model's feature space (UMAP / t-SNE / PCA), the
faces behind a selection, and the domain-gap measures."""

import shlex

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import charts, compute, jobs, ui
from fer_core.data import available_datasets
from fer_core.domain_gap import PROJECTIONS
from fer_core.errors import FerCoreError
from fer_core.precompute import gap_report_folders
from fer_core.views import model_files, spec_domain, stored_gap_report


def selected_rows(event: object, figure: go.Figure) -> list[int]:
    """Row positions of the points picked in the scatter (click, box or lasso): each point's
    ``customdata``, else looked up by its trace and index."""
    points = (event or {}).get("selection", {}).get("points", []) if event else []
    rows = []
    for point in points:
        value = point.get("customdata")
        if isinstance(value, list):
            value = value[0] if value else None
        if value is None and point.get("curve_number") is not None and point.get("point_index") is not None:
            value = figure.data[int(point["curve_number"])].customdata[int(point["point_index"])]
        if value is not None:
            rows.append(int(value))
    return list(dict.fromkeys(rows))


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
    model = ui.load_model_file(config, models[row[0].selectbox("Model", list(models), key="emb-model")])
    real = row[1].selectbox("Real faces", real_specs, key="emb-real",
                            index=real_specs.index("fer2013:test") if "fer2013:test" in real_specs else 0)
    synthetic = row[2].selectbox("Synthetic faces", synthetic_specs, key="emb-synthetic")
    row = st.columns(3)
    projections = sorted(PROJECTIONS, key=lambda name: (name != "pca", name))  # PCA first: instant on any size
    projection = row[0].radio("Projection", projections, horizontal=True, key="emb-projection")
    color_by = row[1].radio("Colour by", ["domain", "emotion", "correctness"], horizontal=True, key="emb-color")
    limit = int(row[2].number_input("Faces per dataset, a stratified sample (seed 0; 0: all)", min_value=0, value=1000,
                                    step=500, key="emb-limit"))

    try:
        found = compute.embeddings(model, model.fingerprint, config, (real, synthetic), projection, limit or None)
    except FerCoreError as exc:
        st.error(f"Cannot embed these faces: {exc}")
        st.stop()
    table = found.table
    points = pd.DataFrame({"x": table[f"{projection}_x"], "y": table[f"{projection}_y"], "domain": table["domain"],
                           "emotion": table["emotion"].replace("", "unknown"), "key": table["key"],
                           "correct": table["pred"] == table["label"]})
    counts = " + ".join(f"{n} {name}" for name, n in found.summary()["datasets"].items())
    st.caption(f"{len(table)} faces ({counts}); {found.computed} embedded now, the rest from "
               f"the cache; {projection.upper()} {'computed now' if found.projections_computed else 'from the cache'}."
               " Click a point or draw a lasso to see the faces.")
    figure = charts.embedding_scatter(points, color_by)
    event = st.plotly_chart(figure, key="embedding-scatter", on_select="rerun",
                            selection_mode=("points", "box", "lasso"))
    rows = selected_rows(event, figure)
    if rows:
        chosen = table.iloc[rows]
        st.subheader(f"{len(chosen)} selected face(s)")
        for spec in (real, synthetic):
            part = chosen[chosen["domain"] == spec_domain(spec)].head(24)  # one real and one synthetic dataset
            if part.empty:
                continue
            faces = compute.faces_for_keys(config, spec, tuple(part["key"]), model.input_size)
            grid = st.columns(8)
            for number, (face, item) in enumerate(zip(faces, part.itertuples())):
                grid[number % 8].image(face, width=80, caption=f"{item.emotion or '?'} -> {item.pred_emotion} "
                                                               f"{item.confidence:.0%}")
        st.dataframe(chosen[["dataset", "key", "emotion", "pred_emotion", "confidence"]], hide_index=True,
                     key="selected-faces")

    st.subheader("Domain gap")
    limit_args = ["--limit", str(limit)] if limit else []
    model_args = ["--model", str(models[st.session_state["emb-model"]])]
    stored = stored_gap_report(gap_report_folders(config), model.fingerprint, real, synthetic,
                               limit or None)
    flag = f"gap::{model.fingerprint}::{real}::{synthetic}::{limit}"
    if stored is None and st.button("Measure the domain gap on these faces", key="gap-button"):
        st.session_state[flag] = True
    report = stored or (compute.gap(model, model.fingerprint, config, real, synthetic, limit or None)
                        if st.session_state.get(flag) else None)
    if report is not None:
        a, b, c, d = st.columns(4)
        classifier = report["domain_classifier"]
        a.metric("Domain classifier (balanced acc.)", f"{classifier['balanced_accuracy']:.1%}",
                 help="cross-validated logistic regression telling real from synthetic; 50% = indistinguishable")
        b.metric("Proxy A-distance", f"{classifier['proxy_a_distance']:.2f}")
        c.metric("KID", f"{report['kid']['mean']:.4f} ± {report['kid']['std']:.4f}")
        d.metric("MMD² (RBF)", f"{report['mmd_rbf']['mmd2']:.4f}", f"p = {report['mmd_rbf']['p_value']:.3g}",
                 delta_color="off")
        centroids = report.get("centroid_distances", {})
        if centroids:
            distances = {emotion: round(values["cosine"], 4) for emotion, values in centroids.items()}
            st.plotly_chart(charts.count_bars(distances, "cosine distance between the real and synthetic class "
                                                         "centroids", by_emotion=True), key="centroids")
        nearest = report.get("nearest_real", {})
        st.caption(f"On {report['real']['faces']} real and {report['synthetic']['faces']} synthetic faces (at most "
                   f"{report['sample']} per domain enter the kernels); nearest real face of each synthetic one: median "
                   f"cosine distance {nearest.get('median_cosine_distance', float('nan')):.3f}, "
                   f"{nearest.get('distinct_real_neighbours', '?')} distinct real neighbours. "
                   f"{'Stored report: ' + report['path'] if report.get('path') else ''}")
    else:
        st.info("The gap measures (domain classifier, KID, MMD with its permutation p-value, centroid distances) "
                "take a few seconds: press the button, or precompute them:")
        st.code(shlex.join(jobs.cli_command(["gap", *model_args, "--real", real, "--synthetic", synthetic,
                                             *limit_args], ui.config_file())), language="bash")
    st.caption("Precompute the embeddings and projections into the cache:")
    st.code(shlex.join(jobs.cli_command(["embed", *model_args, "--dataset", real, "--dataset", synthetic,
                                         *limit_args, "--projection", ",".join(projections)], ui.config_file())),
            language="bash")
