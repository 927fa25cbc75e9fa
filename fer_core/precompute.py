"""Dataset-level precomputation over the one result cache: attribution maps, embeddings with
their 2-D projections, and the real-vs-synthetic domain-gap report.

Everything here reads what :class:`~fer_core.cache.ResultCache` already holds and computes
only the missing entries, batch by batch, each batch stored in one transaction: a killed job
leaves whole batches or nothing, and running it again continues where it stopped. A
:class:`Shard` (``--shard K/N``, or ``torchrun``'s ``RANK``/``WORLD_SIZE``) splits a dataset
into contiguous blocks so several processes fill one cache; together they store exactly the
entries one process would.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fer_core.backends import InferenceOptions, on_device
from fer_core.cache import CacheKey, ResultCache
from fer_core.config import Config
from fer_core.data import FaceDataset
from fer_core.domain_gap import PROJECTIONS, domain_gap_report, project
from fer_core.errors import DataError, InvalidArgument, MissingResultsError
from fer_core.explain import canonical_layer, explain, method_defaults, method_names
from fer_core.explain.analysis.regions import crop_keypoints
from fer_core.faces import FaceDetector, FacePipeline
from fer_core.extraction import BatchConsumer, FacePreparer, PreparedFace, extract, forward_chunks
from fer_core.labels import EMOTIONS
from fer_core.models import FerModel
from fer_core.sampling import SampledDataset, Sampling, sampled_name
from fer_core.scoring import DEFAULT_PROTOCOL, scoring_for
from fer_core.runs import PREDICTIONS_FILE, provenance_record, utc_now, write_json_atomic, write_parquet_atomic
from fer_core.validation import Interval, StrOptions, validate_params

#: What ``target`` may be besides an emotion name: each face's top class, or its label.
TARGET_MODES = ("predicted", "true")
#: Side of the stored attribution maps unless asked otherwise (never above the model's input).
DEFAULT_MAP_SIZE = 56
#: Faces per batch of attribution maps unless asked otherwise (their gradients take more memory
#: than a forward pass).
EXPLAIN_BATCH_SIZE = 16
#: Faces per dataset the domain-gap report draws at most (its kernels are quadratic in size).
DEFAULT_GAP_SAMPLE = 2000
_NO_KEYPOINTS = np.full((6, 2), np.nan, dtype=np.float32)
#: The entry of a face's ``diagnostics`` record that holds the scale of its float16 map.
SCALE = "map_scale"
#: The side of stored maps a caller may ask for (:func:`stored_map_size`).
MAP_SIZE = [Interval(Integral, 4, None)]


@validate_params({"index": [Interval(Integral, 0, None)], "count": [Interval(Integral, 1, None)]})
@dataclass(frozen=True)
class Shard:
    """Block ``index`` of ``count`` contiguous blocks of a dataset (``index`` counts from 0)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.index >= self.count:  # the bound that depends on the other argument
            raise InvalidArgument(f"shard: index {self.index!r} is outside 0..{self.count - 1} "
                                  f"(K counts from 0: 0/{self.count} .. {self.count - 1}/{self.count})")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """``"K/N"`` (e.g. ``"0/4"``) as a shard."""
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not match:
            raise InvalidArgument(f"shard: expected K/N such as 0/2 (K counts from 0), got {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    @classmethod
    def from_environment(cls) -> "Shard | None":
        """This process's shard under ``torchrun`` (``RANK`` of ``WORLD_SIZE``); None outside it."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return None
        return cls(int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"]))

    def block(self, size: int) -> range:
        """The positions ``0 <= i < size`` this shard owns (blocks differ in size by at most one)."""
        return range(self.index * size // self.count, (self.index + 1) * size // self.count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def select(dataset: FaceDataset, limit: int | None = None, shard: Shard | None = None,
           per_class: int | None = None, seed: int = 0) -> FaceDataset:
    """The faces a job runs on: a seeded sample of ``dataset`` stratified by class (``limit``
    faces in proportion to the classes, or ``per_class`` of each; :class:`Sampling`), all of
    them when neither is given, then this ``shard``'s contiguous block of those. A sample that
    holds every face is the dataset itself; a sample keeps its :class:`Sampling` (and label)
    through sharding."""
    sampling = Sampling(limit, per_class, seed)
    if len(dataset) == 0:
        raise DataError(f"dataset {dataset.name} has no images")
    positions = sampling.indices(dataset.labels) if sampling.active else np.arange(len(dataset))
    if len(positions) == len(dataset):
        positions, sampling = np.arange(len(dataset)), Sampling()
    block = (shard or Shard(0, 1)).block(len(positions))
    positions = positions[block.start:block.stop]
    if sampling.active:
        return SampledDataset(dataset, positions, sampling)
    if len(positions) == len(dataset):
        return dataset
    if isinstance(dataset, SampledDataset):
        return SampledDataset(dataset.parent, dataset.indices[positions], dataset.sampling)
    return dataset.subset(positions)


def shard_folder(out_dir: Path | str, shard: Shard) -> Path:
    """Where a sharded ``predict`` writes its part: ``out_dir/shards/<K>-of-<N>/``."""
    return Path(out_dir) / "shards" / f"{shard.index}-of-{shard.count}"


def merge_shard_predictions(out_dir: Path | str, count: int) -> pd.DataFrame | None:
    """Once every one of ``count`` shards has written its table, their concatenation (the
    single-process table, row for row) written to ``out_dir/predictions.parquet``; else None."""
    parts = [shard_folder(out_dir, Shard(k, count)) / PREDICTIONS_FILE for k in range(count)]
    if not all(part.is_file() for part in parts):
        return None
    table = pd.concat([pd.read_parquet(part) for part in parts], ignore_index=True)
    write_parquet_atomic(table, Path(out_dir) / PREDICTIONS_FILE)
    return table


def _json_param(name: str, value: Any) -> str:
    if isinstance(value, torch.Tensor | np.ndarray):
        raise InvalidArgument(f"parameter {name!r} is an array; dataset attributions are cached by their settings, "
                          "so give it by name (e.g. baseline='blurred')")
    try:
        return json.dumps(value, sort_keys=True)
    except TypeError:
        raise InvalidArgument(f"parameter {name!r}: expected a JSON value, got {type(value).__name__}") from None


# --------------------------------------------------------------------------------------------
# attribution maps


@dataclass(frozen=True)
class AttributionSet:
    """One method's maps over a dataset, in dataset order (explained faces only).

    ``table`` has a row per face: ``key``, ``source``, ``content`` (image hash), ``label``
    (index into :data:`EMOTIONS`, -1 unknown) and ``target`` / ``target_emotion`` (the class
    explained, an index into the model's emotions). ``maps`` is ``(N, S, S)`` float32 (stored as
    float16), ``keypoints`` ``(N, 6, 2)`` fractions of the model's input crop (NaN where no
    face was located), ``diagnostics`` the method's per-face measurements (e.g. LRP's
    ``conservation_error``), one column each. ``computed`` faces were run now, the rest read
    from the cache; ``skipped`` lists sample keys not explained (unreadable, or no label for
    ``target="true"``).
    """

    table: pd.DataFrame
    maps: np.ndarray
    keypoints: np.ndarray
    diagnostics: pd.DataFrame
    method: str
    params: Mapping[str, Any]
    computed: int
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Counts and settings, JSON-ready."""
        located = int(np.isfinite(self.keypoints).all(axis=(1, 2)).sum()) if len(self.keypoints) else 0
        return {"method": self.method, "params": dict(self.params), "faces": len(self.table),
                "computed": self.computed, "cached": len(self.table) - self.computed, "skipped": len(self.skipped),
                "map_size": int(self.maps.shape[-1]) if self.maps.ndim == 3 else None, "keypoints_located": located}


