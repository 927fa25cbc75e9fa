"""Memoised calls into ``fer_core`` for the pages: a rerun (a widget change, a page switch)
reads the memo instead of computing again. Heavy results come from ``fer_core``'s result cache.
The config is resolved once as the jobs resolve it (:func:`dashboard.ui.job_options`: ``model.device: auto``,
batch size, backend), and dataset-level work that a job does is the job's call."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import streamlit as st
import torch

from dashboard import ui
from fer_core.backends import InferenceOptions
from fer_core.cache import ResultCache, content_hash
from fer_core.config import Config
from fer_core.data import FaceDataset
from fer_core.domain_gap import class_matched_rows, domain_gap_report, per_class_gap
from fer_core.errors import DataError
from fer_core.explain import explain, overlay
from fer_core.explain.regions import compare_domains, region_report
from fer_core.face_detail import FaceMap, FaceView, explain_face, view_face
from fer_core.jobs import precompute as jobs
from fer_core.jobs.workflows import dataset_for
from fer_core.labels import EMOTIONS
from fer_core.models import EmotionRecognizer, FerModel
from fer_core.precompute import EXPLAIN_BATCH_SIZE, AttributionSet, Embeddings, embed_datasets, explain_dataset
from fer_core.runs import Run
from fer_core.views import class_counts, class_gallery, class_rows, faces_of, rows_for_keys, thumbnail_uri


def _explain_options(config: Config) -> InferenceOptions:
    """:func:`dashboard.ui.job_options`' inference settings, :data:`~fer_core.precompute.EXPLAIN_BATCH_SIZE`
    faces per attribution batch."""
    return dataclasses.replace(ui.job_options(config).inference, batch_size=EXPLAIN_BATCH_SIZE)


@st.cache_resource(show_spinner="Opening the dataset...")
def dataset(config: Config, spec: str) -> FaceDataset:
    """A dataset by spec, opened once."""
    return dataset_for(config, spec)


@st.cache_data(show_spinner="Counting the faces of each dataset...", ttl=300)
def dataset_class_counts(config: Config, specs: tuple[str, ...]) -> pd.DataFrame:
    """:func:`fer_core.views.class_counts` of these installed datasets."""
    return class_counts({spec: dataset(config, spec) for spec in specs})


@st.cache_data(show_spinner="Reading faces...", max_entries=8)
def gallery(config: Config, spec: str, per_class: int) -> dict[str, list[tuple[str, np.ndarray]]]:
    """:func:`fer_core.views.class_gallery` of one installed dataset."""
    return class_gallery(dataset(config, spec), per_class)


@st.cache_data(show_spinner="Reading faces...", max_entries=256, persist="disk")
def faces_for_keys(config: Config, spec: str, keys: tuple[str, ...], crop_size: int) -> list[np.ndarray]:
    """The aligned face crops (RGB uint8) the model saw for these sample keys (kept on disk:
    finding faces in large photos again is the slow part of a page)."""
    data = dataset(config, spec)
    pipeline = None if data.pre_cropped else ui.get_face_pipeline(config, crop_size)
    return [face.image for face in faces_of(data, rows_for_keys(data, keys), pipeline)]


def _batch(model: FerModel, faces: Sequence[np.ndarray]) -> torch.Tensor:
    return torch.stack([model.preprocessing.to_tensor(face) for face in faces])


@st.cache_data(show_spinner="Computing attribution maps...", max_entries=64)
def attribution_maps(_model: FerModel, fingerprint: str, face_hashes: tuple[str, ...], _faces: Sequence[np.ndarray],
                     method: str, target: str | tuple[int, ...]) -> np.ndarray:
    """``(N, H, W)`` maps of ``method`` for these faces (memoised by model, face content, method and target)."""
    return explain(_model, _batch(_model, _faces), method, target if isinstance(target, str) else list(target)).maps


def overlays(model: FerModel, faces: Sequence[np.ndarray], method: str, target: str | tuple[int, ...] = "predicted",
             alpha: float = 0.5) -> list[np.ndarray]:
    """Each face with its ``method`` map drawn over it."""
    if not faces:
        return []
    maps = attribution_maps(model, model.fingerprint, tuple(content_hash(f) for f in faces), faces, method, target)
    return [overlay(face, attribution, alpha=alpha) for face, attribution in zip(faces, maps)]


def run_model(config: Config, run: Run) -> tuple[FerModel | None, str]:
    """The model an evaluation run scored, when its weights are still here (its file, else the
    configured model if the fingerprint matches); otherwise None and why."""
    recorded = run.info.get("model", {})
    fingerprint = recorded.get("fingerprint")
    candidates = [Path(recorded["path"])] if recorded.get("path") else []
    configured = ui.get_model(config) if not candidates or not candidates[0].is_file() else None
    for path in candidates:
        if path.is_file():
            model = ui.load_model_file(config, path)
            if model.fingerprint == fingerprint:
                return model, f"{path.name}"
    if configured is not None and configured.fingerprint == fingerprint:
        return configured, "the configured model"
    return None, (f"the weights this run scored (fingerprint {fingerprint}) are not here; "
                  "the faces are shown without attribution maps")


def _cache(config: Config) -> ResultCache:
    """A connection to the project's result cache (one per call: connections are per thread)."""
    return ResultCache.from_config(config)


