"""Batch inference over a dataset: a resumable predictions table.

Results are written in atomically renamed parquet parts, and a rerun after an interruption
skips every finished part. One row per face: probabilities over the 8 emotions (the model's
softmax in canonical columns), the prediction under a scoring protocol (:mod:`fer_core.scoring`),
and the detected face's box and score.

:func:`cached_forward` is the one extraction loop, a pipeline in which every stage overlaps
the model: a thread pool reads each image file once (its bytes are hashed, then decoded) a
few batches ahead; the calling thread looks each window of faces up in the
:class:`~fer_core.cache.ResultCache` by content and hands the missing ones to the pool to
decode and preprocess, a whole batch per task; one compute thread runs the model (one pass
gives logits and features) while the calling thread stores the previous batch. Only the
missing faces are run, so :func:`embed_dataset` and repeated predictions reuse them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import warnings
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
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
from fer_core.errors import ConfigError, DataError, ImageDecodeError
from fer_core.faces import Detection, Face, FacePipeline, whole_image_face
from fer_core.images import is_image_file, load_rgb
from fer_core.labels import EMOTIONS
from fer_core.models import EmotionRecognizer, FerModel
from fer_core.runs import write_json_atomic, write_parquet_atomic
from fer_core.sampling import Sampling
from fer_core.scoring import DEFAULT_PROTOCOL, Scoring, scoring_for

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

    def locate(self, dataset: FaceDataset, sample: Sample,
               payload: "ImagePayload" = None) -> tuple[PreparedFace, np.ndarray | None]:
        """Decode one sample (from ``payload`` when :func:`read_content` gave one) and find its
        face: the face without a tensor, and its RGB crop (None for an unreadable image, which
        gives an ``error`` row)."""
        nan_box = (float("nan"),) * 4
        try:
            rgb = decode_payload(dataset, sample, payload)
        except ImageDecodeError as exc:
            return PreparedFace(sample, None, False, float("nan"), nan_box, str(exc)), None
        face, found = find_face(rgb, dataset.pre_cropped, self.face_pipeline)
        keypoints = None if face.keypoints is None else (face.keypoints / face.image.shape[0]).astype(np.float32)
        return PreparedFace(sample, None, found, float(face.detection.score) if found else float("nan"),
                            tuple(float(v) for v in face.detection.box), keypoints=keypoints), face.image

    def prepare(self, dataset: FaceDataset, sample: Sample) -> PreparedFace:
        """Decode and prepare one sample; an unreadable image gives an ``error`` row."""
        face, crop = self.locate(dataset, sample)
        return face if crop is None else dataclasses.replace(face, tensor=self.preprocessing.to_tensor(crop))

    def prepare_batch(self, dataset: FaceDataset, samples: Sequence[Sample],
                      payloads: Sequence["ImagePayload"]) -> tuple[list[PreparedFace], torch.Tensor | None]:
        """Decode and locate ``samples`` (from their ``payloads``): the faces without tensors and
        one ``(n, 3, S, S)`` batch of the readable ones, in order (None when none is readable);
        the same values as stacking :meth:`prepare`'s tensors."""
        located = [self.locate(dataset, sample, payload) for sample, payload in zip(samples, payloads)]
        crops = [crop for _, crop in located if crop is not None]
        return [face for face, _ in located], self.preprocessing.batch(crops) if crops else None


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


#: What :func:`read_content` keeps of an image for decoding: its file's bytes, the decoded
#: pixels of an image that is no file (a CSV row), or None (unreadable: decoding reports why).
ImagePayload = bytes | np.ndarray | None


def read_content(dataset: FaceDataset, sample: Sample) -> tuple[ImagePayload, str | None]:
    """Read the sample's image once: what to decode it from and its content hash (sha256 of
    the image file's bytes, or of the decoded pixels when it is no file, such as a CSV row;
    None when it cannot be read)."""
    source = Path(sample.source)
    try:
        payload = source.read_bytes() if source.is_file() else dataset.read(sample)
    except (OSError, ImageDecodeError):
        return None, None
    return payload, content_hash(payload)


