"""Batch inference over a dataset: a resumable predictions table, embeddings, and every face
of a folder of photos.

Results are written in atomically renamed parquet parts, and a rerun after an interruption
skips every finished part. One row per face: probabilities over the 8 emotions (the model's
softmax in canonical columns), the prediction under a scoring protocol (:mod:`fer_core.scoring`),
and the detected face's box and score. Faces go through the one extraction engine
(:mod:`fer_core.extraction`): only faces missing from the cache are run, so
:func:`embed_dataset` and repeated predictions reuse them.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fer_core.backends import InferenceOptions, on_device
from fer_core.cache import ResultCache
from fer_core.data import FaceDataset
from fer_core.errors import DataError, ImageDecodeError, InvalidArgument
from fer_core.extraction import (FORWARD_KINDS, FacePreparer, ForwardResults, PreparedFace, cached_forward,
                                 find_face, forward_chunks)
from fer_core.faces import Detection, FacePipeline
from fer_core.images import is_image_file, load_rgb
from fer_core.labels import EMOTIONS
from fer_core.models import EmotionRecognizer, FerModel
from fer_core.runs import write_json_atomic, write_parquet_atomic
from fer_core.sampling import Sampling
from fer_core.scoring import DEFAULT_PROTOCOL, Scoring, scoring_for

#: Re-exported from :mod:`fer_core.extraction`, their home, for the callers that import them from here.
__all__ = ["FORWARD_KINDS", "FacePreparer", "ForwardResults", "PreparedFace", "cached_forward", "find_face",
           "PROB_COLUMNS", "embed_dataset", "photo_files", "predict_dataset", "predict_photos"]

PROB_COLUMNS = tuple(f"prob_{e}" for e in EMOTIONS)
PARTS_DIR = "parts"
PROGRESS_FILE = "progress.json"


def _rows(prepared: list[PreparedFace], logits: np.ndarray | None, scoring: Scoring,
          dataset_label: str) -> pd.DataFrame:
    """One row per prepared face; ``logits`` (model order) are those of the readable ones."""
    probs = np.full((len(prepared), len(EMOTIONS)), np.nan, dtype=np.float32)
    pred_all = np.full(len(prepared), -1, dtype=np.int64)
    pred = np.full(len(prepared), -1, dtype=np.int64)
    rows = [i for i, p in enumerate(prepared) if p.error is None]
    if logits is not None and rows:
        probs[rows], pred[rows] = scoring.score(logits)
        pred_all[rows] = np.nanargmax(probs[rows], axis=1)
    frame = pd.DataFrame({
        "dataset": dataset_label,
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


def _predicted_chunk(model: FerModel, dataset: FaceDataset, preparer: FacePreparer, chunk: Sequence[int],
                     cache: ResultCache | None, bar: tqdm, options: InferenceOptions, scoring: Scoring) -> pd.DataFrame:
    results = cached_forward(model, dataset, preparer, chunk, cache, options.batch_size, on_progress=bar.update,
                             backend=options.backend)
    usable = results.usable
    return _rows(results.faces, results.logits[usable] if usable else None, scoring, dataset.label)


def _job_signature(model: FerModel, dataset: FaceDataset, preparer: FacePreparer, indices: Sequence[int],
                   chunk_size: int, scoring: Scoring) -> dict[str, str | int]:
    keys = hashlib.sha256("\n".join(dataset[i].key for i in indices).encode()).hexdigest()[:16]
    return {"model": model.fingerprint, "preparation": preparer.fingerprint(dataset.pre_cropped),
            "dataset": dataset.name, "items": keys, "n": len(indices), "chunk_size": chunk_size,
            "score_over": scoring.protocol}


def predict_dataset(model: FerModel, dataset: FaceDataset, out_dir: Path | str,
                    face_pipeline: FacePipeline | None = None, chunk_size: int = 1024, limit: int | None = None,
                    cache: ResultCache | None = None, score_over: str = DEFAULT_PROTOCOL,
                    options: InferenceOptions = InferenceOptions()) -> pd.DataFrame:
    """Predict every face of ``dataset`` into ``out_dir/predictions.parquet`` and return the table.

    ``pred`` is the class chosen under ``score_over`` (:data:`fer_core.scoring.PROTOCOLS`),
    ``pred_all`` the argmax over all the model's classes, ``prob_*`` the model's softmax in
    canonical columns, ``dataset`` the dataset's label (with its sampling, e.g.
    ``fer2013:test[stratified 500, seed 0]``). Sample a dataset with
    :func:`fer_core.precompute.select`; ``limit`` here keeps only the first faces in dataset order.

    Work is saved in parts of ``chunk_size`` faces; calling again with the same model, data
    and settings after an interruption continues where it stopped. Different settings in
    the same folder are an error rather than a silent mix. With a ``cache``, faces whose
    logits and features are stored are not run again, and the new ones are stored. The
    model runs as ``options`` say (batch size, device, backend, progress bar:
    :class:`~fer_core.backends.InferenceOptions`).
    """
    out_dir = Path(out_dir)
    indices = list(range(len(dataset) if limit is None else min(limit, len(dataset))))
    if not indices:
        raise DataError(f"dataset {dataset.name} has no images")
    preparer = FacePreparer(model, face_pipeline)
    scoring = scoring_for(score_over, model.emotions, dataset.emotions)
    signature = _job_signature(model, dataset, preparer, indices, chunk_size, scoring)
    progress_file = out_dir / PROGRESS_FILE
    if progress_file.is_file():
        previous = json.loads(progress_file.read_text(encoding="utf-8"))
        if previous != signature:
            raise DataError(f"{out_dir} holds predictions of another model, dataset or setting; "
                            "choose a new output folder or delete it")
    write_json_atomic(progress_file, signature)
    parts_dir = out_dir / PARTS_DIR
    on_device(model, options.device)
    chunks = [indices[i:i + chunk_size] for i in range(0, len(indices), chunk_size)]
    bar = tqdm(total=len(indices), desc=f"predict {dataset.name}", unit="face", disable=not options.progress)
    for number, chunk in enumerate(chunks):
        part = parts_dir / f"part-{number:05d}.parquet"
        if part.is_file():
            bar.update(len(chunk))
            continue
        write_parquet_atomic(_predicted_chunk(model, dataset, preparer, chunk, cache, bar, options, scoring), part)
    bar.close()
    table = pd.concat([pd.read_parquet(parts_dir / f"part-{n:05d}.parquet") for n in range(len(chunks))],
                      ignore_index=True)
    failed = table.loc[table["error"].notna(), "source"].tolist()
    if failed:
        warnings.warn(f"{len(failed)} unreadable image(s) skipped: {failed}", stacklevel=2)
    write_parquet_atomic(table, out_dir / "predictions.parquet")
    return table


def embed_dataset(model: FerModel, dataset: FaceDataset, cache: ResultCache | None,
                  face_pipeline: FacePipeline | None = None, chunk_size: int = 1024, limit: int | None = None,
                  options: InferenceOptions = InferenceOptions()) -> tuple[list[str], np.ndarray]:
    """The pooled penultimate features of every readable face of ``dataset``: the sample keys
    and a ``(N, feature_dim)`` float32 array, row for row. Stored features are read from
    ``cache``; the others are computed as ``options`` say (with their logits, in the same
    pass; :class:`~fer_core.backends.InferenceOptions`) and stored."""
    indices = list(range(len(dataset) if limit is None else min(limit, len(dataset))))
    if not indices:
        raise DataError(f"dataset {dataset.name} has no images")
    on_device(model, options.device)
    keys: list[str] = []
    features = np.empty((len(indices), model.feature_dim), np.float32)  # filled in place: no second copy
    failed: list[str] = []
    with tqdm(total=len(indices), desc=f"embed {dataset.name}", unit="face", disable=not options.progress) as bar:
        for results in forward_chunks(model, dataset, FacePreparer(model, face_pipeline), indices, cache,
                                      options.batch_size, chunk_size, bar.update, options.backend):
            usable = results.usable
            features[len(keys):len(keys) + len(usable)] = results.features[usable]
            keys.extend(results.faces[row].sample.key for row in usable)
            failed.extend(face.sample.source for face in results.faces if face.error is not None)
    if failed:
        warnings.warn(f"{len(failed)} unreadable image(s) skipped: {failed}", stacklevel=2)
    return keys, features[:len(keys)]


def photo_files(folder: Path | str) -> list[Path] | None:
    """The image files directly in ``folder`` (sorted) when it is a plain folder of photos: images
    and no sub-folders (so no classes); None for anything else."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    images = sorted(p for p in entries if p.is_file() and is_image_file(p))
    return images if images and not any(p.is_dir() for p in entries) else None