@st.cache_data(show_spinner=False, max_entries=1024)
def attribution_chunk(_model: FerModel, fingerprint: str, config: Config, spec: str, rows: tuple[int, ...],
                      method: str, target: str, layer: str | None) -> AttributionSet:
    """``method``'s maps of the faces at ``rows`` of ``spec``, through
    :func:`fer_core.precompute.explain_dataset` (stored maps are read, missing ones computed and
    stored); ``layer`` as :func:`fer_core.explain.canonical_layer` names it. A page asks for a few
    faces at a time to show each part as it comes."""
    with _cache(config) as cache:
        return explain_dataset(_model, dataset(config, spec).subset(list(rows)), cache, method, target=target,
                               layer=layer, face_pipeline=ui.get_face_pipeline(config, _model.input_size),
                               options=_explain_options(config))


def join_attributions(parts: Sequence[AttributionSet]) -> AttributionSet:
    """One :class:`AttributionSet` of consecutive parts of one method's maps (in their order)."""
    if not parts:
        raise DataError("no attribution maps to join")
    first = parts[0]
    return AttributionSet(pd.concat([p.table for p in parts], ignore_index=True),
                          np.concatenate([p.maps for p in parts]), np.concatenate([p.keypoints for p in parts]),
                          pd.concat([p.diagnostics for p in parts], ignore_index=True), first.method, first.params,
                          sum(p.computed for p in parts), [key for p in parts for key in p.skipped])


@st.cache_data(show_spinner=False, max_entries=64)
def class_predictions(_model: FerModel, fingerprint: str, config: Config, spec: str, emotion: str,
                      count: int) -> pd.DataFrame:
    """The first ``count`` faces labelled ``emotion`` in ``spec``, classified (through the result
    cache): the embeddings table's ``key``, ``label``, ``pred``, ``pred_emotion``, ``confidence``
    and ``row``, each face's position in the dataset."""
    data = dataset(config, spec)
    rows = class_rows(data, emotion, count)
    if not len(rows):
        raise DataError(f"{spec} has no {emotion} faces")
    with _cache(config) as cache:
        table = embed_datasets(_model, {spec: data.subset(rows)}, cache,
                               ui.get_face_pipeline(config, _model.input_size), projections=(),
                               options=ui.job_options(config).inference).table
    position = dict(zip((data[int(row)].key for row in rows), rows))
    return table[["key", "content", "label", "emotion", "pred", "pred_emotion", "confidence"]].assign(
        row=[int(position[key]) for key in table["key"]])


@st.cache_data(show_spinner=False, max_entries=64)
def face_view(_recognizer: EmotionRecognizer, fingerprint: str, config: Config, spec: str, key: str,
              crop_size: int) -> FaceView:
    """:func:`fer_core.face_detail.view_face` of one face of ``spec``."""
    return view_face(_recognizer, dataset(config, spec), key, ui.get_face_pipeline(config, crop_size))


@st.cache_data(show_spinner=False, max_entries=512)
def face_map(_model: FerModel, fingerprint: str, config: Config, spec: str, key: str, method: str,
             target: str) -> FaceMap | None:
    """:func:`fer_core.face_detail.explain_face` of one face (maps from the result cache where stored)."""
    with _cache(config) as cache:
        return explain_face(_model, dataset(config, spec), key, cache, method, target,
                            ui.get_face_pipeline(config, _model.input_size), _explain_options(config))