@validate_params({"map_size": MAP_SIZE})
def stored_map_size(model: FerModel, map_size: int) -> int:
    """The side attribution maps are stored at: ``map_size`` (at least 4 pixels), but never above
    the model's input."""
    return min(int(map_size), model.input_size)


def downsample_maps(maps: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """``(N, H, W)`` maps area-averaged to ``(N, side, side)`` and divided by their largest
    absolute value, as float16 (what the cache stores: float16's range and precision then fit
    any method's scale), and those ``(N,)`` scales. ``float16 map * scale`` is the map; each value
    is a mean over the pixels it covers, so a map's sum scales by ``side² / (H W)``."""
    tensor = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]
    if tensor.shape[-1] != side or tensor.shape[-2] != side:
        tensor = F.interpolate(tensor, size=(side, side), mode="area")
    small = tensor[:, 0].numpy().astype(np.float64)
    with np.errstate(invalid="ignore"):
        scales = np.abs(small).max(axis=(1, 2)) if len(small) else np.zeros(0)
    scales = np.where(np.isfinite(scales) & (scales > 0), scales, 1.0)
    return (small / scales[:, None, None]).astype(np.float16), scales


def locate_keypoints(prepared: PreparedFace, locator: FaceDetector | None) -> np.ndarray:
    """The face's 6 keypoints as fractions of the model's input crop: the face pipeline's
    when it detected the face, else ``locator`` run on the crop the model saw (pre-cropped
    data, by :func:`fer_core.explain.analysis.regions.crop_keypoints`), else NaN (where
    ``regions.PRECROPPED_TEMPLATE`` can stand in)."""
    if prepared.keypoints is not None:
        return np.asarray(prepared.keypoints, dtype=np.float32)
    if locator is None or prepared.pixels is None:
        return _NO_KEYPOINTS
    points, detected = crop_keypoints([prepared.pixels], locator)
    return (points[0] / prepared.pixels.shape[0]).astype(np.float32) if detected[0] else _NO_KEYPOINTS


