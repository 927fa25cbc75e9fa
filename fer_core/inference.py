"""Batch inference over a dataset: a resumable predictions table.

Images are decoded and prepared in a thread pool one batch ahead of the model, results are
written in atomically renamed parquet parts, and a rerun after an interruption skips every
finished part. One row per face: probabilities over the 8 emotions, the prediction over the
dataset's own classes, and the detected face's box and score.

With a :class:`~fer_core.cache.ResultCache`, each face's logits, features and detected face
are looked up by image content first; only the missing faces are run (one pass gives both
logits and features) and stored, so :func:`embed_dataset` and repeated predictions reuse them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from fer_core.backends import DEFAULT_BACKEND, load_backend
from fer_core.cache import CacheKey, ResultCache, content_hash
from fer_core.data import FaceDataset, Sample
from fer_core.errors import DataError, ImageDecodeError
from fer_core.faces import Face, FacePipeline, whole_image_face
from fer_core.labels import EMOTIONS, restrict_logits
from fer_core.models import FerModel
from fer_core.runs import write_json_atomic, write_parquet_atomic

PROB_COLUMNS = tuple(f"prob_{e}" for e in EMOTIONS)
PARTS_DIR = "parts"
PROGRESS_FILE = "progress.json"


@dataclass(frozen=True)
class PreparedFace:
    """One dataset item after decoding, face finding and preprocessing."""

    sample: Sample
    tensor: torch.Tensor | None
    face_found: bool
    face_score: float
    box: tuple[float, float, float, float]
    error: str | None = None
    #: The detector's 6 keypoints on the crop, as fractions of its side (``(6, 2)`` float32), when
    #: the face was detected; None for pre-cropped data and whole-image fallbacks.
    keypoints: np.ndarray | None = None


def find_face(rgb: np.ndarray, pre_cropped: bool, face_pipeline: FacePipeline | None) -> tuple[Face, bool]:
    """The face to classify: the whole image for pre-cropped data (or without a detector),
    else the largest detected face; falls back to the whole image when none is found.
    The flag says whether the returned crop is known to be a face."""
    if pre_cropped:
        return whole_image_face(rgb), True
    face = None if face_pipeline is None else face_pipeline.largest(rgb)
    return (face, True) if face is not None else (whole_image_face(rgb), False)


class FacePreparer:
    """Image -> model input: the largest detected face (or the whole image for pre-cropped
    data, or when no face is found), through the model's preprocessing."""

    def __init__(self, model: FerModel, face_pipeline: FacePipeline | None) -> None:
        self.preprocessing = model.preprocessing
        self.face_pipeline = face_pipeline

    def fingerprint(self, pre_cropped: bool) -> str:
        faces = "whole-image" if pre_cropped or self.face_pipeline is None else self.face_pipeline.fingerprint()
        return f"{self.preprocessing.fingerprint()}:{faces}"

    def prepare(self, dataset: FaceDataset, sample: Sample) -> PreparedFace:
        """Decode and prepare one sample; an unreadable image gives an ``error`` row."""
        nan_box = (float("nan"),) * 4
        try:
            rgb = dataset.read(sample)
        except ImageDecodeError as exc:
            return PreparedFace(sample, None, False, float("nan"), nan_box, str(exc))
        face, found = find_face(rgb, dataset.pre_cropped, self.face_pipeline)
        keypoints = None if face.keypoints is None else (face.keypoints / face.image.shape[0]).astype(np.float32)
        return PreparedFace(sample, self.preprocessing.to_tensor(face.image), found,
                            float(face.detection.score) if found else float("nan"),
                            tuple(float(v) for v in face.detection.box), keypoints=keypoints)


