"""Dataset-level jobs (``fer-core predict | embed | explain | gap | sanity``): the configured
model and face pipeline, the result cache and the device resolved once, then the library's
passes over whole datasets (:mod:`fer_core.precompute`, :mod:`fer_core.explain`). Each returns
the summary the CLI prints."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fer_core.backends import InferenceOptions
from fer_core.cache import ResultCache
from fer_core.config import Config
from fer_core.data import FaceDataset
from fer_core.errors import DataError, InvalidArgument
from fer_core.explain import method_names, record_quality
from fer_core.explain.analysis.sanity import faithfulness_rows, most_faithful, randomisation_rows
from fer_core.inference import FacePreparer, predict_dataset, predict_photos
from fer_core.jobs.options import JobOptions
from fer_core.jobs.workflows import dataset_for, load_configured_model
from fer_core.models import FerModel
from fer_core.precompute import (DEFAULT_GAP_SAMPLE, EXPLAIN_BATCH_SIZE, Shard, embed_datasets, explain_dataset,
                                 gap_report, gap_report_folders, shard_folder)
from fer_core.scoring import DEFAULT_PROTOCOL
from fer_core.training import distributed
from fer_core.validation import Interval, StrOptions, validate_params


@contextmanager
def shard_group(options: JobOptions, shard: Shard | None) -> Iterator[InferenceOptions]:
    """Under torchrun: join its process group (so ranks can wait for each other) and use this
    rank's GPU; yields the options' inference settings on the device to run on."""
    inference = options.inference
    if not distributed.launched_by_torchrun():
        yield inference
        return
    if options.device.startswith("cuda"):
        inference = dataclasses.replace(inference, device=f"cuda:{os.environ['LOCAL_RANK']}")
    with distributed.process_group(inference.device):
        yield inference


def wait_for_every_shard(shard: Shard | None) -> None:
    """Under torchrun, wait until every rank has finished its shard."""
    if shard is not None and distributed.is_active():
        import torch.distributed as dist
        dist.barrier()


def predict(config: Config, model: FerModel, dataset: FaceDataset, out: Path, use_cache: bool = False,
            score_over: str = DEFAULT_PROTOCOL, shard: Shard | None = None) -> tuple[pd.DataFrame, Path]:
    """Predict every face of ``dataset`` into ``out/predictions.parquet`` (resumable; a shard into
    its own folder under ``out``), through the result cache with ``use_cache``. Returns the
    table and its folder."""
    options = JobOptions.from_config(config)
    out = out if shard is None else shard_folder(out, shard)
    cache = ResultCache.from_config(config) if use_cache else None
    try:
        with shard_group(options, shard) as inference:
            table = predict_dataset(model, dataset, out, face_pipeline=options.face_pipeline(model.input_size),
                                    cache=cache, score_over=score_over, options=inference)
            wait_for_every_shard(shard)
    finally:
        if cache is not None:
            cache.close()
    return table, out


def predict_folder(config: Config, model: FerModel, folder: Path, out: Path, score_over: str = DEFAULT_PROTOCOL,
                   limit: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Every face of every photo in ``folder`` (at most ``limit`` photos, drawn with ``seed``)
    into ``out/predictions.parquet``: one row per detected face, no labels."""
    options = JobOptions.from_config(config)
    return predict_photos(model, folder, out, options.face_pipeline(model.input_size), score_over=score_over,
                          limit=limit, seed=seed, options=options.inference)


def embed(config: Config, specs: Sequence[str], weights: Path | None = None, projections: Sequence[str] = ("pca",),
          seed: int = 0, limit: int | None = None, per_class: int | None = None, sample_seed: int = 0,
          score_over: str = DEFAULT_PROTOCOL, shard: Shard | None = None) -> dict[str, Any]:
    """Penultimate features of the datasets ``specs`` (and their 2-D ``projections``, seeded
    by ``seed``) into the result cache; ``limit`` / ``per_class`` / ``sample_seed``: a seeded
    stratified sample; ``shard``: one block of the faces (projections need them all)."""
    options = JobOptions.from_config(config)
    datasets = {spec: dataset_for(config, spec) for spec in dict.fromkeys(specs)}
    model = load_configured_model(config, weights)
    started = time.perf_counter()
    with ResultCache.from_config(config) as cache, shard_group(options, shard) as inference:
        passes = dict(face_pipeline=options.face_pipeline(model.input_size), seed=seed, limit=limit,
                      per_class=per_class, sample_seed=sample_seed, score_over=score_over)
        result = embed_datasets(model, datasets, cache, projections=projections, shard=shard, options=inference,
                                **passes)
        summary = {"shard": None if shard is None else str(shard), **result.summary()}
        wait_for_every_shard(shard)
        if shard is not None and distributed.is_active() and distributed.is_main() and projections:
            whole = embed_datasets(model, datasets, cache, projections=projections,
                                   options=dataclasses.replace(inference, progress=False), **passes)
            summary.update(projections=list(whole.projections), projections_computed=list(whole.projections_computed))
        elif shard is not None and projections:
            summary["note"] = "projections need every face: run fer-core embed again without --shard"
    return {**summary, "cache": str(cache.path), "seconds": round(time.perf_counter() - started, 2)}