def _per_face(diagnostics: Mapping[str, Any], count: int) -> list[dict[str, float]]:
    """The method's per-face diagnostics (lists with one number per face) as one dict per face;
    batch-level values are left out (they would depend on how faces were batched)."""
    columns = {name: values for name, values in diagnostics.items()
               if isinstance(values, (list, tuple, np.ndarray)) and len(values) == count
               and all(isinstance(v, (int, float, np.number)) for v in values)}
    return [{name: float(values[i]) for name, values in columns.items()} for i in range(count)]


class _Attributions(BatchConsumer):
    """:func:`explain_dataset`'s part of the extraction pass: per face, the class to explain
    (from the pass's logits for ``target="predicted"``), its stored map, diagnostics and
    keypoints, and for the missing ones the map of the prepared batch (with the keypoints of
    the crop the model saw)."""

    def __init__(self, model: FerModel, cache: ResultCache, method: str, settings: dict[str, Any], side: int,
                 preparation: str, locator: FaceDetector | None, target: str, targets: np.ndarray | None,
                 on_batch: Callable[[int], object]) -> None:
        self.model, self.cache, self.method, self.settings, self.side = model, cache, method, settings, side
        self.preparation, self.locator, self.on_batch = preparation, locator, on_batch
        self.key_settings = json.dumps({name: json.loads(_json_param(name, value)) for name, value in settings.items()},
                                       sort_keys=True)
        self.fixed = targets  # None: each face's predicted class
        self.targets: dict[int, int] = {}
        self.row_keys: dict[int, dict[str, CacheKey]] = {}
        self.results: dict[CacheKey, np.ndarray] = {}
        self.stored_now: set[str] = set()
        self.explained = 0
        self.what = f"{method} maps (target {target})"

    def _keys(self, content: str, target: int) -> dict[str, CacheKey]:
        entry = {"method": self.method, "target": self.model.emotions[target], "settings": self.key_settings,
                 "map_size": self.side}
        fingerprint = self.model.fingerprint
        return {"attribution": CacheKey("attribution", fingerprint, self.preparation, content, entry),
                "diagnostics": CacheKey("diagnostics", fingerprint, self.preparation, content, entry),
                "keypoints": CacheKey("keypoints", fingerprint, self.preparation, content,
                                      {"locator": self.locator.fingerprint() if self.locator else "none"})}

    def look_up(self, rows: Sequence[int], contents: Sequence[str | None], logits: np.ndarray) -> list[int]:
        if self.fixed is None:
            readable = np.isfinite(logits[rows]).all(axis=1)
            targets = np.where(readable, np.nan_to_num(logits[rows]).argmax(axis=1), -1)
        else:
            targets = self.fixed[rows]
        wanted = [(row, int(target)) for row, target in zip(rows, targets) if target >= 0]
        for row, target in wanted:
            self.targets[row] = target
            self.row_keys[row] = self._keys(contents[row], target)
        found = self.cache.get_many(key for row, _ in wanted for key in self.row_keys[row].values())
        self.results.update(found)
        return [row for row, _ in wanted if contents[row] in self.stored_now
                or not all(key in found for key in self.row_keys[row].values())]

    def compute(self, rows: Sequence[int], faces: Sequence[PreparedFace]) -> dict[CacheKey, np.ndarray]:
        batch = torch.stack([face.tensor for face in faces])
        result = explain(self.model, batch, self.method, target=[self.targets[row] for row in rows], **self.settings)
        maps, scales = downsample_maps(result.maps, self.side)
        new: dict[CacheKey, np.ndarray] = {}
        for row, face, face_map, scale, measured in zip(rows, faces, maps, scales,
                                                        _per_face(result.diagnostics, len(rows))):
            keys = self.row_keys[row]
            new[keys["attribution"]] = face_map
            record = {SCALE: float(scale), **measured}
            new[keys["diagnostics"]] = np.frombuffer(json.dumps(record, sort_keys=True).encode(), dtype=np.uint8)
            new[keys["keypoints"]] = locate_keypoints(face, self.locator)
        self.results.update(new)
        return new

    def stored(self, rows: Sequence[int]) -> None:
        self.stored_now.update(self.row_keys[row]["attribution"].content for row in rows)
        self.explained += len(rows)
        if rows:
            self.on_batch(len(rows))

    def attribution_set(self, dataset: FaceDataset, contents: Sequence[str | None]) -> AttributionSet:
        """The explained faces in dataset order (stored or computed now)."""
        done = [row for row in sorted(self.row_keys) if self.row_keys[row]["attribution"] in self.results]
        samples = [dataset[row] for row in done]
        table = pd.DataFrame({
            "key": [s.key for s in samples], "source": [s.source for s in samples],
            "content": [contents[row] for row in done],
            "label": np.array([s.label for s in samples], dtype=np.int64),
            "target": np.array([self.targets[row] for row in done], dtype=np.int64),
            "target_emotion": [self.model.emotions[self.targets[row]] for row in done]})
        records = pd.DataFrame([json.loads(self.results[self.row_keys[row]["diagnostics"]].tobytes()) for row in done],
                               index=table.index, columns=None if done else [SCALE])
        scales = records.pop(SCALE).to_numpy(np.float64)
        maps = np.stack([self.results[self.row_keys[row]["attribution"]].astype(np.float64) * scale
                         for row, scale in zip(done, scales)]).astype(np.float32) if done \
            else np.zeros((0, self.side, self.side), np.float32)
        keypoints = np.stack([self.results[self.row_keys[row]["keypoints"]] for row in done]) if done \
            else np.zeros((0, 6, 2), np.float32)
        explained = set(done)
        skipped = [dataset[row].key for row in range(len(dataset)) if row not in explained]
        return AttributionSet(table, maps, keypoints, records, self.method, json.loads(self.key_settings),
                              self.explained, skipped)