def iter_prepared(dataset: FaceDataset, preparer: FacePreparer, indices: Sequence[int], batch_size: int,
                  workers: int = 2) -> Iterator[list[PreparedFace]]:
    """Prepared batches, decoding the next batch in threads while the caller computes."""
    batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        def submit(batch: Sequence[int]) -> list:
            return [pool.submit(preparer.prepare, dataset, dataset[i]) for i in batch]
        pending = submit(batches[0]) if batches else []
        for following in batches[1:] + [None]:
            current = pending
            pending = submit(following) if following is not None else []
            yield [future.result() for future in current]


def _rows(prepared: list[PreparedFace], logits: np.ndarray | None, emotions: Sequence[str]) -> pd.DataFrame:
    ok = [p for p in prepared if p.error is None]
    probs = np.full((len(prepared), len(EMOTIONS)), np.nan, dtype=np.float32)
    pred_all = np.full(len(prepared), -1, dtype=np.int64)
    pred = np.full(len(prepared), -1, dtype=np.int64)
    if logits is not None and len(ok):
        rows = [i for i, p in enumerate(prepared) if p.error is None]
        shifted = logits - logits.max(1, keepdims=True)
        probs[rows] = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
        pred_all[rows] = logits.argmax(1)
        pred[rows] = restrict_logits(logits, emotions).argmax(1)
    frame = pd.DataFrame({
        "key": [p.sample.key for p in prepared],
        "source": [p.sample.source for p in prepared],
        "split": [p.sample.split for p in prepared],
        "label": np.array([p.sample.label for p in prepared], dtype=np.int64),
        "pred": pred,
        "pred_all": pred_all,
        "face_found": [p.face_found for p in prepared],
        "face_score": np.array([p.face_score for p in prepared], dtype=np.float32),
        **{f"box_{n}": np.array([p.box[i] for p in prepared], dtype=np.float32)
           for i, n in enumerate(("x0", "y0", "x1", "y1"))},
        "error": [p.error for p in prepared],
    })
    for column, values in zip(PROB_COLUMNS, probs.T):
        frame[column] = values
    return frame


def sample_hash(dataset: FaceDataset, sample: Sample) -> str | None:
    """sha256 of the sample's image file (of its decoded pixels when it is no file, such as a
    CSV row); None when it cannot be read."""
    source = Path(sample.source)
    try:
        return content_hash(source.read_bytes() if source.is_file() else dataset.read(sample))
    except (OSError, ImageDecodeError):
        return None


#: What one forward pass stores per face: logits, features and the face it was run on.
FORWARD_KINDS = ("logits", "embedding", "face")


@dataclass(frozen=True)
class ForwardResults:
    """Per-face results in dataset order: the prepared faces (without tensors), their logits
    and features (NaN rows for unreadable images), and how many faces needed the model."""

    faces: list[PreparedFace]
    logits: np.ndarray
    features: np.ndarray
    computed: int
    #: Each face's image content hash (:func:`sample_hash`; None when unreadable).
    contents: tuple[str | None, ...] = ()


