"""RQ3: which facial regions drive the decisions, on real vs synthetic faces: per-class mean
attribution maps of each domain on one aligned face template and their difference, region
shares against a fixed-map null with bootstrap CIs and Holm-adjusted permutation tests
(:func:`fer_core.explain.regions.compare_domains`), and the method's stored sanity checks as
the control. A report reads stored maps only (``fer-core explain`` makes them);
``fer-core regions`` computes what is missing first."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd

from fer_core.cache import ResultCache
from fer_core.errors import MissingResultsError
from fer_core.explain import class_mean_maps, load_quality, map_cell_size, method_defaults, statistics_method
from fer_core.explain.regions import aligned_template, compare_domains, region_labels
from fer_core.explain.sanity import faithfulness_rows, randomisation_rows
from fer_core.labels import EMOTIONS
from fer_core.models import FerModel
from fer_core.precompute import DEFAULT_MAP_SIZE, EXPLAIN_BATCH_SIZE, AttributionSet, explain_dataset
from fer_core.report.base import Section
from fer_core.report.context import ReportContext, register_question
from fer_core.report.figures import interval_bars, map_grid_figure
from fer_core.views import map_keypoints

#: The row of the mean-map grid over every face of a domain.
ALL_FACES = "all faces"


@dataclass(frozen=True)
class DomainMaps:
    """One domain's attribution maps: the dataset's ``label`` (with its sample), the maps
    (:class:`~fer_core.precompute.AttributionSet`) and whether its faces are pre-cropped (which
    typical keypoints stand in where none were found)."""

    label: str
    found: AttributionSet
    pre_cropped: bool

    def aligned(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """The labelled faces' maps, their keypoints in map pixels, their class indices, and
        how many of them had keypoints of their own."""
        labelled = self.found.table["label"].to_numpy() >= 0
        points, located = map_keypoints(self.found.keypoints[labelled], self.found.maps.shape[-1], self.pre_cropped)
        return self.found.maps[labelled], points, self.found.table["label"].to_numpy()[labelled], int(located.sum())


def method_settings(method: str, layer: str | None, params: Mapping[str, object]) -> dict[str, object]:
    """The settings a method's stored maps are keyed by: ``params`` and the ``layer`` (when given)."""
    return {**params, **({"layer": layer} if layer else {})}