def _fixed_targets(model: FerModel, dataset: FaceDataset, target: str) -> np.ndarray | None:
    """Per face, the model class to explain (-1: none) when it does not depend on the model's
    output; None for ``"predicted"`` (each face's top class, from the extraction pass)."""
    if target == "predicted":
        return None
    if target == "true":
        index = {emotion: i for i, emotion in enumerate(model.emotions)}
        return np.array([index.get(EMOTIONS[label], -1) if label >= 0 else -1 for label in dataset.labels])
    if target in model.emotions:
        return np.full(len(dataset), model.emotions.index(target))
    raise InvalidArgument(f"target: expected one of {list(TARGET_MODES)} or an emotion of the model "
                          f"{list(model.emotions)}, got {target!r}")


@validate_params({"method": [StrOptions(method_names)], "map_size": MAP_SIZE})
def explain_dataset(model: FerModel, dataset: FaceDataset, cache: ResultCache, method: str,
                    target: str = "predicted", layer: str | None = None, map_size: int = DEFAULT_MAP_SIZE,
                    face_pipeline: FacePipeline | None = None, limit: int | None = None, shard: Shard | None = None,
                    on_batch: Callable[[int], object] = lambda n: None, compute: bool = True,
                    options: InferenceOptions = InferenceOptions(batch_size=EXPLAIN_BATCH_SIZE),
                    **params: Any) -> AttributionSet:
    """Attribution maps of ``method`` (any name of :func:`fer_core.explain.method_names`) for
    every face of ``dataset``, read from ``cache`` where stored and computed otherwise.

    Args:
        target: ``"predicted"`` (each face's top class over all the model's classes),
            ``"true"`` (its label; unlabelled faces are skipped) or an emotion name.
        layer: the layer of layer-based methods (Grad-CAM); None is the method's default.
        map_size: side of the stored maps (area-averaged, float16; at most the input size).
        face_pipeline: finds and aligns faces in images that are not pre-cropped; its
            detector also places keypoints on pre-cropped faces.
        limit, shard: a stratified sample of ``limit`` faces (:func:`select`), then this shard's block.
        on_batch: called with the number of faces after each stored batch of maps.
        compute: False reads stored maps only: a face without its map (or, for
            ``target="predicted"``, its logits) raises :class:`~fer_core.errors.MissingResultsError`.
        options: faces per batch (default :data:`EXPLAIN_BATCH_SIZE`), device, progress bar, and
            the backend that computes the logits ``target="predicted"`` needs (the maps always
            come from the torch model: they need its gradients); :class:`~fer_core.backends.InferenceOptions`.
        params: the method's settings (:func:`fer_core.explain.method_defaults`).

    One pass of the extraction engine (:func:`fer_core.extraction.extract`) reads, hashes and
    prepares each face once: the predicted class comes from its forward pass (stored with the
    logits), the maps from the same prepared batch. Each entry is keyed by the model's
    fingerprint, the preprocessing and face pipeline, the image's content hash and ``method``,
    the explained class, every method setting and the map size; each batch's logits, maps,
    keypoints and diagnostics are stored in one transaction.
    """
    settings = method_defaults(method)
    if layer is not None:
        if "layer" not in settings:
            raise InvalidArgument(f"method {method!r} has no layer; layer-based methods: "
                                  f"{[m for m in method_names() if 'layer' in method_defaults(m)]}")
        params = {**params, "layer": canonical_layer(model, layer)}  # the default, named or not: one key
    unknown = sorted(set(params) - set(settings))
    if unknown:
        raise InvalidArgument(f"{method} has no parameter(s) {unknown}; its parameters: {sorted(settings)}")
    settings.update(params)
    side = stored_map_size(model, map_size)
    dataset = select(dataset, limit, shard)
    fixed = _fixed_targets(model, dataset, target)
    on_device(model, options.device)
    preparer = FacePreparer(model, face_pipeline)
    locator = face_pipeline.detector if face_pipeline is not None else None
    attributions = _Attributions(model, cache, method, settings, side, preparer.fingerprint(dataset.pre_cropped),
                                 locator, target, fixed, on_batch)
    with tqdm(total=len(dataset), desc=f"{method} {dataset.name}", unit="face", disable=not options.progress) as bar:
        results = extract(model, dataset, preparer, range(len(dataset)), cache, options.batch_size,
                          on_progress=bar.update, backend=options.backend, consumer=attributions,
                          forward=fixed is None, compute=compute)
    return attributions.attribution_set(dataset, results.contents)


