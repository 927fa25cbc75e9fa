"""Synthetic data: the installed synthetic faces (per class, a few of each emotion), import grids,
the detected layout and every cell's verdict, the contact sheet and the credit ledger."""

import shlex
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import charts, compute, downloads, jobs, ui
from fer_core.data import available_datasets
from fer_core.errors import FerCoreError
from fer_core.labels import EMOTIONS
from fer_core.synthetic import (
    GENDERS,
    INTENSITIES,
    MANIFEST_FILE,
    CreditLedger,
    ImportItem,
    PromptSpec,
    accepted_per_grid,
    import_grids,
    revert_imports,
    summarize,
)
from fer_core.synthetic.ledger import revertible
from fer_core.views import grid_cells, grid_image, rejected_cells, spec_domain, synthetic_state

st.title("Synthetic data")
config = ui.get_config()
if config is not None:
    state = synthetic_state(config.resolve(config.data.root))
    ledger = CreditLedger(state["root"] / "ledger.json")

    installed = [spec for spec in available_datasets(config.resolve(config.data.root))
                 if spec_domain(spec) == "synthetic"]
    st.subheader("Installed synthetic faces")
    if not installed:
        ui.empty_state("No synthetic dataset installed. Unpack the shared Stable Diffusion faces:",
                       "fer-core data install ../shared/data/synthetic_sd_faces.zip")
    else:
        st.dataframe(compute.dataset_class_counts(config, tuple(installed)), hide_index=True, key="synthetic-counts")
        left, right = st.columns([3, 1])
        shown = left.selectbox("Dataset", installed, key="synthetic-gallery")
        per_class = int(right.number_input("Faces per emotion", min_value=1, max_value=24, value=6,
                                           key="synthetic-per-class"))
        for emotion, faces in compute.gallery(config, shown, per_class).items():
            st.markdown(f"**{emotion}**")
            st.image([image for _, image in faces], caption=[Path(key).name for key, _ in faces], width=96)

    st.subheader("Import grids")
    st.caption("Grid images made elsewhere (a web UI, another machine): they are recorded in the credit ledger "
               "under the prompt they answer, then cut into faces by the extraction.")
    with st.form("import-grids", clear_on_submit=True):
        files = st.file_uploader("Grid images", type=["png", "jpg", "jpeg", "webp"], accept_multiple_files=True)
        left, middle, right = st.columns(3)
        emotion = left.selectbox("Emotion asked for", EMOTIONS, index=EMOTIONS.index("Happiness"))
        gender = middle.selectbox("Gender", [None, *GENDERS], format_func=lambda v: v or "unspecified")
        intensity = right.selectbox("Intensity", [None, *INTENSITIES], format_func=lambda v: v or "unstated")
        prompt_text = st.text_input("Prompt used (blank: the project's template for these fields)")
        left, middle, right = st.columns(3)
        model_name = left.text_input("Model that made them", value="imported")
        credits = middle.number_input("Credits per grid", min_value=0, value=1)
        budget = right.number_input("Credit budget", min_value=0, value=max(ledger.budget, 0))
        submitted = st.form_submit_button("Import")
    if submitted:
        if not files:
            st.warning("Choose one or more grid images first.")
        else:
            try:
                spec = PromptSpec(emotion, gender, intensity, None, config.data.grid_layout)
                with tempfile.TemporaryDirectory() as folder:
                    items = []
                    for number, upload in enumerate(files):
                        path = Path(folder) / f"{number:03d}_{Path(upload.name).name}"
                        path.write_bytes(upload.getvalue())
                        items.append(ImportItem(path, spec, prompt_text.strip() or None))
                    settled = import_grids(CreditLedger(ledger.path, budget=int(budget)), items, model_name,
                                           int(credits), progress=False)
                committed = sum(e["status"] == "committed" for e in settled)
                st.session_state["synthetic-last-batch"] = settled[0]["batch"]
                st.success(f"{committed} of {len(files)} grid(s) imported as batch {settled[0]['batch']}. "
                           "Now extract the faces (below).")
            except FerCoreError as exc:
                st.error(f"Import failed: {exc}")
    batches = list(dict.fromkeys(e.get("batch") or e["id"] for e in ledger.entries() if revertible(e)))
    if batches:
        last = st.session_state.get("synthetic-last-batch")
        left, right = st.columns([3, 1])
        batch = left.selectbox("Imported batch", batches[::-1], key="revert-batch",
                               index=batches[::-1].index(last) if last in batches else 0,
                               help="Revert removes its grid files, extracted faces, manifest rows and ledger "
                                    "entries (its credits come back); generated grids cannot be reverted.")
        if right.button("Revert", key="revert"):
            try:
                root = state["root"]
                done = revert_imports(ledger, [batch], root / MANIFEST_FILE, root / "processed", root / "report")
                st.success(f"Reverted batch {batch}: {done['grids']} grid(s), {done['credits_returned']} credit(s) "
                           f"back, {done['faces_removed']} face(s) and {done['manifest_rows_removed']} manifest "
                           "row(s) removed.")
                if done["stale_duplicates"]:
                    st.warning(f"{done['stale_duplicates']} face(s) of other grids were rejected as duplicates "
                               "of these: extract again to check them.")
                state = synthetic_state(config.resolve(config.data.root))
            except FerCoreError as exc:
                st.error(f"Revert failed: {exc}")

    st.subheader("Extract faces and report")
    extract_args, report_args = ["synth", "extract"], ["synth", "report"]
    left, right = st.columns(2)
    left.code(shlex.join(jobs.cli_command(extract_args, ui.config_file())), language="bash")
    right.code(shlex.join(jobs.cli_command(report_args, ui.config_file())), language="bash")
    if left.button("Extract in the background", disabled=not ledger.entries("committed"), key="extract"):
        st.success(f"Started {jobs.start_job(config, extract_args, ui.config_file()).id}; see the Runs page.")
    if right.button("Report in the background", disabled=state["manifest"] is None, key="report"):
        st.success(f"Started {jobs.start_job(config, report_args, ui.config_file()).id}; see the Runs page.")

    if state["manifest"] is None:
        ui.empty_state("No extraction manifest yet: import or generate grids, then extract their faces.",
                       "fer-core synth import grids/*.png --emotion Fear --gender women\nfer-core synth extract")
    else:
        manifest = pd.read_parquet(state["manifest"])
        summary = summarize(manifest)
        a, b, c, d = st.columns(4)
        a.metric("Grids", summary["grids"])
        b.metric("Cells", summary["cells"])
        c.metric("Accepted faces", summary["accepted"])
        d.metric("Rejected cells", summary["rejected"])
        st.write("Layouts found: " + (", ".join(f"{k} ({v} grids)" for k, v in summary["layouts"].items()) or "none"))
        if summary["layout_disagreements"]:
            st.caption("Grids whose layout read from the image differs from the one asked for (the layout kept: "
                       "the requested prior unless the one read confirms clearly more faces):")
            st.dataframe(pd.DataFrame(summary["layout_disagreements"]), hide_index=True, key="layout-disagreements")
        left, right = st.columns(2)
        left.plotly_chart(charts.count_bars(summary["accepted_by"]["emotion"], "accepted faces", by_emotion=True),
                          key="accepted-by-emotion")
        right.plotly_chart(charts.count_bars(summary["rejected_by_reason"], "rejected cells"), key="rejections")

        st.subheader("One grid: its layout and cells")
        grid = st.selectbox("Grid", list(dict.fromkeys(manifest["grid_file"])), key="grid")
        cells = grid_cells(manifest, grid)
        try:
            image = grid_image(ledger.path.parent, grid)
            st.image(charts.grid_verdicts(image, cells), width=640,
                     caption=f"{cells['grid_rows'].iloc[0]}x{cells['grid_columns'].iloc[0]} layout "
                             f"({cells['layout_source'].iloc[0]}): green accepted, red rejected")
        except FerCoreError as exc:
            st.warning(f"The grid image cannot be shown: {exc}")
        st.dataframe(cells[[c for c in ("row", "column", "accepted", "reject_reason", "faces_found", "split",
                                        "face_file") if c in cells]], hide_index=True, key="grid-cells")
        st.subheader("Rejected cells and why")
        st.dataframe(rejected_cells(manifest), hide_index=True, key="rejected")

    st.subheader("Contact sheet")
    sheets = ui.contact_sheet_pages(state["report"])
    if not sheets:
        ui.empty_state("No contact sheet yet.", shlex.join(jobs.cli_command(report_args, ui.config_file())))
    else:
        for sheet in sheets:
            st.image(str(sheet), caption=f"{sheet.name}: every cell: green accepted, red rejected with its reason")

    st.subheader("Credit ledger")
    entries = ledger.entries()
    if not entries:
        ui.empty_state("The credit ledger is empty: no grid generated or imported yet.",
                       "fer-core synth generate --backend http --backend-config api.json --budget 30 --emotion Fear")
    else:
        summary = ledger.summary()
        a, b, c = st.columns(3)
        a.metric("Budget", summary["budget"])
        b.metric("Spent", summary["spent"])
        c.metric("Remaining", summary["remaining"])
        if ledger.pending():
            st.warning(f"{len(ledger.pending())} interrupted reservation(s): settle them with "
                       "`fer-core synth ledger --resolve ID --spent` (or without --spent to release).")
        plan = ledger.plan_arithmetic(accepted_per_grid(manifest) if state["manifest"] is not None else None,
                                      config.data.grid_layout)
        st.markdown("**The plan's arithmetic**")
        a, b = st.columns(2)
        a.metric("Faces asked per credit", plan["faces_asked_per_credit"], help=plan["asked_from"])
        interval = plan["faces_accepted_per_credit_95ci"]
        b.metric("Faces accepted per credit", "-" if plan["faces_accepted_per_credit"] is None
                 else plan["faces_accepted_per_credit"], help=plan["accepted_from"])
        st.caption(f"Asked: {plan['asked_from']}. Accepted: {plan['accepted_from']}"
                   + ("" if interval is None else f"; 95% CI {interval[0]} to {interval[1]}") + ".")
        st.dataframe(pd.DataFrame([{"credits of": name, **plan[name]} for name in ("budget", "remaining")]),
                     hide_index=True, key="plan")
        st.dataframe(pd.DataFrame(entries)[[c for c in ("id", "batch", "status", "credits", "emotion", "gender",
                                                       "intensity", "backend", "model", "file", "reserved_at", "note")
                                            if c in entries[0]]], hide_index=True, key="ledger")
    downloads.tables("the rejected cells and the credit ledger", "synthetic", {
        "Rejected cells": rejected_cells(manifest) if state["manifest"] is not None else None,
        "Credit ledger": pd.DataFrame(entries) if entries else None},
        f"From {state['root']}: the extraction manifest's rejected cells with their reasons, and every ledger entry.")