def export_saliency(section: Section, sets: Mapping[str, DomainMaps], model: FerModel, method: str, target: str,
                    settings: Mapping[str, object], detector: str, n_resamples: int = 1000,
                    n_permutations: int = 9999) -> dict | None:
    """The ``real`` and ``synthetic`` maps of ``sets`` compared: per-class mean maps on the
    aligned template and their difference (figure), the faces behind them (table), region
    shares against the fixed-map null with CIs (figure, table) and the tests per region
    (table). Returns :func:`~fer_core.explain.regions.compare_domains`' report (None when a
    domain has no labelled face)."""
    parts = {domain: found.aligned() for domain, found in sets.items()}
    if any(not len(maps) for maps, _, _, _ in parts.values()):
        section.note("no labelled face in " + ", ".join(d for d, part in parts.items() if not len(part[0]))
                     + ": nothing to compare")
        return None
    side = next(iter(parts.values()))[0].shape[-1]
    faces = {domain: f"{sets[domain].label}, {len(maps)} faces, own keypoints on {own}"
             for domain, (maps, _, _, own) in parts.items()}
    shown = {k: v for k, v in settings.items() if v != method_defaults(method).get(k)}
    protocol = (f"{method}{f' {shown}' if shown else ''} maps of the {target} class, stored at {side} px; real: "
                f"{faces['real']}; synthetic: {faces['synthetic']}; faces as the model saw them ({detector}); each "
                f"map warped onto one aligned {side} px face template by its keypoints; model {model.architecture} at "
                f"{model.input_size} px, fingerprint {model.fingerprint}.")
    means = {}
    for domain, (maps, points, labels, _) in parts.items():
        means[domain] = {**class_mean_maps(maps, np.zeros(len(maps), dtype=int), [ALL_FACES], keypoints=points,
                                           size=side),
                         **class_mean_maps(maps, labels, EMOTIONS, keypoints=points, size=side)}
    rows = [name for name in means["real"] if name in means["synthetic"]]
    difference = {name: means["synthetic"][name] - means["real"][name] for name in rows}
    counts = {domain: np.bincount(labels, minlength=len(EMOTIONS)) for domain, (_, _, labels, _) in parts.items()}
    section.figure(map_grid_figure([(f"real ({len(parts['real'][0])})", means["real"], False),
                                    (f"synthetic ({len(parts['synthetic'][0])})", means["synthetic"], False),
                                    ("synthetic - real", difference, True)], rows,
                                   outline=region_labels(aligned_template(side), side),
                                   title=f"Mean {method} map per class on aligned faces"),
                   "mean-maps", f"Mean {method} map per class, real vs synthetic, and their difference", protocol,
                   "Each face's map normalised to its 99th percentile, warped onto the template and averaged per "
                   "class; outlines: the template's facial regions; classes both domains hold.")
    section.table(pd.DataFrame([{"emotion": name, "real faces": int(counts["real"][EMOTIONS.index(name)]),
                                 "synthetic faces": int(counts["synthetic"][EMOTIONS.index(name)])}
                                for name in rows if name != ALL_FACES]),
                  "faces", "Faces behind each mean map", protocol)
    maps = np.concatenate([maps for maps, _, _, _ in parts.values()])
    report = compare_domains(maps, np.concatenate([points for _, points, _, _ in parts.values()]),
                             np.concatenate([[domain] * len(m) for domain, (m, _, _, _) in parts.items()]),
                             labels=np.concatenate([labels for _, _, labels, _ in parts.values()]),
                             cell_size=map_cell_size(model, method, **settings), n_resamples=n_resamples,
                             n_permutations=n_permutations)
    regional = (f"{protocol} Shares per area inside the template pixels every face reaches ({report['support']:.0%} "
                f"of it), minus the share of the fixed-map null ({report['null']}: the pooled mean map through the "
                f"same warp, what framing alone gives); {report['confidence']:.0%} bootstrap CIs over faces "
                f"({n_resamples} resamples). Test: {report['test']}. Faces compared as stored, not harmonised to one "
                "resolution and colour (fer_core.explain.regions.harmonise_faces).")
    compared = {row["emotion"] for row in report["differences"]}  # "all" and the classes both domains hold
    shares = pd.DataFrame([row for row in report["shares"] if row["emotion"] in compared])
    section.figure(interval_bars(shares, "region", "mean", "ci_low", "ci_high", group="domain", facet="emotion",
                                 reference=0.0, ylabel="share per area minus the null's",
                                 title=f"{method}: region shares beyond the fixed-map null"),
                   "region-shares", "Region shares per domain against the fixed-map null", regional,
                   "0: the share the null map gets; above: the region holds more of the attribution than framing "
                   "alone gives.")
    section.table(shares, "region-shares", "Region shares per domain against the fixed-map null", regional)
    section.table(pd.DataFrame(report["differences"]), "region-tests",
                  "Real minus synthetic per region: raw difference, the null's, and the effect beyond it", regional)
    for note in report["notes"]:
        section.note(f"{method}: {note}.")
    return report


def attribution_sets(context: ReportContext, section: Section, model: FerModel, method: str,
                     compute: bool = False) -> dict[str, DomainMaps]:
    """The stored maps of the report's real and synthetic faces (computing missing ones only
    with ``compute``); a domain whose maps are not all stored is recorded as missing."""
    cache = ResultCache.from_config(context.config) if compute else context.cache()
    try:
        found = {domain: _domain_maps(context, section, model, method, spec, cache, compute)
                 for domain, spec in (("real", context.options.real), ("synthetic", context.options.synthetic))}
    finally:
        if cache is not None:
            cache.close()
    return {domain: maps for domain, maps in found.items() if maps is not None}


