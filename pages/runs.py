"""Runs: every run with its config and curves; start an evaluation or a precompute job."""

import shlex

import streamlit as st

from dashboard import charts, downloads, jobs, ui
from fer_core.cli import COMMANDS
from fer_core.data import available_datasets
from fer_core.domain_gap import PROJECTIONS
from fer_core.errors import FerCoreError
from fer_core.explain import method_names
from fer_core.runs import NOT_A_REPO, list_runs
from fer_core.scoring import DEFAULT_PROTOCOL, PROTOCOLS
from fer_core.views import model_files, runs_table, scoring_note, spec_domain, training_history

#: Precompute commands offered when the CLI has them.
PRECOMPUTE_COMMANDS = ("embed", "explain", "gap")


def show_provenance(record: dict | None) -> None:
    """How a run was made (its run.json ``provenance``): the command, commit, versions and data."""
    if not record:
        st.caption("This run was written before runs recorded their command, commit and data fingerprint.")
        return
    command = record["command"]
    git = record["git"]
    commit = git["commit"] if git["commit"] == NOT_A_REPO else git["commit"][:12] + (" (dirty)" if git["dirty"] else "")
    data = [f"{role}: {d['label']}, {d['size']:,} faces" + (f" (limit {d['limit']})" if d.get("limit") else "")
            + f", sha256 {d['sha256']}" for role, d in record["data"].items()]
    st.caption(f"Made by `{shlex.join(command['argv']) if command['via'] == 'cli' else command['call']}`  \n"
               f"Commit {commit} · " + ", ".join(f"{name} {version}" for name, version in record["versions"].items())
               + ("  \nData: " + "; ".join(data) if data else ""))

