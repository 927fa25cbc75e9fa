"""Saliency browser: attribution maps of real and synthetic faces side by side (shown as they
are computed, filtered by correctness and confidence, each face opening its drill-down), per-class
mean maps on aligned faces and their difference, region shares, a second model beside the first,
and sanity checks run in the background with every method's stored verdict."""

import shlex

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import charts, compute, downloads, drilldown, jobs, ui
from fer_core.data import available_datasets
from fer_core.errors import FerCoreError
from fer_core.explain import (canonical_layer, class_mean_maps, default_layer, layers, load_quality, method_defaults,
                              method_names, overlay)
from fer_core.explain.base import map_cell_size
from fer_core.explain.regions import region_shares
from fer_core.explain.sanity import faithfulness_rows, randomisation_rows, statistics_method
from fer_core.labels import EMOTIONS
from fer_core.views import (CORRECTNESS, filter_faces, map_keypoints, model_files, preferred_index, sanity_verdicts,
                            spec_domain)

PAGE = "saliency"
#: Methods whose maps are coarser than the facial regions (one value per layer cell).
COARSE = {"gradcam": "coarse, fast overlay", "gradcam++": "coarse"}
#: Faces explained per step: each step's faces are shown as soon as they are done.
CHUNK = 8
#: Thumbnails per grid row (each as wide as its column: about 180 px on a wide screen).
GRID_COLUMNS = 3
#: With a filter on, the first ``SCAN_FACTOR`` x faces-per-domain faces of the class (at most
#: ``MAX_SCAN``) are classified to find the faces that pass it.
SCAN_FACTOR, MAX_SCAN = 8, 1000


def audited(result: dict) -> bool:
    """Whether a stored result has the audited checks (noise stability, centre prior)."""
    return "noise_stability" in result.get("randomisation", {}) and "margin" in result.get("faithfulness", {})


def quality_note(result: dict) -> str:
    """One line on a method's stored sanity checks."""
    if not audited(result):
        return "stored before the noise-stability and centre-prior controls: record it again"
    randomisation, faithfulness = result["randomisation"], result["faithfulness"]
    last, stable = randomisation["cascade"][-1]["decision"], randomisation["noise_stability"]["decision"]
    return (f"model randomisation: Spearman {last['mean']:.2f} (CI to {last['ci_high']:.2f}) after re-initialising "
            f"the top layers, vs {stable['mean']:.2f} (CI from {stable['ci_low']:.2f}) for invisible noise and "
            f"{randomisation['different_faces']['decision']['mean']:.2f} between different faces; against the centre "
            f"prior, deletion p = {faithfulness['centre_deletion_p_value']:.3f}, insertion p = "
            f"{faithfulness['centre_insertion_p_value']:.3f} ({result.get('faces', {}).get('n', '?')} faces)")


def method_label(method: str, quality: dict) -> str:
    """The method's name with its stored sanity verdict (and its coarseness)."""
    verdict = "not checked" if method not in quality else \
        "passed sanity check" if quality[method].get("passed", True) else "FAILED sanity check"
    return f"{method} ({', '.join(([COARSE[method]] if method in COARSE else []) + [verdict])})"


def caption_of(face: pd.Series) -> str:
    """A thumbnail's caption: true and predicted class, and the confidence."""
    mark = "" if face["label"] < 0 else (" ✓" if face["pred"] == face["label"] else " ✗")
    return f"true {face['emotion'] or '?'} · pred {face['pred_emotion']} {face['confidence']:.0%}{mark}"