# --------------------------------------------------------------------------------------------
# embeddings and projections


@dataclass(frozen=True)
class Embeddings:
    """Penultimate features of one or more datasets, row for row with ``table``: ``dataset`` (its
    name, with its sampling when sampled: :func:`sampled_name`), ``domain``, ``key``, ``source``,
    ``content``, ``label`` / ``emotion`` (label name, ``""`` unknown), ``pred`` / ``pred_emotion`` /
    ``confidence`` (the class predicted under the scoring protocol, :mod:`fer_core.scoring`, and
    its softmax probability over all the model's classes), then ``<projection>_x`` and
    ``<projection>_y`` for each projection asked for. ``computed`` faces were run now."""

    table: pd.DataFrame
    features: np.ndarray
    computed: int
    projections: tuple[str, ...] = ()
    projections_computed: tuple[str, ...] = ()

    def summary(self) -> dict[str, Any]:
        """Counts per dataset and what was computed, JSON-ready."""
        return {"faces": len(self.table), "computed": self.computed, "cached": len(self.table) - self.computed,
                "datasets": {str(k): int(v) for k, v in self.table["dataset"].value_counts(sort=False).items()},
                "feature_dim": int(self.features.shape[1]) if self.features.ndim == 2 else None,
                "projections": list(self.projections), "projections_computed": list(self.projections_computed)}


