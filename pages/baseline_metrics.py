"""Baseline metrics: an evaluation run's metrics with CIs, per-class scores and confusion."""

import pandas as pd
import streamlit as st

from dashboard import charts, downloads, ui
from fer_core.errors import DataError
from fer_core.views import comparable_runs, per_class_deltas, scoring_note
from fer_core.workflows import compare_runs

st.title("Baseline metrics")
config = ui.get_config()
runs = ui.finished_evaluations(config)
if runs:
    labels = {r.id: f"{r.id}  ({r.info['dataset'].get('label', r.info['dataset']['name'])}, "
                     f"{r.info['model']['architecture']})" for r in runs}
    chosen = st.selectbox("Run", list(labels), format_func=labels.get)
    run = next(r for r in runs if r.id == chosen)
    m = run.metrics
    scoring, warnings = scoring_note(run)
    st.caption(f"{m['n']} faces of {run.info['dataset'].get('label', run.info['dataset']['name'])} "
               f"({run.info['dataset']['domain']}), true classes: {', '.join(m['emotions'])}; {scoring}")
    for warning in warnings:
        st.warning(warning)
    table = pd.DataFrame([
        {"metric": name.replace("_", " "), "value": m[name], "95% CI low": m["ci95"][name][0],
         "95% CI high": m["ci95"][name][1]}
        for name in ("accuracy", "balanced_accuracy", "macro_f1")])
    st.dataframe(table.style.format(precision=4), hide_index=True)
    groups = ", ".join(f"{g} {r:.1%}" for g, r in m["valence"]["per_group_recall"].items())
    st.write(f"Valence-group accuracy: **{m['valence']['accuracy']:.2%}** (recall per group: {groups})")
    st.subheader("Per class")
    st.plotly_chart(charts.per_class_bars(m["per_class"]), key="per-class")
    per_class = pd.DataFrame(m["per_class"]).T.astype({"support": int})
    st.dataframe(per_class.style.format({"precision": "{:.3f}", "recall": "{:.3f}", "f1": "{:.3f}"}),
                 key="per-class-table")
    st.subheader("Confusion matrix")
    normalized = st.toggle("Row-normalized", value=True)
    st.plotly_chart(charts.confusion_heatmap(m["confusion"], normalized), key="confusion")
    downloads.evaluation(run)

    st.subheader("Compare with another run")
    others = comparable_runs(run, runs)
    if not others:
        label = run.info["dataset"].get("label")
        ui.empty_state(f"No other run on the same faces ({label}). Evaluate another model on them:",
                       f"fer-core evaluate --model path/to/other.safetensors --dataset {label}")
    else:
        second = st.selectbox("Second run", [r.id for r in others], format_func=labels.get)
        other = next(r for r in others if r.id == second)
        try:
            result = compare_runs(run, other)
            deltas = per_class_deltas(run, other)
        except DataError as exc:
            st.info(f"These runs cannot be compared: {exc}")
            st.stop()
        test = result["mcnemar"]
        a, b, c = st.columns(3)
        a.metric("Accuracy (first)", f"{test['accuracy_a']:.2%}")
        b.metric("Accuracy (second)", f"{test['accuracy_b']:.2%}", f"{test['accuracy_b'] - test['accuracy_a']:+.2%}")
        c.metric("McNemar p", f"{test['p_value']:.4g}")
        st.write(f"McNemar's exact test on {test['n']} shared faces: p = {test['p_value']:.4g} "
                 f"({test['a_only_correct']} faces only the first got right, {test['b_only_correct']} only the second)")
        st.plotly_chart(charts.delta_bars(deltas), key="per-class-deltas")
        st.dataframe(deltas.style.format({c: "{:+.3f}" if c.endswith("delta") else "{:.3f}"
                                          for c in deltas.columns if c not in ("emotion", "support")}),
                     hide_index=True, key="delta-table")