def sanity_panel(config, model_path, method: str, real: str) -> None:
    """Start ``fer-core sanity`` for ``method`` in the background; the latest such jobs of this
    model, polled while they run (the page reloads the verdicts when one ends)."""
    left, right = st.columns([1, 3])
    faces = int(left.number_input("Faces to check on", min_value=2, max_value=256, value=32, key="sanity-faces"))
    args = ["sanity", "--model", str(model_path), "--dataset", real, "--method", method, "--faces", str(faces)]
    right.caption(f"Runs in the background on {faces} faces of {real} spread over the dataset (found and aligned as "
                  "every table finds them); the same from a shell:")
    right.code(shlex.join(jobs.cli_command(args, ui.config_file())), language="bash")
    if left.button(f"Check {method}", key="sanity-start", type="primary",
                   help="runs fer-core sanity in the background; its progress shows below"):
        job = jobs.start_job(config, args, ui.config_file())
        st.session_state.setdefault("sanity-jobs", []).append(job.id)

    @st.fragment(run_every=2 if any(j.running for j in sanity_jobs(config, model_path)) else None)
    def progress() -> None:
        for job in sanity_jobs(config, model_path)[:3]:
            st.write(f"**{job.id}**: {job.status}")
            if job.running:
                st.progress(job.progress() or 0.0, text=job.log_tail(1) or "starting...")
            elif job.return_code not in (None, 0):
                st.code(job.log_tail(), language="text")
            if not job.running and job.id in st.session_state.get("sanity-jobs", []):
                st.session_state["sanity-jobs"].remove(job.id)  # ended: show its verdict on the whole page
                st.rerun(scope="app")
    progress()


def sanity_jobs(config, model_path) -> list:
    """The ``fer-core sanity`` jobs of this model, newest first."""
    return [job for job in jobs.list_jobs(config) if "sanity" in job.command and str(model_path) in job.command]


st.title("Saliency browser")
config = ui.get_config()
models = {} if config is None else model_files(config)
if config is not None and not models:
    ui.get_model(config)  # says what is missing and how to get a model