def _dataset_rows(model: FerModel, name: str, dataset: FaceDataset, cache: ResultCache | None,
                  face_pipeline: FacePipeline | None, chunk_size: int, bar: tqdm, options: InferenceOptions,
                  score_over: str, compute: bool = True) -> tuple[pd.DataFrame, np.ndarray, int]:
    preparer = FacePreparer(model, face_pipeline)
    preparation = preparer.fingerprint(dataset.pre_cropped)
    scoring = scoring_for(score_over, model.emotions, dataset.emotions)
    frames, blocks, computed = [], [], 0
    for results in forward_chunks(model, dataset, preparer, range(len(dataset)), cache, options.batch_size,
                                  chunk_size, bar.update, options.backend, compute):
        usable = results.usable
        computed += results.computed
        probabilities, predicted = scoring.score(results.logits[usable])
        labels = np.array([results.faces[row].sample.label for row in usable], dtype=np.int64)
        frames.append(pd.DataFrame({
            "dataset": sampled_name(name, dataset), "domain": dataset.domain,
            "key": [results.faces[row].sample.key for row in usable],
            "source": [results.faces[row].sample.source for row in usable],
            "content": [results.contents[row] for row in usable],
            "preparation": preparation,
            "label": labels, "emotion": [EMOTIONS[label] if label >= 0 else "" for label in labels],
            "pred": predicted, "pred_emotion": [EMOTIONS[p] for p in predicted],
            "confidence": probabilities[np.arange(len(usable)), predicted].astype(np.float32)}))
        blocks.append(results.features[usable])
    return pd.concat(frames, ignore_index=True), np.concatenate(blocks), computed


def projection_key(model: FerModel, table: pd.DataFrame, method: str, seed: int,
                   params: Mapping[str, Any]) -> tuple[CacheKey, list[str]]:
    """The cache key of ``method``'s projection of the faces in ``table`` (keyed by the *set* of
    their ``preparation:content`` ids, so order and repeats do not matter) and those ids, sorted:
    the stored projection's rows."""
    ids = sorted(set(table["preparation"] + ":" + table["content"]))
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    preparations = hashlib.sha256("\n".join(sorted(set(table["preparation"]))).encode()).hexdigest()[:16]
    key = CacheKey("projection", model.fingerprint, preparations, digest,
                   {"method": method, "seed": seed, "params": _json_param("params", dict(params))})
    return key, ids


@validate_params({"method": [StrOptions(PROJECTIONS)]})
def cached_projection(model: FerModel, table: pd.DataFrame, features: np.ndarray, cache: ResultCache | None,
                      method: str, seed: int = 0, compute: bool = True, **params: Any) -> tuple[np.ndarray, bool]:
    """``(N, 2)`` coordinates of ``method`` (see :data:`fer_core.domain_gap.PROJECTIONS`) for the
    rows of ``table``/``features``, and whether they were computed now (else read from ``cache``).
    Identical images are projected once. With ``compute=False`` a projection that is not stored
    raises :class:`~fer_core.errors.MissingResultsError`."""
    key, ids = projection_key(model, table, method, seed, params)
    row_ids = (table["preparation"] + ":" + table["content"]).to_numpy()
    position = {identifier: i for i, identifier in enumerate(ids)}
    order = np.array([position[identifier] for identifier in row_ids], dtype=np.int64)
    stored = None if cache is None else cache.get(key)
    if stored is not None and stored.shape == (len(ids), 2):
        return stored[order].astype(np.float64), False
    if not compute:
        raise MissingResultsError(f"{method} projection of this set", len(table), len(table))
    first_row = np.full(len(ids), -1, dtype=np.int64)
    first_row[order[::-1]] = np.arange(len(order))[::-1]
    coordinates = project(features[first_row], method, seed=seed, **params).astype(np.float32)
    if cache is not None:
        cache.put(key, coordinates)
    return coordinates[order].astype(np.float64), True


