"""Memoised calls into ``fer_core`` for the pages: a rerun (a widget change, a page switch)
reads the memo instead of computing again. Heavy results come from ``fer_core``'s result cache."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import streamlit as st
import torch

from dashboard import ui
from fer_core.cache import ResultCache, content_hash
from fer_core.config import Config
from fer_core.data import FaceDataset
from fer_core.errors import DataError
from fer_core.explain import explain, overlay
from fer_core.explain.regions import region_report
from fer_core.models import FerModel
from fer_core.precompute import (AttributionSet, Embeddings, embed_datasets, explain_dataset, gap_report,
                                 gap_report_folders)
from fer_core.runs import Run
from fer_core.views import class_rows, faces_of, rows_for_keys
from fer_core.workflows import dataset_for


@st.cache_resource(show_spinner="Opening the dataset...")
def dataset(config: Config, spec: str) -> FaceDataset:
    """A dataset by spec, opened once."""
    return dataset_for(config, spec)


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


@st.cache_data(show_spinner="Reading attribution maps from the cache (computing the missing ones)...",
               max_entries=64)
def attribution_set(_model: FerModel, fingerprint: str, config: Config, spec: str, emotion: str, method: str,
                    target: str, layer: str | None, count: int) -> AttributionSet:
    """``method``'s maps of the first ``count`` faces labelled ``emotion`` in ``spec``, through
    :func:`fer_core.precompute.explain_dataset` (stored maps are read, missing ones computed and stored)."""
    data = dataset(config, spec)
    rows = class_rows(data, emotion, count)
    if not len(rows):
        raise DataError(f"{spec} has no {emotion} faces")
    with _cache(config) as cache:
        return explain_dataset(_model, data.subset(rows), cache, method, target=target, layer=layer,
                               face_pipeline=ui.get_face_pipeline(config, _model.input_size), progress=False,
                               backend=config.inference.backend)


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
                              limit=limit, progress=False, backend=config.inference.backend)


@st.cache_data(show_spinner="Measuring the domain gap...", max_entries=16)
def gap(_model: FerModel, fingerprint: str, config: Config, real: str, synthetic: str, limit: int | None) -> dict:
    """The domain-gap report between two datasets on the model's cached features (also stored
    under ``runs_dir/gap/``, where ``fer-core gap`` puts it)."""
    with _cache(config) as cache:
        return gap_report(_model, dataset(config, real), dataset(config, synthetic), cache,
                          ui.get_face_pipeline(config, _model.input_size), limit=limit, progress=False,
                          out_dir=gap_report_folders(config)[0], backend=config.inference.backend)


@st.cache_data(show_spinner="Bootstrapping region shares...", max_entries=32)
def region_table(shares: np.ndarray, domains: tuple[str, ...], emotion: str) -> dict:
    """:func:`fer_core.explain.regions.region_report` of one class's faces of both domains."""
    return region_report(shares, np.zeros(len(shares), dtype=np.int64), np.asarray(domains), emotions=[emotion],
                         n_resamples=1000, n_permutations=1999)