@validate_params({"method": [StrOptions(method_names)]})  # before the model is loaded
def explain(config: Config, dataset: FaceDataset, method: str, weights: Path | None = None,
            target: str = "predicted", layer: str | None = None, map_size: int = 56,
            batch_size: int = EXPLAIN_BATCH_SIZE, params: Mapping[str, Any] | None = None,
            shard: Shard | None = None) -> dict[str, Any]:
    """Attribution maps of ``method`` (its settings ``params``) for ``target`` on every face of
    ``dataset`` into the result cache, ``batch_size`` faces at a time."""
    options = JobOptions.from_config(config)
    model = load_configured_model(config, weights)
    started = time.perf_counter()
    with ResultCache.from_config(config) as cache, shard_group(options, shard) as inference:
        result = explain_dataset(model, dataset, cache, method, target=target, layer=layer, map_size=map_size,
                                 face_pipeline=options.face_pipeline(model.input_size), shard=shard,
                                 options=dataclasses.replace(inference, batch_size=batch_size), **(params or {}))
        wait_for_every_shard(shard)
    summary = {"dataset": dataset.label, "target": target, "shard": None if shard is None else str(shard),
               **result.summary()}
    if len(result.diagnostics.columns):
        summary["diagnostics_median"] = {name: float(result.diagnostics[name].median())
                                         for name in result.diagnostics.columns}
    return {**summary, "cache": str(cache.path), "seconds": round(time.perf_counter() - started, 2)}


def gap(config: Config, real_spec: str, synthetic_spec: str, weights: Path | None = None,
        sample: int | None = DEFAULT_GAP_SAMPLE, limit: int | None = None, per_class: int | None = None,
        seed: int = 0, *, model: FerModel | None = None, options: JobOptions | None = None) -> dict[str, Any]:
    """The domain-gap report of ``real_spec`` vs ``synthetic_spec`` on cached features (at most
    ``sample`` faces per domain enter the metrics; None: all), written under ``runs_dir/gap/``.
    ``model``: one already loaded (else the one ``weights`` or the config names); ``options``:
    the config's, already resolved (:meth:`JobOptions.from_config`; e.g. without progress bars)."""
    options = options if options is not None else JobOptions.from_config(config)
    real, synthetic = dataset_for(config, real_spec), dataset_for(config, synthetic_spec)
    model = model if model is not None else load_configured_model(config, weights)
    with ResultCache.from_config(config) as cache:
        return gap_report(model, real, synthetic, cache, options.face_pipeline(model.input_size), sample=sample,
                          limit=limit, per_class=per_class, seed=seed, out_dir=gap_report_folders(config)[0],
                          options=options.inference)


@validate_params({"faces": [Interval(Integral, 2, None)]})
def sanity(config: Config, dataset: FaceDataset, methods: Sequence[str] = (), weights: Path | None = None,
           faces: int = 32, depth: int = 3, steps: int = 16, seed: int = 0) -> dict[str, Any]:
    """Saliency sanity checks of ``methods`` (default: every registered one) on ``faces`` faces
    spread over ``dataset``, stored for the dashboard: per method its verdicts and rows, and
    ``most_faithful`` (the default for region statistics)."""
    methods = list(methods) or method_names()
    registered = StrOptions(method_names)
    unknown = sorted({name for name in methods if not registered.is_satisfied_by(name)})
    if unknown:
        raise InvalidArgument(f"sanity() argument 'methods': unknown attribution method(s) {unknown}; "
                              f"expected some of {registered.options}")
    model = load_configured_model(config, weights)
    preparer = FacePreparer(model, JobOptions.from_config(config).face_pipeline(model.input_size))
    picks = np.unique(np.linspace(0, len(dataset) - 1, min(faces, len(dataset))).astype(int))
    tensors = [face.tensor for face in (preparer.prepare(dataset, dataset[int(i)]) for i in picks)
               if face.tensor is not None]
    if len(tensors) < 2:
        raise DataError(f"{dataset.label}: fewer than 2 readable faces to check on")
    batch, results = torch.stack(tensors), {}
    for number, method in enumerate(methods, 1):  # one method at a time: the job log shows n/N
        print(f"sanity {number}/{len(methods)}: {method} on {len(tensors)} faces "
              f"({100 * (number - 1) // len(methods)}% done)", file=sys.stderr, flush=True)
        results.update(record_quality(config, model, batch, [method],
                                      source=f"{dataset.label}, {len(tensors)} faces spread", depth=depth,
                                      steps=steps, seed=seed))
    chosen = most_faithful(results)
    rows, faithful = randomisation_rows(results), {row["method"]: row for row in faithfulness_rows(results)}
    return {"methods": {method: {"passed": result["passed"], "randomisation_passed": result["randomisation"]["passed"],
                                 "faithfulness_passed": result["faithfulness"]["passed"],
                                 "randomisation": [row for row in rows if row["method"] == method],
                                 "faithfulness": faithful[method],
                                 "faithfulness_rank": chosen["ranking"].index(method) + 1,
                                 "statistics_default": method == chosen["method"]}
                        for method, result in results.items()},
            "most_faithful": chosen}


__all__ = ["embed", "explain", "gap", "predict", "predict_folder", "sanity", "shard_group", "wait_for_every_shard"]