def embed_datasets(model: FerModel, datasets: Mapping[str, FaceDataset], cache: ResultCache | None,
                   face_pipeline: FacePipeline | None = None, projections: Sequence[str] = ("pca",),
                   projection_params: Mapping[str, Mapping[str, Any]] | None = None, seed: int = 0,
                   chunk_size: int = 1024, limit: int | None = None, shard: Shard | None = None,
                   per_class: int | None = None, sample_seed: int = 0, score_over: str = DEFAULT_PROTOCOL,
                   compute: bool = True, options: InferenceOptions = InferenceOptions()) -> Embeddings:
    """Features of every readable face of ``datasets`` (``{name: dataset}``) and their 2-D
    ``projections`` (``pca``, ``tsne``, ``umap``) computed over all datasets together.

    Features (with logits, in the same pass) and projections are read from ``cache`` when
    stored and stored when computed. ``limit`` / ``per_class`` draw a stratified sample of
    each dataset (seeded by ``sample_seed``; :func:`select`), then ``shard`` takes its block; a
    shard only stores features (projections need every face: run again without a shard).
    ``score_over`` is the protocol of the ``pred`` column (:data:`fer_core.scoring.PROTOCOLS`);
    ``options`` how the model runs (:class:`~fer_core.backends.InferenceOptions`). ``compute=False``
    reads stored results only (:class:`~fer_core.errors.MissingResultsError` for any that are not).
    """
    projection = StrOptions(PROJECTIONS)
    unknown = [p for p in projections if not projection.is_satisfied_by(p)]
    if unknown:
        raise InvalidArgument(f"embed_datasets() argument 'projections': unknown projection(s) {unknown}; "
                              f"expected some of {projection.options}")
    if not datasets:
        raise InvalidArgument("embed_datasets needs at least one dataset")
    chosen = {name: select(dataset, limit, shard, per_class, sample_seed) for name, dataset in datasets.items()}
    on_device(model, options.device)
    frames, blocks, computed = [], [], 0
    with tqdm(total=sum(len(d) for d in chosen.values()), desc="embed " + ", ".join(chosen), unit="face",
              disable=not options.progress) as bar:
        for name, dataset in chosen.items():
            frame, block, count = _dataset_rows(model, name, dataset, cache, face_pipeline, chunk_size, bar,
                                                options, score_over, compute)
            frames.append(frame)
            blocks.append(block)
            computed += count
    table = pd.concat(frames, ignore_index=True)
    features = np.concatenate(blocks)
    made: list[str] = []
    if shard is None or shard.count == 1:
        params = projection_params or {}
        for method in projections:
            coordinates, new = cached_projection(model, table, features, cache, method, seed, compute,
                                                 **dict(params.get(method, {})))
            table[f"{method}_x"], table[f"{method}_y"] = coordinates[:, 0], coordinates[:, 1]
            made += [method] if new else []
    return Embeddings(table, features, computed, tuple(projections) if shard is None or shard.count == 1 else (),
                      tuple(made))


# --------------------------------------------------------------------------------------------
# domain gap


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def gap_report_folders(config: Config) -> tuple[Path, Path]:
    """Where domain-gap reports are written, ``paths.runs_dir/gap/``, and the older place still
    read, ``paths.cache_dir/gap/`` (the cache is prunable; results belong with the runs)."""
    return config.resolve(config.paths.runs_dir) / "gap", config.resolve(config.paths.cache_dir) / "gap"


