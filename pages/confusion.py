"""Confusion: an interactive confusion matrix; a cell's faces with probabilities and saliency,
each opening its drill-down."""

import numpy as np
import streamlit as st

from dashboard import charts, compute, downloads, drilldown, ui
from fer_core.data import available_datasets
from fer_core.explain import method_names
from fer_core.views import confusion_cell, dataset_spec, preferred_index, scoring_note, spec_domain

PAGE = "confusion"


def neighbour_pool(spec: str) -> tuple[str, ...]:
    """The run's dataset and an installed dataset of the other domain, where a face's
    neighbours are looked for."""
    installed = available_datasets(config.resolve(config.data.root))
    others = [s for s in installed if spec_domain(s) != spec_domain(spec)]
    if not others:
        return (spec,)
    other = others[preferred_index(others)]
    return (spec, other) if spec_domain(spec) == "real" else (other, spec)

st.title("Confusion")
config = ui.get_config()
runs = ui.finished_evaluations(config)
if runs:
    labels = {r.id: f"{r.id}  ({r.info['dataset'].get('label', r.info['dataset']['name'])})" for r in runs}
    chosen = st.selectbox("Run", list(labels), format_func=labels.get)
    run = next(r for r in runs if r.id == chosen)
    confusion = run.metrics["confusion"]
    emotions = list(confusion["labels"])  # the true classes (rows)
    predictions = list(confusion.get("predicted", emotions))  # every class a prediction could be (columns)
    counts = np.asarray(confusion["counts"])
    scoring, warnings = scoring_note(run)
    st.caption(f"Rows: the true classes; columns: the classes a prediction could be, {scoring}.")
    for warning in warnings:
        st.warning(warning)
    normalized = st.toggle("Row-normalized", value=False)
    off_diagonal = np.where(np.equal.outer(emotions, predictions), 0, counts)
    worst = np.unravel_index(off_diagonal.argmax(), counts.shape)  # the most frequent confusion
    if st.session_state.get("cell-run") != run.id:  # another run: start from its most frequent confusion
        st.session_state["cell-run"] = run.id
        st.session_state["cell-true"], st.session_state["cell-predicted"] = emotions[worst[0]], predictions[worst[1]]
    event = st.plotly_chart(charts.confusion_heatmap(confusion, normalized), key=f"confusion-heatmap-{run.id}",
                            on_select="rerun", selection_mode="points")
    points = (event or {}).get("selection", {}).get("points", []) if event else []
    click = (points[0].get("y"), points[0].get("x")) if points else None
    if click and click[0] in emotions and click[1] in predictions and click != st.session_state.get("cell-click"):
        st.session_state["cell-click"] = click  # a new click picks the cell; the boxes below stay free to change
        st.session_state["cell-true"], st.session_state["cell-predicted"] = click
    st.caption("Click a cell, or pick it here:")
    left, middle, right = st.columns(3)
    true = left.selectbox("True class", emotions, key="cell-true")
    predicted = middle.selectbox("Predicted class", predictions, key="cell-predicted")
    method = right.selectbox("Saliency method", method_names(), index=method_names().index("gradcam"),
                              key="cell-method")
    cell = confusion_cell(run, true, predicted)
    st.subheader(f"{len(cell)} face(s): true {true}, predicted {predicted}")
    if cell.empty:
        st.info("No face falls in this cell.")
    else:
        shown = st.slider("Faces shown", 1, min(48, len(cell)), min(8, len(cell)))
        model, source = compute.run_model(config, run)
        crop_size = model.input_size if model else run.info["model"]["input_size"]
        keys = tuple(cell["key"].head(shown))
        spec = dataset_spec(run)
        faces = compute.faces_for_keys(config, spec, keys, crop_size)
        heat = compute.overlays(model, faces, method, "predicted") if model else []
        st.caption((f"Attribution maps of the predicted class with {source}." if model else source)
                   + " Details: every method, the photo and the face's nearest faces.")
        columns = st.columns(4)
        pool = neighbour_pool(spec)
        for number, (key, face) in enumerate(zip(keys, faces)):
            row = cell.iloc[number]
            column = columns[number % 4]
            column.image([face] + ([heat[number]] if heat else []), width=110)
            column.caption(f"{key}: p({predicted}) {row['p_predicted']:.2f}, p({true}) {row['p_true']:.2f}")
            drilldown.details_button(column, PAGE, spec, key, pool, f"drill-cell-{number}")
        st.dataframe(cell.drop(columns=["source"]).head(shown), hide_index=True, key="cell-table")
        drilldown.show(config, model, PAGE)
    downloads.evaluation(run, cell.drop(columns=["source"]), f"{true}-as-{predicted}")