if models:
    specs = available_datasets(config.resolve(config.data.root))
    by_domain = {domain: [s for s in specs if spec_domain(s) == domain] for domain in ("real", "synthetic")}
    missing = [domain for domain, found in by_domain.items() if not found]
    if missing:
        ui.empty_state(f"No {' or '.join(missing)} dataset installed: the browser compares the two.",
                       "fer-core data install ../shared/data/fer2013.zip\n"
                       "fer-core data install ../shared/data/synthetic_sd_faces.zip")
        st.stop()
    row = st.columns(4)
    model_label = row[0].selectbox("Model", list(models), key="sal-model")
    model = ui.load_model_file(config, models[model_label])
    methods = method_names()
    quality = load_quality(config, model.fingerprint)
    failed = {m for m, result in quality.items() if not result.get("passed", True)}
    method = row[1].selectbox("Method", methods, index=methods.index("gradcam"), key="sal-method",
                              format_func=lambda m: method_label(m, quality))
    layer = None
    if "layer" in method_defaults(method):
        names = layers(model)
        layer = row[2].selectbox("Layer", names, index=names.index(default_layer(model)), key="sal-layer")
    target = row[3].radio("Explain the", ["predicted", "true"], key="sal-target",
                          format_func={"predicted": "predicted class", "true": "true class"}.get)
    row = st.columns(4)
    emotion = row[0].selectbox("Emotion", EMOTIONS, index=EMOTIONS.index("Happiness"), key="sal-emotion")
    real = row[1].selectbox("Real faces", by_domain["real"], key="sal-real", index=preferred_index(by_domain["real"]))
    synthetic = row[2].selectbox("Synthetic faces", by_domain["synthetic"], key="sal-synthetic")
    count = row[3].slider("Faces per domain", 4, 200, 24, step=4, key="sal-count")
    row = st.columns(4)
    correctness = row[0].radio("Predictions", CORRECTNESS, horizontal=True, key="sal-correct",
                               format_func={"all": "all", "correct": "right", "wrong": "wrong"}.get)
    confidence = row[1].slider("Confidence", 0.0, 1.0, (0.0, 1.0), step=0.05, key="sal-confidence")
    domains = row[2].multiselect("Domains in the grids", ["real", "synthetic"], default=["real", "synthetic"],
                                 key="sal-domains")
    shown = row[3].slider("Faces in the grids", 2, 48, 8, step=2, key="sal-shown")
    row = st.columns(4)
    others = [label for label in models if label != model_label]
    second_label = row[0].selectbox("Compare with model", [None, *others], key="sal-second",
                                    format_func=lambda m: "none" if m is None else m)
    second = ui.load_model_file(config, models[second_label]) if second_label else None
    per_area = row[1].toggle("Region shares per area", value=True, key="sal-per-area",
                             help="divide each region's share by the fraction of the crop it covers")
    filtered = correctness != "all" or confidence != (0.0, 1.0)
    scan = min(SCAN_FACTOR * count, MAX_SCAN) if filtered else count
    row[2].caption(f"The first {count} {emotion} faces of each dataset" + (
        f" that pass the filters, among its first {scan}" if filtered else "") + ": the grids show the first "
        f"{shown}, the figures below use them all.")

    if method in failed:
        st.warning(f"**{method} failed the sanity check** for this model: {quality_note(quality[method])}. "
                   "Its maps may not explain the model.")
    elif method in quality:
        st.success(f"{method} passed the sanity check: {quality_note(quality[method])}.")
    else:
        st.info(f"No sanity check stored for {method} on this model: run one below (results go to "
                f"{config.paths.cache_dir}/quality/).")
    with st.expander("Sanity checks: run one in the background; every method's stored result"):
        sanity_panel(config, models[model_label], method, real)
        st.markdown("**Every method's stored result** (model randomisation: Spearman with the trained model's maps "
                    "after re-initialising the top layers, beside the noise-stability control; deletion p-value "
                    "against the centre prior)")
        st.dataframe(sanity_verdicts(quality, methods), hide_index=True, key="sanity-verdicts")
        checked = {m: result for m, result in quality.items() if audited(result)}
        statistics = statistics_method(quality)
        if checked:
            st.caption(f"Most faithful method that passed, the default for region and faithfulness statistics: "
                       f"**{statistics['method']}** ({statistics['note']}).")
            st.markdown("**Model randomisation** (Spearman with the trained model's maps per cascade step, beside "
                        "the different-faces and noise-stability controls)")
            st.dataframe(pd.DataFrame(randomisation_rows(checked)), hide_index=True, key="sanity-randomisation")
            st.caption(f"Pass: {next(iter(checked.values()))['randomisation']['criterion']}.")
            st.markdown("**Deletion / insertion** (area under the target probability; random order and centre "
                        "prior as controls)")
            st.dataframe(pd.DataFrame(faithfulness_rows(checked)), hide_index=True, key="sanity-faithfulness")
            st.caption(f"Pass: {next(iter(checked.values()))['faithfulness']['criterion']}.")
    stability = quality.get(method, {}).get("randomisation", {}).get("noise_stability", {}).get("decision")

    chosen = {}
    for domain, spec in (("real", real), ("synthetic", synthetic)):
        try:
            with st.spinner(f"Classifying the first {scan} {emotion} faces of {spec}..."):
                predictions = compute.class_predictions(model, model.fingerprint, config, spec, emotion, scan)
        except FerCoreError as exc:
            st.info(f"{domain}: {exc}")
            continue
        picked = predictions.iloc[filter_faces(predictions, correctness, confidence)].head(count)
        if picked.empty:
            st.info(f"{domain}: none of the first {scan} {emotion} faces of {spec} passes the filters.")
            continue
        chosen[domain] = (spec, picked.reset_index(drop=True))

    key_layer = canonical_layer(model, layer) if layer else None
    precompute = ["--model", str(models[model_label]), "--method", method, "--target", target,
                  *(["--layer", key_layer] if key_layer else [])]
    precompute_commands = "\n".join(shlex.join(jobs.cli_command(["explain", "--dataset", spec, *precompute],
                                                                 ui.config_file())) for spec in (real, synthetic))
    explainers = [(model, "")] + ([(second, second_label)] if second is not None else [])
    total = sum(len(picked) for _, picked in chosen.values()) * len(explainers)
    status = st.empty()
    bar = st.progress(0.0, text=f"Explaining {total} faces...") if total else None
    columns = dict(zip(("real", "synthetic"), st.columns(2)))
    sets, done, computed, announced = {}, 0, 0, False
    for domain, (spec, picked) in chosen.items():
        column = columns[domain]
        in_grid = domain in domains
        if in_grid:
            column.subheader(f"{domain}: {spec}")
        note = column.empty()
        grid = column.columns(GRID_COLUMNS) if in_grid else []
        parts = {name: [] for _, name in explainers}
        rows = picked["row"].tolist()
        for start in range(0, len(rows), CHUNK):
            chunk = tuple(rows[start:start + CHUNK])
            found = {}
            for explainer, name in explainers:
                layer_of = canonical_layer(explainer, layer) if layer in layers(explainer) else None
                part = compute.attribution_chunk(explainer, explainer.fingerprint, config, spec, chunk, method, target,
                                                 layer_of)
                parts[name].append(part)
                found[name] = part
                done, computed = done + len(chunk), computed + part.computed
                bar.progress(done / total, text=f"Explaining faces: {done}/{total} ({computed} computed now, "
                                                f"{done - computed} read from the cache)")
                if computed and not announced:
                    announced = True
                    with status.container(border=True):
                        st.caption("Maps missing from the cache are computed now: precompute every face of both "
                                   "datasets (then this page only reads them):")
                        st.code(precompute_commands, language="bash")
            keys = tuple(picked["key"].iloc[start:start + CHUNK])
            drawn = [k for k in keys if start + keys.index(k) < shown]
            if in_grid and drawn:
                faces = compute.faces_for_keys(config, spec, tuple(drawn), model.input_size)
                for face, key in zip(faces, drawn):
                    number = start + keys.index(key)
                    cell = grid[number % GRID_COLUMNS]
                    info = picked.iloc[number]
                    heat = []
                    for _, name in explainers:
                        part = found[name]
                        match = np.flatnonzero(part.table["key"].to_numpy() == key)
                        if len(match):
                            heat.append(overlay(face, part.maps[match[0]]))
                    note_text = ""
                    diagnostics = found[""].diagnostics
                    match = np.flatnonzero(found[""].table["key"].to_numpy() == key)
                    if "conservation_error" in diagnostics and len(match):
                        note_text = f", error {diagnostics['conservation_error'].iloc[match[0]]:.0%}"
                    cell.image(heat or [face], width="stretch",
                               caption=[caption_of(info) + note_text] + [f"{second_label}" for _ in heat[1:]])
                    drilldown.details_button(cell, PAGE, spec, key, (real, synthetic), f"drill-{domain}-{number}")
        sets[domain] = (spec, compute.join_attributions(parts[""]),
                        compute.join_attributions(parts[second_label]) if second is not None else None)
        found_set = sets[domain][1]
        diagnostics = found_set.diagnostics
        text = (f"{len(found_set.table)} {emotion} face(s); when first shown, {found_set.computed} were computed and "
                f"{len(found_set.table) - found_set.computed} read from the cache")
        if method == "lrp":
            text += ("; noise stability of these maps (Spearman with the map of the same face plus invisible noise): "
                     f"{stability['mean']:.2f}, 95% CI {stability['ci_low']:.2f}-{stability['ci_high']:.2f}"
                     if stability else "; noise stability not measured for LRP on this model: run a sanity check "
                     "before reading these maps")
        if "conservation_error" in diagnostics and len(diagnostics):
            errors = diagnostics["conservation_error"]
            text += (f"; relevance conservation error (input relevance vs the target logit): median "
                     f"{errors.median():.1%}, worst {errors.max():.1%}")
        (note if in_grid else column).caption(text)
    if bar is not None:
        bar.empty()
    drilldown.show(config, model, PAGE)

    if len(sets) == 2 and all(len(found.maps) for _, found, _ in sets.values()):
        side = sets["real"][1].maps.shape[-1]
        aligned, shares, domains_of, own = {}, [], [], {}
        for explainer_index, (explainer, name) in enumerate(explainers):
            for domain, (spec, first, other) in sets.items():
                found = first if explainer_index == 0 else other
                points, located = map_keypoints(found.keypoints, side, compute.dataset(config, spec).pre_cropped)
                aligned[name, domain] = class_mean_maps(found.maps, np.zeros(len(found.maps), dtype=np.int64),
                                                        [emotion], keypoints=points, size=side)[emotion]
                if explainer_index == 0:
                    own[domain] = int(located.sum())
                    shares.append(region_shares(found.maps, points, per_area=per_area))
                    domains_of += [domain] * len(found.maps)
        st.subheader(f"Mean {method} map of {emotion} on aligned faces")
        st.caption("Each face's positive map, scaled to its 99th percentile and warped so its eyes, nose and mouth "
                   "land on one template (fer_core.explain.class_mean_maps); keypoints found on "
                   f"{own['real']}/{len(sets['real'][1].maps)} real and "
                   f"{own['synthetic']}/{len(sets['synthetic'][1].maps)} synthetic faces (the others use the "
                   "typical face's).")
        for _, name in explainers:
            if name:
                st.markdown(f"**{name}** (the same faces; each model explains its own {target} class)")
            columns = st.columns(3)
            for column, (key, title, values, signed) in zip(columns, (
                    ("real", f"real ({len(sets['real'][1].maps)} faces)", aligned[name, "real"], False),
                    ("synthetic", f"synthetic ({len(sets['synthetic'][1].maps)} faces)", aligned[name, "synthetic"],
                     False),
                    ("difference", "synthetic - real", aligned[name, "synthetic"] - aligned[name, "real"], True))):
                column.plotly_chart(charts.map_image(values, title, signed=signed),
                                    key=f"mean-{key}{'-second' if name else ''}", config={"displayModeBar": False})

        st.subheader("Share of positive attribution per facial region")
        report = compute.region_table(np.concatenate(shares), tuple(domains_of), emotion)
        rows = pd.DataFrame(report["shares"])
        rows = rows[rows["emotion"] == emotion]
        st.plotly_chart(charts.domain_bars(rows, "region", "mean", "ci_low", "ci_high", percent=not per_area),
                        key="region-shares")
        differences = pd.DataFrame(report["differences"])
        differences = differences[differences["emotion"] == emotion]
        st.caption(("Bars: each region's share divided by the share of the crop it covers (1 = what a uniform "
                    "map gives it; crops framed differently compare fairly)" if per_area else
                    "Bars: mean share of each face's positive attribution") +
                   f", with {report['confidence']:.0%} bootstrap CIs over faces. Test: {report['test']}.")
        st.dataframe(differences[["region", "mean_a", "mean_b", "difference", "p_value", "p_holm"]].rename(
            columns={"mean_a": f"mean {differences['domain_a'].iloc[0]}",
                     "mean_b": f"mean {differences['domain_b'].iloc[0]}"}), hide_index=True, key="region-tests")

        st.subheader("Regions on one aligned template, against a fixed-map null")
        points = np.concatenate([map_keypoints(found.keypoints, side, compute.dataset(config, spec).pre_cropped)[0]
                                 for spec, found, _ in sets.values()])
        try:
            framed = compute.template_comparison(
                np.concatenate([found.maps for _, found, _ in sets.values()]), points, tuple(domains_of),
                map_cell_size(model, method, **({"layer": layer} if layer else {})))
        except FerCoreError as exc:
            st.info(f"No template comparison: {exc}")
        else:
            table = pd.DataFrame(framed["differences"])
            st.dataframe(table[["region", "mean_a", "mean_b", "difference", "null_difference", "effect", "p_value",
                                "p_holm"]].rename(columns={"mean_a": "mean real", "mean_b": "mean synthetic"}),
                         hide_index=True, key="region-null-tests")
            st.caption(f"Every map warped onto one template ({framed['support']:.0%} of it reached by every face); "
                       "the null is the pooled mean map applied to every face through the same pipeline, so its "
                       "difference is what framing alone gives, and the effect is the difference beyond it. "
                       f"Test: {framed['test']}. The faces are compared as stored: harmonise their resolution and "
                       "colour (fer_core.explain.regions.harmonise_faces) for a strict comparison.")
            for note in framed["notes"]:
                st.warning(f"{method}: {note}.")
        if method != statistics_method(quality)["method"]:
            st.info(f"Region statistics are best read with {statistics_method(quality)['method']}, the most faithful "
                    f"method that passed the sanity checks ({statistics_method(quality)['note']}).")

    st.caption("Precompute every face of both datasets into the cache (then this page only reads):")
    st.code(precompute_commands, language="bash")
    downloads.saliency(config, sets, model, method, target, key_layer)
