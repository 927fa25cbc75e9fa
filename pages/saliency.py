"""Saliency browser: attribution maps of real and synthetic faces side by side, per-class mean
maps on aligned faces and their difference, region shares, and methods that failed a sanity check."""

import shlex

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import charts, compute, jobs, ui
from fer_core.data import available_datasets
from fer_core.errors import FerCoreError
from fer_core.explain import default_layer, layers, load_quality, method_defaults, method_names, overlay
from fer_core.explain.base import map_cell_size
from fer_core.explain.regions import compare_domains, region_shares, to_template
from fer_core.explain.sanity import faithfulness_rows, randomisation_rows, statistics_method
from fer_core.labels import EMOTIONS
from fer_core.views import map_keypoints, model_files, spec_domain

#: Methods whose maps are coarser than the facial regions (one value per layer cell).
COARSE = {"gradcam": "coarse, fast overlay", "gradcam++": "coarse"}


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


def method_label(method: str, failed: set[str]) -> str:
    """The method's name, with its coarseness and a failed sanity check noted."""
    notes = [COARSE[method]] if method in COARSE else []
    return f"{method} ({', '.join(notes + (['failed sanity check'] if method in failed else []))})" \
        if notes or method in failed else method

#: How to record a method's sanity checks (stored per model for this page to flag).
SANITY_SNIPPET = """from fer_core.config import load_config
from fer_core.data import open_dataset
from fer_core.explain import record_quality
from fer_core.models import load_model

config = load_config("{config}")
model = load_model("{weights}")
faces = open_dataset("fer2013:test", config.resolve(config.data.root)).subset(range(0, 3200, 100))
batch = model.preprocessing.batch([faces.read(faces[i]) for i in range(len(faces))])
record_quality(config, model, batch, ["{method}"], source="fer2013:test[0:3200:100]")"""

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
    model = ui.load_model_file(config, models[row[0].selectbox("Model", list(models), key="sal-model")])
    methods = method_names()
    quality = load_quality(config, model.fingerprint)
    failed = {m for m, result in quality.items() if not result.get("passed", True)}
    method = row[1].selectbox("Method", methods, index=methods.index("gradcam"), key="sal-method",
                              format_func=lambda m: method_label(m, failed))
    layer = None
    if "layer" in method_defaults(method):
        names = layers(model)
        layer = row[2].selectbox("Layer", names, index=names.index(default_layer(model)), key="sal-layer")
    target = row[3].radio("Explain the", ["predicted", "true"], key="sal-target",
                          format_func={"predicted": "predicted class", "true": "true class"}.get)
    row = st.columns(4)
    emotion = row[0].selectbox("Emotion", EMOTIONS, index=EMOTIONS.index("Happiness"), key="sal-emotion")
    real = row[1].selectbox("Real faces", by_domain["real"], key="sal-real",
                            index=by_domain["real"].index("fer2013:test") if "fer2013:test" in by_domain["real"] else 0)
    synthetic = row[2].selectbox("Synthetic faces", by_domain["synthetic"], key="sal-synthetic")
    count = row[3].slider("Faces per domain", 4, 200, 24, step=4, key="sal-count")
    left, right = st.columns([3, 1])
    shown = left.slider("Faces in the grids", 2, 48, 8, step=2, key="sal-shown")
    per_area = right.toggle("Region shares per area", value=True, key="sal-per-area",
                            help="divide each region's share by the fraction of the crop it covers")

    if method in failed:
        st.warning(f"**{method} failed the sanity check** for this model: {quality_note(quality[method])}. "
                   "Its maps may not explain the model.")
    elif method in quality:
        st.success(f"{method} passed the sanity check: {quality_note(quality[method])}.")
    else:
        st.info(f"No sanity check stored for {method} on this model: record one (results go to "
                f"{config.paths.cache_dir}/quality/) with the code below.")
        snippet = SANITY_SNIPPET.format(method=method, config=ui.config_file() or "configs/config.yaml",
                                        weights=models[st.session_state["sal-model"]])
        st.expander("How to record a sanity check").code(snippet, language="python")
    checked = {m: result for m, result in quality.items() if audited(result)}
    statistics = statistics_method(quality)
    if checked:
        with st.expander("Sanity tables of every checked method"):
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

    sets = {}
    for domain, spec in (("real", real), ("synthetic", synthetic)):
        try:
            sets[domain] = (spec, compute.attribution_set(model, model.fingerprint, config, spec, emotion, method,
                                                          target, layer, count))
        except FerCoreError as exc:
            st.info(f"{domain}: {exc}")
    left, right = st.columns(2)
    for column, domain in ((left, "real"), (right, "synthetic")):
        if domain not in sets:
            continue
        spec, found = sets[domain]
        column.subheader(f"{domain}: {spec}")
        column.caption(f"{len(found.table)} {emotion} face(s); {found.computed} computed now, "
                       f"{len(found.table) - found.computed} from the cache")
        diagnostics = found.diagnostics
        if method == "lrp":
            column.caption("Noise stability of these maps (Spearman with the map of the same face plus invisible "
                           f"noise): {stability['mean']:.2f}, 95% CI {stability['ci_low']:.2f}-{stability['ci_high']:.2f}"
                           if stability else "Noise stability not measured for LRP on this model: record a sanity "
                           "check (below) before reading these maps.")
        if "conservation_error" in diagnostics and len(diagnostics):
            column.caption(f"Relevance conservation error (input relevance vs the target logit): median "
                           f"{diagnostics['conservation_error'].median():.1%}, worst "
                           f"{diagnostics['conservation_error'].max():.1%}")
        keys = tuple(found.table["key"].head(shown))
        faces = compute.faces_for_keys(config, spec, keys, model.input_size)
        grid = column.columns(4)
        for number, (face, attribution) in enumerate(zip(faces, found.maps)):
            note = (f", error {diagnostics['conservation_error'].iloc[number]:.0%}"
                    if "conservation_error" in diagnostics else "")
            grid[number % 4].image(overlay(face, attribution), width=110,
                                   caption=f"{found.table['target_emotion'].iloc[number]}{note}")

    if len(sets) == 2 and all(len(found.maps) for _, found in sets.values()):
        side = sets["real"][1].maps.shape[-1]
        aligned, shares, domains, own = {}, [], [], {}
        for domain, (spec, found) in sets.items():
            points, located = map_keypoints(found.keypoints, side, compute.dataset(config, spec).pre_cropped)
            own[domain] = int(located.sum())
            warped = to_template(np.maximum(found.maps, 0) / np.maximum(found.maps.max(axis=(1, 2), keepdims=True),
                                                                        1e-12), points, side)
            covered = np.isfinite(warped).sum(axis=0)  # faces reaching each template pixel
            aligned[domain] = np.where(covered > 0, np.nansum(warped, axis=0) / np.maximum(covered, 1), np.nan)
            shares.append(region_shares(found.maps, points, per_area=per_area))
            domains += [domain] * len(found.maps)
        st.subheader(f"Mean {method} map of {emotion} on aligned faces")
        st.caption("Each face's positive map, scaled to its maximum and warped so its eyes, nose and mouth land on "
                   f"one template; keypoints found on {own['real']}/{len(sets['real'][1].maps)} real and "
                   f"{own['synthetic']}/{len(sets['synthetic'][1].maps)} synthetic faces (the others use the "
                   "typical face's).")
        columns = st.columns(3)
        for column, (key, name, values, signed) in zip(columns, (
                ("real", f"real ({len(sets['real'][1].maps)} faces)", aligned["real"], False),
                ("synthetic", f"synthetic ({len(sets['synthetic'][1].maps)} faces)", aligned["synthetic"], False),
                ("difference", "synthetic - real", aligned["synthetic"] - aligned["real"], True))):
            column.plotly_chart(charts.map_image(values, name, signed=signed), key=f"mean-{key}",
                                config={"displayModeBar": False})

        st.subheader("Share of positive attribution per facial region")
        report = compute.region_table(np.concatenate(shares), tuple(domains), emotion)
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
                                 for spec, found in sets.values()])
        try:
            framed = compare_domains(np.concatenate([found.maps for _, found in sets.values()]), points,
                                     np.asarray(domains), n_resamples=200, n_permutations=1999,
                                     cell_size=map_cell_size(model, method, **({"layer": layer} if layer else {})))
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
        if method != statistics["method"]:
            st.info(f"Region statistics are best read with {statistics['method']}, the most faithful method that "
                    f"passed the sanity checks ({statistics['note']}).")

    options = ["--model", str(models[st.session_state["sal-model"]]), "--method", method, "--target", target,
               *(["--layer", layer] if layer else [])]
    st.caption("Precompute every face of both datasets into the cache (then this page only reads):")
    st.code("\n".join(shlex.join(jobs.cli_command(["explain", "--dataset", spec, *options], ui.config_file()))
                      for spec in (real, synthetic)), language="bash")