def predict_photos(model: FerModel, folder: Path | str, out_dir: Path | str, face_pipeline: FacePipeline,
                   score_over: str = DEFAULT_PROTOCOL, limit: int | None = None, seed: int = 0,
                   options: InferenceOptions = InferenceOptions()) -> pd.DataFrame:
    """Every face in every photo of a plain folder (:func:`photo_files`), written to
    ``out_dir/predictions.parquet`` and returned: one row per detected face (``face`` numbers the
    faces of a photo from 0, largest first), with ``pred``, ``pred_all`` and ``prob_*`` as in
    :func:`predict_dataset`. A photo without a face gives one row with ``face`` -1,
    ``face_found`` False, ``pred`` -1 and NaN probabilities (it is not classified); an
    unreadable one a row with its ``error``. ``limit`` keeps a seeded random sample of photos;
    ``options``: how the model runs (:class:`~fer_core.backends.InferenceOptions`)."""
    files = photo_files(folder)
    if files is None:
        raise DataError(f"{folder} is not a folder of photos (image files and no sub-folders)")
    if face_pipeline is None or face_pipeline.detector is None:
        raise InvalidArgument("predicting a folder of photos needs a face detector (faces.detector in the config)")
    if limit is not None:
        files = [files[i] for i in Sampling(limit, seed=seed).indices(np.full(len(files), -1))]
    scoring = scoring_for(score_over, model.emotions, ())
    recognizer = EmotionRecognizer(on_device(model, options.device), batch_size=options.batch_size,
                                   backend=options.backend)
    rows: dict[str, list] = {name: [] for name in ("key", "source", "face", "face_found", "face_score", "box", "error")}
    classified: list[int] = []   # rows with a face, in the order of ``logits``
    logits: list[np.ndarray] = []

    def add(path: Path, face: int, detection: Detection | None, error: str | None = None) -> None:
        for name, value in (("key", path.name), ("source", str(path)), ("face", face),
                            ("face_found", detection is not None),
                            ("face_score", np.nan if detection is None else detection.score),
                            ("box", (np.nan,) * 4 if detection is None else detection.box), ("error", error)):
            rows[name].append(value)

    for path in tqdm(files, desc=f"predict {Path(folder).name}", unit="photo", disable=not options.progress):
        try:
            faces = face_pipeline.extract(load_rgb(path))
        except ImageDecodeError as exc:
            add(path, -1, None, str(exc))
            continue
        if not faces:
            add(path, -1, None)
            continue
        classified.extend(range(len(rows["key"]), len(rows["key"]) + len(faces)))
        for number, face in enumerate(faces):
            add(path, number, face.detection)
        logits.append(recognizer.predict_emotions([face.image for face in faces], logits=True)[1])
    probabilities = np.full((len(rows["key"]), len(EMOTIONS)), np.nan, dtype=np.float32)
    pred = np.full(len(rows["key"]), -1, dtype=np.int64)
    pred_all = pred.copy()
    if classified:
        probabilities[classified], pred[classified] = scoring.score(np.concatenate(logits))
        pred_all[classified] = np.nanargmax(probabilities[classified], axis=1)
    boxes = np.array(rows.pop("box"), dtype=np.float32).reshape(-1, 4)
    table = pd.DataFrame({**rows, "face": np.array(rows["face"], dtype=np.int64),
                          "face_score": np.array(rows["face_score"], dtype=np.float32), "pred": pred,
                          "pred_all": pred_all, **dict(zip(("box_x0", "box_y0", "box_x1", "box_y1"), boxes.T)),
                          **dict(zip(PROB_COLUMNS, probabilities.T))})
    write_parquet_atomic(table, Path(out_dir) / "predictions.parquet")
    return table