def cached_forward(model: FerModel, dataset: FaceDataset, preparer: FacePreparer, indices: Sequence[int],
                   cache: ResultCache | None, batch_size: int = 32, workers: int = 2,
                   on_progress: Callable[[int], object] = lambda n: None,
                   backend: str = DEFAULT_BACKEND) -> ForwardResults:
    """Logits and features of the faces at ``indices``: read from ``cache`` where every part is
    stored, computed in one pass of the ``backend`` (:data:`fer_core.backends.BACKENDS`)
    otherwise and stored batch by batch (each batch atomically)."""
    preparation = preparer.fingerprint(dataset.pre_cropped)
    samples = [dataset[i] for i in indices]
    groups = [samples[i:i + batch_size] for i in range(0, len(samples), batch_size)]  # a task per batch, not per face
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        digests = [digest for group in pool.map(lambda group: [sample_hash(dataset, s) for s in group], groups)
                   for digest in group]
    keys = [None if digest is None else
            {kind: CacheKey(kind, model.fingerprint, preparation, digest) for kind in FORWARD_KINDS}
            for digest in digests]
    stored = {} if cache is None else cache.get_many(k for row_keys in keys if row_keys for k in row_keys.values())
    logits = np.full((len(samples), len(model.emotions)), np.nan, dtype=np.float32)
    features = np.full((len(samples), model.feature_dim), np.nan, dtype=np.float32)
    faces: list[PreparedFace | None] = [None] * len(samples)
    missing = []
    for row, (sample, row_keys) in enumerate(zip(samples, keys)):
        if row_keys and all(key in stored for key in row_keys.values()):
            found, score, *box = (float(v) for v in stored[row_keys["face"]])
            faces[row] = PreparedFace(sample, None, bool(found), score, tuple(box))
            logits[row], features[row] = stored[row_keys["logits"]], stored[row_keys["embedding"]]
        else:
            missing.append(row)
    on_progress(len(samples) - len(missing))
    batches = [missing[i:i + batch_size] for i in range(0, len(missing), batch_size)]
    prepared_batches = iter_prepared(dataset, preparer, [indices[row] for row in missing], batch_size, workers)
    for rows, prepared in zip(batches, prepared_batches):
        usable = [j for j, face in enumerate(prepared) if face.tensor is not None]
        new: dict[CacheKey, np.ndarray] = {}
        if usable:
            batch = torch.stack([prepared[j].tensor for j in usable])
            batch_logits, batch_features = load_backend(model, backend).forward(batch)
            for j, face_logits, face_features in zip(usable, batch_logits.numpy(), batch_features.numpy()):
                row, face = rows[j], prepared[j]
                logits[row], features[row] = face_logits, face_features
                if keys[row]:
                    new[keys[row]["logits"]] = face_logits
                    new[keys[row]["embedding"]] = face_features
                    new[keys[row]["face"]] = np.array([face.face_found, face.face_score, *face.box], np.float32)
        for row, face in zip(rows, prepared):
            faces[row] = dataclasses.replace(face, tensor=None)
        if cache is not None and new:
            cache.put_many(new)
        on_progress(len(prepared))
    return ForwardResults(faces, logits, features, len(missing), tuple(digests))


def _predicted_chunk(model: FerModel, dataset: FaceDataset, preparer: FacePreparer, chunk: Sequence[int],
                     batch_size: int, cache: ResultCache | None, bar: tqdm, backend: str) -> pd.DataFrame:
    if cache is not None:
        results = cached_forward(model, dataset, preparer, chunk, cache, batch_size, on_progress=bar.update,
                                 backend=backend)
        usable = [row for row, face in enumerate(results.faces) if face.error is None]
        return _rows(results.faces, results.logits[usable], dataset.emotions)
    frames = []
    for prepared in iter_prepared(dataset, preparer, chunk, batch_size):
        tensors = [p.tensor for p in prepared if p.tensor is not None]
        logits = load_backend(model, backend).logits(torch.stack(tensors)).numpy() if tensors else None
        frames.append(_rows(prepared, logits, dataset.emotions))
        bar.update(len(prepared))
    return pd.concat(frames, ignore_index=True)


def _job_signature(model: FerModel, dataset: FaceDataset, preparer: FacePreparer, indices: Sequence[int],
                   chunk_size: int) -> dict[str, str | int]:
    keys = hashlib.sha256("\n".join(dataset[i].key for i in indices).encode()).hexdigest()[:16]
    return {"model": model.fingerprint, "preparation": preparer.fingerprint(dataset.pre_cropped),
            "dataset": dataset.name, "items": keys, "n": len(indices), "chunk_size": chunk_size}