def _domain_maps(context: ReportContext, section: Section, model: FerModel, method: str, spec: str,
                 cache: ResultCache | None, compute: bool) -> DomainMaps | None:
    """``spec``'s maps from ``cache``, or None with the command that stores them recorded."""
    options = context.options
    dataset = context.dataset(spec, section)
    if dataset is None:
        return None
    command = context.command(
        "explain", *context.model_args(), "--dataset", spec, "--method", method, "--target", options.target,
        *(["--layer", options.layer] if options.layer else []),
        *(["--map-size", options.map_size] if options.map_size != DEFAULT_MAP_SIZE else []),
        *(part for name, value in options.params.items()
          for part in ("--param", f"{name}={value if isinstance(value, str) else json.dumps(value)}")),
        *context.sample_args())
    try:
        if cache is None:
            raise MissingResultsError(f"{method} maps (no result cache yet)", len(dataset), len(dataset))
        found = _explain(context, model, dataset, cache, method, method_settings(method, options.layer, options.params),
                         compute)
    except MissingResultsError as exc:
        section.lack(f"{dataset.label}: {exc}", command)
        return None
    section.source(f"{method} maps of {dataset.label} (result cache)", command)
    return DomainMaps(dataset.label, found, dataset.pre_cropped)


def _explain(context: ReportContext, model: FerModel, dataset, cache, method: str, settings: Mapping[str, object],
             compute: bool) -> AttributionSet:
    from fer_core.jobs.options import JobOptions
    settings = dict(settings)
    inference = JobOptions.from_config(context.config, progress=compute).inference
    return explain_dataset(model, dataset, cache, method, target=context.options.target, layer=settings.pop("layer", None),
                           map_size=context.options.map_size, face_pipeline=context.face_pipeline(model),
                           compute=compute, options=dataclasses.replace(inference, batch_size=EXPLAIN_BATCH_SIZE),
                           **settings)


def regions_section(context: ReportContext, section: Section, model: FerModel, compute: bool = False) -> dict | None:
    """RQ3's maps and region statistics for ``model`` and the report's datasets (the method: the
    options', else the most faithful one that passed the model's stored sanity checks)."""
    method = context.options.method or statistics_method(load_quality(context.config, model.fingerprint))["method"]
    sets = attribution_sets(context, section, model, method, compute)
    if len(sets) < 2:
        return None
    pipeline = context.face_pipeline(model)
    detected = [found.label for found in sets.values() if not found.pre_cropped]
    detector = (f"faces of {', '.join(detected)} found by {pipeline.detector.fingerprint()}"
                if detected and pipeline is not None and pipeline.detector is not None else "pre-cropped faces")
    return export_saliency(section, sets, model, method, context.options.target,
                           method_settings(method, context.options.layer, context.options.params), detector,
                           context.options.n_resamples, context.options.n_permutations)


def export_sanity(section: Section, quality: Mapping[str, dict], model: FerModel) -> None:
    """The model's stored sanity checks (model randomisation beside noise stability and
    different faces; deletion / insertion beside a random order and the centre prior)."""
    checked = {m: r for m, r in quality.items() if "noise_stability" in r.get("randomisation", {})}
    if not checked:
        return
    chosen = statistics_method(quality)
    sources = "; ".join(sorted({f"{m}: {r.get('faces', {}).get('source', '?')}" for m, r in checked.items()}))
    protocol = (f"Stored by fer-core sanity for model {model.fingerprint} ({sources}); most faithful method that "
                f"passed: {chosen['method']} ({chosen['note']}).")
    section.table(pd.DataFrame(randomisation_rows(checked)), "sanity-randomisation",
                  "Model randomisation: Spearman with the trained model's maps per cascade step, beside the "
                  "noise-stability and different-faces controls", protocol)
    section.table(pd.DataFrame(faithfulness_rows(checked)), "sanity-faithfulness",
                  "Deletion and insertion, beside a random order and the centre prior", protocol)


@register_question("rq3", "Which facial regions drive the decisions, on real vs synthetic faces?")
def build(context: ReportContext, section: Section) -> None:
    """Stored maps of the report's faces; the model's stored sanity checks as the control."""
    model = context.model(section)
    if model is None:
        return
    regions_section(context, section, model)
    quality = load_quality(context.config, model.fingerprint)
    if not quality:
        section.lack(f"no sanity check stored for model {model.fingerprint} (the control of the maps)",
                     context.command("sanity", *context.model_args(), "--dataset", "ferplus:test", "--faces", "32"))
    export_sanity(section, quality, model)
