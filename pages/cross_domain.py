"""Cross-domain: which training data against which test data (the train x test matrix: one row
per model with the faces each cell scored, or an explicit aggregate with its spread), accuracy
by the synthetic share of the training set (RQ2), and per-class and per-intensity accuracy on
synthetic faces (RQ1); two models side by side on every test set both were scored on."""

import pandas as pd
import streamlit as st

from dashboard import charts, downloads, ui
from fer_core.cross_domain import (
    METRICS,
    accuracy_by_fraction,
    cell_notes,
    cross_domain_cells,
    cross_domain_matrix,
    evaluation_records,
    matrix_markdown,
    per_class_accuracy,
)
from fer_core.errors import DataError
from fer_core.runs import Run
from fer_core.views import compare_models, per_intensity_accuracy, scoring_protocol, synthetic_state


#: How the matrix's rows are made: one per model, or an aggregate over the models of a group.
ROW_CHOICES = {None: "one per model", "train_domain": "mean per training domain",
               "train_data": "mean per training data"}


@st.cache_data(show_spinner="Reading the evaluation runs...", ttl=30)
def records(runs_dir: str) -> pd.DataFrame:
    """Every evaluation, with the protocol it was scored under (``scoring``)."""
    table = evaluation_records(runs_dir)
    return table.assign(scoring=[scoring_protocol(Run.load(path)) for path in table["path"]])


st.title("Cross-domain")
config = ui.get_config()
if config is not None:
    runs_dir = config.resolve(config.paths.runs_dir)
    table = records(str(runs_dir)) if runs_dir.is_dir() else pd.DataFrame()
    if table.empty:
        ui.empty_state("No finished evaluation runs yet. Score the model on real and on synthetic faces:",
                       "fer-core evaluate --dataset ferplus:test\nfer-core evaluate --dataset sd_faces")
        st.stop()
    metric = st.radio("Score", METRICS, horizontal=True, key="xd-metric", format_func=lambda m: m.replace("_", " "))

    st.subheader("Trained on x tested on")
    rows = st.radio("Rows", list(ROW_CHOICES), horizontal=True, key="xd-rows", format_func=ROW_CHOICES.get)
    cells = cross_domain_cells(table, metric, aggregate=rows)
    st.plotly_chart(charts.accuracy_matrix(cross_domain_matrix(cells, metric), notes=cell_notes(cells)),
                    key="xd-matrix")
    protocols = sorted(set(table["scoring"]))
    what = ("each row is one model (training domain · run, fingerprint)" if rows is None
            else "each cell is the mean over its models, with their number and standard deviation")
    st.caption(f"{metric.replace('_', ' ').capitalize()}: {what}; each model's newest evaluation of a test set "
               f"counts once; n = faces scored, limited = scored on part of the test set (--limit) ({len(table)} "
               f"evaluation runs, scored with --score-over {', '.join(protocols)}). The same from a shell: "
               f"`fer-core cross-domain{'' if rows is None else ' --aggregate ' + rows}`.")
    with st.expander("The cells as a table"):
        st.markdown(matrix_markdown(cells, metric))
    if len(protocols) > 1:
        st.warning(f"These runs were scored under different protocols ({', '.join(protocols)}): a cell may mix "
                   "figures that are not comparable. Re-evaluate them with one --score-over.")

    st.subheader("Compare two models")
    names = dict(zip(table["model"], table["model_label"]))
    if len(names) < 2:
        ui.empty_state("Only one model has been evaluated: score another on the same test sets to compare them.",
                       "fer-core evaluate --model path/to/other.safetensors --dataset ferplus:test")
    else:
        left, right = st.columns(2)
        first = left.selectbox("First model", list(names), format_func=names.get, key="xd-first")
        second = right.selectbox("Second model", [m for m in names if m != first], format_func=names.get,
                                 key="xd-second")
        try:
            pair = compare_models(table, first, second, metric)
        except DataError as exc:
            st.info(str(exc))
        else:
            pair = pair.rename(columns={"first": names[first], "second": names[second]})
            st.dataframe(pair, hide_index=True, key="xd-pair", column_config={
                names[first]: st.column_config.NumberColumn(format="%.4f"),
                names[second]: st.column_config.NumberColumn(format="%.4f"),
                "difference": st.column_config.NumberColumn(format="%+.4f")})
            st.caption(f"{metric.replace('_', ' ').capitalize()} of each model's newest evaluation of every test set "
                       "both were scored on, second minus first; where the two evaluations hold the same faces, "
                       "McNemar's exact test on per-face correctness (shared: faces in both; p_holm: Holm over the "
                       "test sets). Faces not shared: the scores stand side by side without a paired test.")

    st.subheader("RQ2: accuracy by synthetic share of the training set")
    fractions = accuracy_by_fraction(table, metric)
    if fractions["synthetic_fraction"].nunique() < 2:
        ui.empty_state("Fewer than two synthetic shares evaluated. Train one model per share and score each:",
                       "fer-core sweep --real ferplus:train --synthetic sd_faces:train --val ferplus:valid "
                       "--test ferplus:test --test sd_faces:test --init weights/fer_b0_ferplus.safetensors "
                       "--recipe gradual --seeds 0,1,2 --out runs/sweep")
    if not fractions.empty:
        st.plotly_chart(charts.fraction_lines(fractions, metric), key="xd-fractions")

    st.subheader("RQ1: per-class accuracy on synthetic faces")
    per_class = per_class_accuracy(table, "synthetic")
    if per_class.empty:
        ui.empty_state("No evaluation on synthetic faces yet. Score the model on them:",
                       "fer-core evaluate --dataset sd_faces")
    else:
        evaluations = list(dict.fromkeys(per_class["evaluation"]))
        chosen = st.multiselect("Evaluations", evaluations, default=evaluations[:3], key="xd-evaluations")
        shown = per_class[per_class["evaluation"].isin(chosen)]
        shown = shown.assign(run=shown["evaluation"] + " (" + shown["train_domain"] + ")")
        st.plotly_chart(charts.emotion_bars(shown, "accuracy", group="run"), key="xd-per-class")
        st.dataframe(shown[["evaluation", "train_domain", "test_set", "emotion", "accuracy", "support", "correct"]],
                     hide_index=True, key="xd-per-class-table")

        state = synthetic_state(config.resolve(config.data.root))
        extracted = table[table["test_set"].str.startswith("synthetic", na=False)]
        st.subheader("RQ1: accuracy by prompted intensity")
        if state["manifest"] is None or extracted.empty:
            ui.empty_state("Per-intensity accuracy needs faces extracted from prompted grids (their manifest "
                           "records the intensity) and an evaluation on them:",
                           "fer-core synth extract\nfer-core evaluate --dataset synthetic:test")
        else:
            evaluation = st.selectbox("Evaluation", list(extracted["evaluation"]), key="xd-intensity-run")
            try:
                intensity = per_intensity_accuracy(Run.load(extracted.set_index("evaluation").loc[evaluation, "path"]),
                                                   pd.read_parquet(state["manifest"]))
                overall = intensity[intensity["emotion"] == "all"]
                st.dataframe(overall, hide_index=True, key="xd-intensity")
                st.plotly_chart(charts.emotion_bars(intensity[intensity["emotion"] != "all"], "accuracy",
                                                    group="intensity"), key="xd-intensity-bars")
            except DataError as exc:
                st.info(str(exc))
    downloads.cross_domain(table, metric, rows, per_class)