def predict_dataset(model: FerModel, dataset: FaceDataset, out_dir: Path | str,
                    face_pipeline: FacePipeline | None = None, batch_size: int = 32, chunk_size: int = 1024,
                    limit: int | None = None, device: str = "cpu", progress: bool = True,
                    cache: ResultCache | None = None, backend: str = DEFAULT_BACKEND) -> pd.DataFrame:
    """Predict every face of ``dataset`` into ``out_dir/predictions.parquet`` and return the table.

    Work is saved in parts of ``chunk_size`` faces; calling again with the same model, data
    and settings after an interruption continues where it stopped. Different settings in
    the same folder are an error rather than a silent mix. With a ``cache``, faces whose
    logits and features are stored are not run again, and the new ones are stored. The
    model runs through ``backend`` (:data:`fer_core.backends.BACKENDS`).
    """
    out_dir = Path(out_dir)
    indices = list(range(len(dataset) if limit is None else min(limit, len(dataset))))
    if not indices:
        raise DataError(f"dataset {dataset.name} has no images")
    preparer = FacePreparer(model, face_pipeline)
    signature = _job_signature(model, dataset, preparer, indices, chunk_size)
    progress_file = out_dir / PROGRESS_FILE
    if progress_file.is_file():
        previous = json.loads(progress_file.read_text(encoding="utf-8"))
        if previous != signature:
            raise DataError(f"{out_dir} holds predictions of another model, dataset or setting; "
                            "choose a new output folder or delete it")
    write_json_atomic(progress_file, signature)
    parts_dir = out_dir / PARTS_DIR
    model.to(device).module.eval()
    chunks = [indices[i:i + chunk_size] for i in range(0, len(indices), chunk_size)]
    bar = tqdm(total=len(indices), desc=f"predict {dataset.name}", unit="face", disable=not progress)
    for number, chunk in enumerate(chunks):
        part = parts_dir / f"part-{number:05d}.parquet"
        if part.is_file():
            bar.update(len(chunk))
            continue
        write_parquet_atomic(_predicted_chunk(model, dataset, preparer, chunk, batch_size, cache, bar, backend), part)
    bar.close()
    table = pd.concat([pd.read_parquet(parts_dir / f"part-{n:05d}.parquet") for n in range(len(chunks))],
                      ignore_index=True)
    failed = table.loc[table["error"].notna(), "source"].tolist()
    if failed:
        warnings.warn(f"{len(failed)} unreadable image(s) skipped: {failed}", stacklevel=2)
    write_parquet_atomic(table, out_dir / "predictions.parquet")
    return table


def embed_dataset(model: FerModel, dataset: FaceDataset, cache: ResultCache | None,
                  face_pipeline: FacePipeline | None = None, batch_size: int = 32, chunk_size: int = 1024,
                  limit: int | None = None, device: str = "cpu", progress: bool = True,
                  backend: str = DEFAULT_BACKEND) -> tuple[list[str], np.ndarray]:
    """The pooled penultimate features of every readable face of ``dataset``: the sample keys
    and a ``(N, feature_dim)`` float32 array, row for row. Stored features are read from
    ``cache``; the others are computed by ``backend`` (with their logits, in the same pass)
    and stored."""
    indices = list(range(len(dataset) if limit is None else min(limit, len(dataset))))
    if not indices:
        raise DataError(f"dataset {dataset.name} has no images")
    preparer = FacePreparer(model, face_pipeline)
    model.to(device).module.eval()
    keys: list[str] = []
    features = np.empty((len(indices), model.feature_dim), np.float32)  # filled in place: no second copy
    failed: list[str] = []
    with tqdm(total=len(indices), desc=f"embed {dataset.name}", unit="face", disable=not progress) as bar:
        for start in range(0, len(indices), chunk_size):
            results = cached_forward(model, dataset, preparer, indices[start:start + chunk_size], cache, batch_size,
                                     on_progress=bar.update, backend=backend)
            usable = [row for row, face in enumerate(results.faces) if face.error is None]
            features[len(keys):len(keys) + len(usable)] = results.features[usable]
            keys.extend(results.faces[row].sample.key for row in usable)
            failed.extend(face.sample.source for face in results.faces if face.error is not None)
    if failed:
        warnings.warn(f"{len(failed)} unreadable image(s) skipped: {failed}", stacklevel=2)
    return keys, features[:len(keys)]