def decode_payload(dataset: FaceDataset, sample: Sample, payload: ImagePayload = None) -> np.ndarray:
    """The sample's RGB pixels: decoded from the file bytes that :func:`read_content` hashed
    (as ``dataset.read`` decodes a file source, errors naming the file), the pixels it kept, or
    ``dataset.read(sample)`` without a payload."""
    if isinstance(payload, np.ndarray):
        return payload
    if isinstance(payload, bytes):
        stream = io.BytesIO(payload)
        stream.name = sample.source  # error messages name the file, as reading it by path does
        return load_rgb(stream)
    return dataset.read(sample)


def sample_hash(dataset: FaceDataset, sample: Sample) -> str | None:
    """sha256 of the sample's image file (of its decoded pixels when it is no file, such as a
    CSV row); None when it cannot be read."""
    return read_content(dataset, sample)[1]


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


#: Windows of faces read ahead of the lookups, and batches queued for the model ahead of the
#: one being stored (so that a slow write, e.g. a WAL checkpoint, does not idle the model).
READ_AHEAD = 2
COMPUTE_AHEAD = 3


def _read_ahead(pool: ThreadPoolExecutor, dataset: FaceDataset, samples: Sequence[Sample], size: int,
                depth: int = READ_AHEAD) -> Iterator[tuple[int, list[tuple[ImagePayload, str | None]]]]:
    """``(start, [(payload, content hash), ...])`` of each window of ``size`` samples in order,
    read in ``pool`` while ``depth`` windows are waited for (one task per window)."""
    starts = iter(range(0, len(samples), size))
    pending: deque[tuple[int, Future]] = deque()

    def submit() -> None:
        start = next(starts, None)
        if start is not None:
            pending.append((start, pool.submit(lambda: [read_content(dataset, s) for s in samples[start:start + size]])))
    for _ in range(depth):
        submit()
    while pending:
        start, future = pending.popleft()
        submit()
        yield start, future.result()


@dataclass
class _Extraction:
    """The state of one :func:`cached_forward` call: results filled in row by row, each row's
    cache keys, and the contents stored by this call (looked up again they count as missing,
    as when every lookup came before the first write)."""

    samples: list[Sample]
    logits: np.ndarray
    features: np.ndarray
    faces: list[PreparedFace | None]
    contents: list[str | None]
    keys: list[dict[str, CacheKey] | None]
    stored_now: set[str] = dataclasses.field(default_factory=set)
    computed: int = 0


def cached_forward(model: FerModel, dataset: FaceDataset, preparer: FacePreparer, indices: Sequence[int],
                   cache: ResultCache | None, batch_size: int = 32, workers: int = 2,
                   on_progress: Callable[[int], object] = lambda n: None,
                   backend: str = DEFAULT_BACKEND) -> ForwardResults:
    """Logits and features of the faces at ``indices``: read from ``cache`` where every part is
    stored, computed in one pass of the ``backend`` (:data:`fer_core.backends.BACKENDS`)
    otherwise and stored batch by batch (each batch atomically, on the calling thread, before
    its faces are reported to ``on_progress``; every write is done when this returns).

    The missing faces are run in batches of ``batch_size`` in order; ``workers`` threads read
    and decode ahead of the model (see the module's description)."""
    preparation = preparer.fingerprint(dataset.pre_cropped)
    network = load_backend(model, backend)
    samples = [dataset[i] for i in indices]
    state = _Extraction(samples, np.full((len(samples), len(model.emotions)), np.nan, dtype=np.float32),
                        np.full((len(samples), model.feature_dim), np.nan, dtype=np.float32),
                        [None] * len(samples), [None] * len(samples), [None] * len(samples))

    def missing_batches(pool: ThreadPoolExecutor) -> Iterator[tuple[list[int], Future]]:
        """Look each window up as it is read; the missing rows, ``batch_size`` at a time, with
        the future of their prepared batch."""
        rows: list[int] = []
        payloads: list[ImagePayload] = []

        def prepare(batch_rows: list[int], batch_payloads: list[ImagePayload]) -> tuple[list[int], Future]:
            return batch_rows, pool.submit(preparer.prepare_batch, dataset, [samples[r] for r in batch_rows],
                                           batch_payloads)
        for start, window in _read_ahead(pool, dataset, samples, batch_size):
            hits = _look_up(state, cache, model.fingerprint, preparation, start, window, rows, payloads)
            if hits:
                on_progress(hits)
            while len(rows) >= batch_size:
                yield prepare(rows[:batch_size], payloads[:batch_size])
                del rows[:batch_size], payloads[:batch_size]
        if rows:
            yield prepare(rows, payloads)

    def run(prepared: Future) -> tuple[list[PreparedFace], tuple[torch.Tensor, torch.Tensor] | None]:
        faces, pixels = prepared.result()
        return faces, None if pixels is None else network.forward(pixels)

    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    compute = ThreadPoolExecutor(max_workers=1)  # the model runs batches in order, queued ahead
    try:
        queued: deque[tuple[list[int], Future]] = deque()
        for rows, prepared in missing_batches(pool):
            queued.append((rows, compute.submit(run, prepared)))
            if len(queued) > COMPUTE_AHEAD:
                _store(state, cache, *queued.popleft(), on_progress)
        while queued:
            _store(state, cache, *queued.popleft(), on_progress)
    finally:
        compute.shutdown(cancel_futures=True)
        pool.shutdown(cancel_futures=True)
    return ForwardResults(state.faces, state.logits, state.features, state.computed, tuple(state.contents))