st.title("Runs")
config = ui.get_config()
if config is not None:
    runs = list_runs(config.resolve(config.paths.runs_dir))
    if not runs:
        ui.empty_state("No runs yet. Train a model or evaluate one:",
                       "fer-core evaluate --dataset ferplus:test\n"
                       "fer-core train --train ferplus:train --val ferplus:valid --input-size 64 --epochs 12")
    else:
        table = runs_table(runs)
        st.dataframe(table, hide_index=True, key="runs-table", width="stretch", column_config={
            "accuracy": st.column_config.NumberColumn(format="percent", width="small"),
            "best_val_accuracy": st.column_config.NumberColumn("best val. accuracy", format="percent", width="small"),
            "macro_f1": st.column_config.NumberColumn("macro-F1", format="%.3f", width="small"),
            "n": st.column_config.NumberColumn(format="%d", width="small"),
            "limited": st.column_config.CheckboxColumn("limited", help="scored on a sample of its test set "
                                                                       "(--limit / --per-class): not the whole set"),
            "epochs": st.column_config.NumberColumn(format="%d", width="small")})
        limited = int(table["limited"].fillna(False).astype(bool).sum()) if "limited" in table else 0
        if limited:
            st.warning(f"{limited} evaluation(s) scored only a sample of their test set (limited, see sample): "
                       "their figures are estimates from those faces, not the test set's.")
        chosen = st.selectbox("Run", [r.id for r in runs])
        run = next(r for r in runs if r.id == chosen)
        if run.kind == "training":
            history = training_history(run)
            if history.empty:
                st.info("This training run has not finished an epoch yet.")
            else:
                st.plotly_chart(charts.training_curves(history), key="curves")
        elif run.kind == "evaluation" and run.complete:
            m = run.metrics
            scoring, warnings = scoring_note(run)
            st.write(f"Accuracy **{m['accuracy']:.2%}**, macro-F1 **{m['macro_f1']:.3f}** on {m['n']} faces of "
                     f"{run.info['dataset'].get('label')}, {scoring}.")
            for warning in warnings:
                st.warning(warning)
            ui.page_link("baseline_metrics.py")
        elif not run.complete:
            st.info("This evaluation has not finished (no metrics.json yet); run the same command again to resume it.")
        show_provenance(run.info.get("provenance"))
        with st.expander("Configuration (run.json)"):
            st.json(run.info, expanded=1)

    st.subheader("Start a job")
    datasets = available_datasets(config.resolve(config.data.root))
    models = model_files(config)
    offered = ["evaluate", *(c for c in PRECOMPUTE_COMMANDS if c in COMMANDS)]
    if not datasets or not models:
        ui.empty_state("A job needs a model and a dataset: install the data and train or place weights first.",
                       "fer-core data install ../shared/data/ferplus.zip")
    else:
        kind = st.radio("Job", offered, horizontal=True, key="job-kind")
        left, right = st.columns(2)
        model_label = left.selectbox("Model", list(models), key="job-model")
        limit = right.number_input("A stratified sample of N faces of each dataset (seed 0; 0: all)", min_value=0,
                                   value=0, step=100, key="job-limit")
        args = [kind, "--model", str(models[model_label])]
        if kind == "evaluate":
            args += ["--dataset", left.selectbox("Dataset", datasets, key="job-dataset")]
            name = right.text_input("Run name (blank: generated)", key="job-name").strip()
            args += ["--name", name] if name else []
            score_over = left.radio("Score over", list(PROTOCOLS), horizontal=True, key="job-score-over",
                                    help="; ".join(f"{p.name}: {p.description}" for p in PROTOCOLS.values()))
            args += ["--score-over", score_over] if score_over != DEFAULT_PROTOCOL else []
        elif kind == "embed":
            for spec in left.multiselect("Datasets (projected together)", datasets, default=datasets[:1],
                                         key="job-datasets"):
                args += ["--dataset", spec]
            args += ["--projection", ",".join(right.multiselect("Projections", sorted(PROJECTIONS), default=["pca"],
                                                                key="job-projections"))]
        elif kind == "explain":
            args += ["--dataset", left.selectbox("Dataset", datasets, key="job-dataset"),
                     "--method", right.selectbox("Method", method_names(), key="job-method"),
                     "--target", left.radio("Target", ["predicted", "true"], horizontal=True, key="job-target")]
        else:  # gap
            args += ["--real", left.selectbox("Real faces", [d for d in datasets if spec_domain(d) == "real"],
                                              key="job-real"),
                     "--synthetic", right.selectbox("Synthetic faces",
                                                    [d for d in datasets if spec_domain(d) == "synthetic"],
                                                    key="job-synthetic")]
        if limit:
            args += ["--limit", str(int(limit))]
        command = jobs.cli_command(args, ui.config_file())
        st.caption("The same from a shell:")
        st.code(shlex.join(command), language="bash")
        if st.button("Start in the background", type="primary", key="job-start"):
            try:
                job = jobs.start_job(config, args, ui.config_file())
                st.success(f"Started job {job.id} (pid {job.pid}); it keeps running if you leave this page.")
            except FerCoreError as exc:
                st.error(f"Cannot start the job: {exc}")

    started = jobs.list_jobs(config)
    if started:
        st.subheader("Jobs")

        @st.fragment(run_every=2 if any(j.running for j in started) else None)
        def job_panel() -> None:
            for job in jobs.list_jobs(config)[:10]:
                with st.container(border=True):
                    st.write(f"**{job.id}** — {job.status} — `{shlex.join(job.command)}`")
                    progress = job.progress()
                    if job.running and progress is not None:
                        st.progress(progress)
                    tail = job.log_tail()
                    if tail:
                        st.code(tail, language="text")
        job_panel()
    with st.expander("Every command (fer-core --help)"):
        st.code("\n".join(f"fer-core {name:<10} {help}" for name, (help, _, _) in COMMANDS.items()), language="text")
    st.caption(f"Runs are read from {config.resolve(config.paths.runs_dir)}; jobs log into its .jobs/ folder.")
    downloads.tables("the runs table", "runs", {"Runs": runs_table(runs) if runs else None},
                     f"Every run under {config.resolve(config.paths.runs_dir)}, newest first, with its scoring protocol, "
                     "sample and face detector; scores of finished evaluations.")