def gap_report_name(fingerprint: str, real: str, synthetic: str, limit: int | None, sample: int | None,
                    seed: int) -> str:
    """``<model>-<real>-<synthetic>-limit<N|all>-sample<N|all>-seed<S>.json``: reports of other
    face limits, samples or seeds never overwrite each other."""
    return (f"{fingerprint}-{_slug(real)}-{_slug(synthetic)}-limit{limit or 'all'}-sample{sample or 'all'}"
            f"-seed{seed}.json")


@validate_params({"sample": [Interval(Integral, 5, None), None]})
def gap_report(model: FerModel, real: FaceDataset, synthetic: FaceDataset, cache: ResultCache | None,
               face_pipeline: FacePipeline | None = None, sample: int | None = DEFAULT_GAP_SAMPLE,
               limit: int | None = None, seed: int = 0, out_dir: Path | str | None = None,
               per_class: int | None = None, options: InferenceOptions = InferenceOptions()) -> dict[str, Any]:
    """:func:`fer_core.domain_gap.domain_gap_report` between ``real`` and ``synthetic`` faces on
    the model's cached penultimate features, with what it was computed on.

    ``limit`` / ``per_class`` first draw a stratified sample of each dataset (:func:`select`,
    seeded by ``seed``); of those, at most ``sample`` faces per domain enter the metrics (a
    seeded random draw; None: all);
    the per-class centroid distances use the labelled faces. With ``out_dir`` (normally the first
    of :func:`gap_report_folders`) the report is also written to ``out_dir/``:func:`gap_report_name`.
    ``options``: how the model runs for the features not stored (:class:`~fer_core.backends.InferenceOptions`).
    """
    if real.label == synthetic.label:
        raise InvalidArgument(f"real and synthetic are the same dataset ({real.label}); compare two different ones")
    sample = None if sample is None else int(sample)  # a numpy integer is written to the report as a number
    chosen = {dataset.label: select(dataset, limit, per_class=per_class, seed=seed) for dataset in (real, synthetic)}
    embeddings = embed_datasets(model, chosen, cache, face_pipeline, projections=(), options=options)
    rng = np.random.default_rng(seed)
    names = {label: sampled_name(label, dataset) for label, dataset in chosen.items()}
    parts = {}
    for label, name in names.items():
        rows = np.flatnonzero(embeddings.table["dataset"].to_numpy() == name)
        if sample is not None and len(rows) > sample:
            rows = np.sort(rng.choice(rows, sample, replace=False))
        parts[label] = rows
    real_rows, synthetic_rows = parts[real.label], parts[synthetic.label]
    labels = embeddings.table["label"].to_numpy()
    report = domain_gap_report(embeddings.features[real_rows], embeddings.features[synthetic_rows], seed=seed)
    labelled_real, labelled_synthetic = real_rows[labels[real_rows] >= 0], synthetic_rows[labels[synthetic_rows] >= 0]
    if len(labelled_real) and len(labelled_synthetic):
        from fer_core.domain_gap import centroid_distances
        report["centroid_distances"] = centroid_distances(
            embeddings.features[labelled_real], labels[labelled_real],
            embeddings.features[labelled_synthetic], labels[labelled_synthetic])
    report = {"model": {"fingerprint": model.fingerprint, "architecture": model.architecture,
                        "input_size": model.input_size},
              **{role: {"dataset": dataset.label, "sampled": names[dataset.label],
                        "faces": int((embeddings.table["dataset"] == names[dataset.label]).sum())}
                 for role, dataset in (("real", real), ("synthetic", synthetic))},
              "sample": sample, "limit": limit, "per_class": per_class, "seed": seed,
              "computed_features": embeddings.computed,
              "created": utc_now(), **report,
              "provenance": provenance_record(Path(out_dir) if out_dir is not None else Path.cwd(),
                                              {"real": real, "synthetic": synthetic}, limit)}
    if out_dir is not None:
        path = Path(out_dir) / gap_report_name(model.fingerprint, real.label, synthetic.label, limit, sample, seed)
        write_json_atomic(path, report)
        report["path"] = str(path)
    return report