def _look_up(state: _Extraction, cache: ResultCache | None, model: str, preparation: str, start: int,
             window: list[tuple[ImagePayload, str | None]], rows: list[int], payloads: list[ImagePayload]) -> int:
    """Fill in the window's rows whose logits, features and face are all stored; append the
    others to ``rows`` and ``payloads``. Returns the number of hits."""
    for row, (_, content) in enumerate(window, start):
        state.contents[row] = content
        state.keys[row] = None if content is None else {
            kind: CacheKey(kind, model, preparation, content) for kind in FORWARD_KINDS}
    asked = [key for row_keys in state.keys[start:start + len(window)] if row_keys for key in row_keys.values()]
    stored = {} if cache is None or not asked else cache.get_many(asked)
    hits = 0
    for row, (payload, content) in enumerate(window, start):
        row_keys = state.keys[row]
        if row_keys and content not in state.stored_now and all(key in stored for key in row_keys.values()):
            found, score, *box = (float(v) for v in stored[row_keys["face"]])
            state.faces[row] = PreparedFace(state.samples[row], None, bool(found), score, tuple(box))
            state.logits[row], state.features[row] = stored[row_keys["logits"]], stored[row_keys["embedding"]]
            hits += 1
        else:
            rows.append(row)
            payloads.append(payload)
    return hits


def _store(state: _Extraction, cache: ResultCache | None, rows: list[int], computed: Future,
           on_progress: Callable[[int], object]) -> None:
    """Put one batch's results in place and in ``cache`` (one transaction), then report it."""
    faces, outputs = computed.result()
    state.computed += len(rows)
    for row, face in zip(rows, faces):
        state.faces[row] = face
    if outputs is not None:
        usable = [row for row, face in zip(rows, faces) if face.error is None]
        batch_logits, batch_features = (output.numpy() for output in outputs)
        state.logits[usable], state.features[usable] = batch_logits, batch_features
        if cache is not None:
            _put(state, cache, usable, batch_logits, batch_features)
    on_progress(len(rows))


def _put(state: _Extraction, cache: ResultCache, usable: list[int], batch_logits: np.ndarray,
         batch_features: np.ndarray) -> None:
    """Store the logits, features and face of each usable row that has cache keys, in one transaction."""
    new: dict[CacheKey, np.ndarray] = {}
    for row, face_logits, face_features in zip(usable, batch_logits, batch_features):
        row_keys, face = state.keys[row], state.faces[row]
        if row_keys:
            new[row_keys["logits"]] = face_logits
            new[row_keys["embedding"]] = face_features
            new[row_keys["face"]] = np.array([face.face_found, face.face_score, *face.box], np.float32)
    if new:
        cache.put_many(new)
        state.stored_now.update(state.contents[row] for row in usable if state.keys[row])