@st.cache_data(show_spinner=False, max_entries=32)
def thumbnails(config: Config, spec: str, keys: tuple[str, ...], side: int = 48) -> list[str]:
    """A small JPEG ``data:`` URI of each sample's image as stored (centre square: the face of a
    pre-cropped or portrait image, without a detector pass), for hover previews."""
    data = dataset(config, spec)
    uris = []
    for row in rows_for_keys(data, keys):
        image = data.read(data[row])
        height, width = image.shape[:2]
        side_px = min(height, width)
        top, left = (height - side_px) // 2, (width - side_px) // 2
        uris.append(thumbnail_uri(image[top:top + side_px, left:left + side_px], side))
    return uris


@st.cache_data(show_spinner="Measuring the gap within each emotion...", max_entries=16)
def class_gap(_embeddings: Embeddings, fingerprint: str, specs: tuple[str, ...], limit: int | None) -> pd.DataFrame:
    """:func:`fer_core.domain_gap.per_class_gap` between the real and the synthetic labelled
    faces of these embeddings (memoised by model, datasets and sample)."""
    table = _embeddings.table
    real = ((table["domain"] == "real") & (table["label"] >= 0)).to_numpy()
    synthetic = ((table["domain"] == "synthetic") & (table["label"] >= 0)).to_numpy()
    labels = table["label"].to_numpy()
    return pd.DataFrame(per_class_gap(_embeddings.features[real], labels[real], _embeddings.features[synthetic],
                                      labels[synthetic]))


@st.cache_data(show_spinner="Measuring the gap on class-matched faces...", max_entries=16)
def matched_gap(_embeddings: Embeddings, fingerprint: str, specs: tuple[str, ...], limit: int | None) -> dict:
    """:func:`fer_core.domain_gap.domain_gap_report` on a class-matched draw of these embeddings
    (:func:`fer_core.domain_gap.class_matched_rows`, seed 0), with the faces it drew."""
    table = _embeddings.table
    real, synthetic = (np.flatnonzero((table["domain"] == domain).to_numpy()) for domain in ("real", "synthetic"))
    labels = table["label"].to_numpy()
    first, second = class_matched_rows(labels[real], labels[synthetic])
    real, synthetic = real[first], synthetic[second]
    report = domain_gap_report(_embeddings.features[real], _embeddings.features[synthetic], labels[real],
                               labels[synthetic])
    return {**report, "per_class": {EMOTIONS[label]: int(n) for label, n in zip(*np.unique(labels[real],
                                                                                        return_counts=True))}}


@st.cache_resource(show_spinner="Reading embeddings and projections from the cache (computing the missing ones)...",
                   max_entries=8)
def embeddings(_model: FerModel, fingerprint: str, config: Config, specs: tuple[str, ...], projection: str,
               limit: int | None) -> Embeddings:
    """Features of a stratified sample of ``limit`` faces of each dataset (seed 0; all when None)
    and their ``projection``, through
    :func:`fer_core.precompute.embed_datasets` (stored results are read, missing ones computed and stored).
    Held as a shared resource, not copied per rerun (10k faces' features are ~50 MB): read only."""
    with _cache(config) as cache:
        return embed_datasets(_model, {spec: dataset(config, spec) for spec in specs}, cache,
                              ui.get_face_pipeline(config, _model.input_size), projections=(projection,),
                              limit=limit, options=ui.job_options(config).inference)


@st.cache_data(show_spinner="Measuring the domain gap...", max_entries=16)
def gap(_model: FerModel, fingerprint: str, config: Config, real: str, synthetic: str, limit: int | None) -> dict:
    """The domain-gap report between two datasets on the model's cached features: the job
    ``fer-core gap`` runs (:func:`fer_core.jobs.precompute.gap`; stored under ``runs_dir/gap/``)."""
    return jobs.gap(config, real, synthetic, limit=limit, model=_model, options=ui.job_options(config))


@st.cache_data(show_spinner="Bootstrapping region shares...", max_entries=32)
def region_table(shares: np.ndarray, domains: tuple[str, ...], emotion: str) -> dict:
    """:func:`fer_core.explain.regions.region_report` of one class's faces of both domains."""
    return region_report(shares, np.zeros(len(shares), dtype=np.int64), np.asarray(domains), emotions=[emotion],
                         n_resamples=1000, n_permutations=1999)


@st.cache_data(show_spinner="Comparing the regions against the fixed-map null...", max_entries=32)
def template_comparison(maps: np.ndarray, keypoints: np.ndarray, domains: tuple[str, ...], cell_size: float) -> dict:
    """:func:`fer_core.explain.regions.compare_domains` of these maps (memoised by their values)."""
    return compare_domains(maps, keypoints, np.asarray(domains), n_resamples=200, n_permutations=1999,
                           cell_size=cell_size)