def _predicted_chunk(model: FerModel, dataset: FaceDataset, preparer: FacePreparer, chunk: Sequence[int],
                     batch_size: int, cache: ResultCache | None, bar: tqdm, backend: str, scoring: Scoring,
                     dataset_label: str) -> pd.DataFrame:
    results = cached_forward(model, dataset, preparer, chunk, cache, batch_size, on_progress=bar.update,
                             backend=backend)
    usable = [row for row, face in enumerate(results.faces) if face.error is None]
    return _rows(results.faces, results.logits[usable] if usable else None, scoring, dataset_label)


def _job_signature(model: FerModel, dataset: FaceDataset, preparer: FacePreparer, indices: Sequence[int],
                   chunk_size: int, scoring: Scoring) -> dict[str, str | int]:
    keys = hashlib.sha256("\n".join(dataset[i].key for i in indices).encode()).hexdigest()[:16]
    return {"model": model.fingerprint, "preparation": preparer.fingerprint(dataset.pre_cropped),
            "dataset": dataset.name, "items": keys, "n": len(indices), "chunk_size": chunk_size,
            "score_over": scoring.protocol}


def predict_dataset(model: FerModel, dataset: FaceDataset, out_dir: Path | str,
                    face_pipeline: FacePipeline | None = None, batch_size: int = 32, chunk_size: int = 1024,
                    limit: int | None = None, device: str = "cpu", progress: bool = True,
                    cache: ResultCache | None = None, backend: str = DEFAULT_BACKEND,
                    score_over: str = DEFAULT_PROTOCOL) -> pd.DataFrame:
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
    model runs through ``backend`` (:data:`fer_core.backends.BACKENDS`).
    """
    out_dir = Path(out_dir)
    indices = list(range(len(dataset) if limit is None else min(limit, len(dataset))))
    if not indices:
        raise DataError(f"dataset {dataset.name} has no images")
    preparer = FacePreparer(model, face_pipeline)
    scoring = scoring_for(score_over, model.emotions, dataset.emotions)
    dataset_label = dataset.label
    signature = _job_signature(model, dataset, preparer, indices, chunk_size, scoring)
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
        write_parquet_atomic(_predicted_chunk(model, dataset, preparer, chunk, batch_size, cache, bar, backend,
                                              scoring, dataset_label), part)
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
                   batch_size: int = 32, device: str = "cpu", progress: bool = True,
                   backend: str = DEFAULT_BACKEND, score_over: str = DEFAULT_PROTOCOL,
                   limit: int | None = None, seed: int = 0) -> pd.DataFrame:
    """Every face in every photo of a plain folder (:func:`photo_files`), written to
    ``out_dir/predictions.parquet`` and returned: one row per detected face (``face`` numbers the
    faces of a photo from 0, largest first), with ``pred``, ``pred_all`` and ``prob_*`` as in
    :func:`predict_dataset`. A photo without a face gives one row with ``face`` -1,
    ``face_found`` False, ``pred`` -1 and NaN probabilities (it is not classified); an
    unreadable one a row with its ``error``. ``limit`` keeps a seeded random sample of photos."""
    files = photo_files(folder)
    if files is None:
        raise DataError(f"{folder} is not a folder of photos (image files and no sub-folders)")
    if face_pipeline is None or face_pipeline.detector is None:
        raise ConfigError("predicting a folder of photos needs a face detector (faces.detector in the config)")
    if limit is not None:
        files = [files[i] for i in Sampling(limit, seed=seed).indices(np.full(len(files), -1))]
    scoring = scoring_for(score_over, model.emotions, ())
    recognizer = EmotionRecognizer(model, device, batch_size, backend)
    rows: dict[str, list] = {name: [] for name in ("key", "source", "face", "face_found", "face_score", "box", "error")}
    classified: list[int] = []   # rows with a face, in the order of ``logits``
    logits: list[np.ndarray] = []

    def add(path: Path, face: int, detection: Detection | None, error: str | None = None) -> None:
        for name, value in (("key", path.name), ("source", str(path)), ("face", face),
                            ("face_found", detection is not None),
                            ("face_score", np.nan if detection is None else detection.score),
                            ("box", (np.nan,) * 4 if detection is None else detection.box), ("error", error)):
            rows[name].append(value)

    for path in tqdm(files, desc=f"predict {Path(folder).name}", unit="photo", disable=not progress):
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
