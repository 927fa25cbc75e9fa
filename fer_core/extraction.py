"""The one extraction engine: every face of a dataset read once, hashed, found and aligned,
preprocessed, run through the model and cached, with a per-batch consumer for work that needs
the prepared faces themselves (attribution maps, keypoints).

:func:`extract` is a pipeline in which every stage overlaps the model: a thread pool reads
each image file once (its bytes are hashed, then decoded) a few batches ahead; the calling
thread looks each window of faces up in the :class:`~fer_core.cache.ResultCache` by content
and hands the missing ones to the pool to decode, find and preprocess, a whole batch per task;
one model thread runs the network (one pass gives logits and features), then the consumer on
the same batch, while the calling thread stores the previous batch, forward results and the
consumer's together in one transaction. Only missing faces are prepared and run.

The image -> tensor chain is :class:`FacePreparer`: :func:`find_face` (the largest detected and
aligned face, or the whole image of pre-cropped data), then the model's evaluation transform
(:func:`fer_core.preprocess.create_transform` of ``FerModel.preprocessing``).
"""

from __future__ import annotations

import dataclasses
import io
from abc import ABC, abstractmethod
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from fer_core.backends import DEFAULT_BACKEND, load_backend
from fer_core.cache import CacheKey, ResultCache, content_hash
from fer_core.data import FaceDataset, Sample
from fer_core.errors import ImageDecodeError, InvalidArgument, MissingResultsError
from fer_core.faces import Face, FacePipeline, whole_image_face
from fer_core.images import load_rgb
from fer_core.models import FerModel
from fer_core.preprocess import create_transform
from fer_core.validation import Interval, validate_params

#: What one forward pass stores per face: logits, features and the face it was run on.
FORWARD_KINDS = ("logits", "embedding", "face")
#: Windows of faces read ahead of the lookups, and batches queued for the model ahead of the
#: one being stored (so that a slow write, e.g. a WAL checkpoint, does not idle the model).
READ_AHEAD = 2
COMPUTE_AHEAD = 3


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
    #: The crop at the model's input size (RGB uint8): the pixels ``tensor`` normalises.
    pixels: np.ndarray | None = None


def find_face(rgb: np.ndarray, pre_cropped: bool, face_pipeline: FacePipeline | None) -> tuple[Face, bool]:
    """The face to classify: the whole image for pre-cropped data (or without a detector),
    else the largest detected face; falls back to the whole image when none is found.
    The flag says whether the returned crop is known to be a face."""
    if pre_cropped:
        return whole_image_face(rgb), True
    face = None if face_pipeline is None else face_pipeline.largest(rgb)
    return (face, True) if face is not None else (whole_image_face(rgb), False)


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


class FacePreparer:
    """Image -> model input: the largest detected face (or the whole image for pre-cropped
    data, or when no face is found), through the model's evaluation transform."""

    def __init__(self, model: FerModel, face_pipeline: FacePipeline | None) -> None:
        self.preprocessing = model.preprocessing
        self.transform = create_transform(self.preprocessing)
        self.face_pipeline = face_pipeline

    def fingerprint(self, pre_cropped: bool) -> str:
        """The preparation part of every cache key: preprocessing and face pipeline."""
        faces = "whole-image" if pre_cropped or self.face_pipeline is None else self.face_pipeline.fingerprint()
        return f"{self.preprocessing.fingerprint()}:{faces}"

    def locate(self, dataset: FaceDataset, sample: Sample,
               payload: ImagePayload = None) -> tuple[PreparedFace, np.ndarray | None]:
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
        return self.prepare_batch(dataset, [sample], [None])[0][0]

    def prepare_batch(self, dataset: FaceDataset, samples: Sequence[Sample],
                      payloads: Sequence[ImagePayload]) -> tuple[list[PreparedFace], torch.Tensor | None]:
        """Decode, locate and preprocess ``samples`` (from their ``payloads``): the faces (each
        readable one with its ``pixels`` and its ``tensor``, a view of the batch) and one
        ``(n, 3, S, S)`` batch of the readable ones, in order (None when none is readable)."""
        located = [self.locate(dataset, sample, payload) for sample, payload in zip(samples, payloads)]
        pixels = [self.transform.pixels(crop) for _, crop in located if crop is not None]
        batch = self.transform.batch(pixels) if pixels else None
        faces, readable = [], iter(range(len(pixels)))
        for face, crop in located:
            if crop is not None:
                index = next(readable)
                face = dataclasses.replace(face, tensor=batch[index], pixels=pixels[index])
            faces.append(face)
        return faces, batch


@dataclass(frozen=True)
class ForwardResults:
    """Per-face results in dataset order: the prepared faces (without tensors; None where a
    pass without the model needed no face), their logits and features (NaN rows for unreadable
    images, or without the model), and how many faces the model ran on."""

    faces: list[PreparedFace | None]
    logits: np.ndarray
    features: np.ndarray
    computed: int
    #: Each face's image content hash (:func:`read_content`; None when unreadable).
    contents: tuple[str | None, ...] = ()

    @property
    def usable(self) -> list[int]:
        """The rows of readable faces."""
        return [row for row, face in enumerate(self.faces) if face is not None and face.error is None]


class BatchConsumer(ABC):
    """What an :func:`extract` pass does with the faces it prepares besides the forward pass
    (e.g. attribution maps): it says which faces it needs, computes on their prepared batch on
    the model's thread, and its results are stored in the same transaction as the batch's."""

    #: What the consumer's results are called in a :class:`MissingResultsError`.
    what: str = "results"

    @abstractmethod
    def look_up(self, rows: Sequence[int], contents: Sequence[str | None], logits: np.ndarray) -> list[int]:
        """Of ``rows`` (readable faces; ``contents`` and ``logits`` are indexed by row, logits NaN
        in a pass without the model), those whose results are not stored: they are prepared
        and given to :meth:`compute`. Runs on the calling thread (it may read the cache)."""

    @abstractmethod
    def compute(self, rows: Sequence[int], faces: Sequence[PreparedFace]) -> dict[CacheKey, np.ndarray]:
        """The results of the prepared ``faces`` (tensor and pixels set) at ``rows``, as cache
        entries to store. Runs on the model's thread: nothing else uses the model meanwhile."""

    def stored(self, rows: Sequence[int]) -> None:
        """Called on the calling thread once the results of ``rows`` are stored."""


@dataclass
class _Extraction:
    """The state of one :func:`extract` call: results filled in row by row, each row's forward
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


@validate_params({"batch_size": [Interval(Integral, 1, None)]})
def extract(model: FerModel, dataset: FaceDataset, preparer: FacePreparer, indices: Sequence[int],
            cache: ResultCache | None, batch_size: int = 32, workers: int = 2,
            on_progress: Callable[[int], object] = lambda n: None, backend: str = DEFAULT_BACKEND,
            consumer: BatchConsumer | None = None, forward: bool = True, compute: bool = True) -> ForwardResults:
    """Logits and features of the faces at ``indices`` (with ``forward``): read from ``cache``
    where every part is stored, computed in one pass of the ``backend``
    (:data:`fer_core.backends.INFERENCE_BACKENDS`) otherwise; and the ``consumer``'s results of
    the faces it asks for, computed on the same prepared batches. Each batch is stored in one
    transaction on the calling thread before its faces are reported to ``on_progress``; every
    write is done when this returns.

    Faces to prepare are taken in batches of ``batch_size`` in order; ``workers`` threads read
    and decode ahead of the model (see the module's description). ``forward=False`` runs no
    forward pass (the consumer alone decides which faces to prepare). With ``compute=False``
    nothing is run: a readable face without its stored results raises
    :class:`~fer_core.errors.MissingResultsError` (after every face was looked up)."""
    if not forward and consumer is None:
        raise InvalidArgument("extract: without the forward pass a consumer is needed (there is nothing to do)")
    preparation = preparer.fingerprint(dataset.pre_cropped)
    samples = [dataset[i] for i in indices]
    state = _Extraction(samples, np.full((len(samples), len(model.emotions)), np.nan, dtype=np.float32),
                        np.full((len(samples), model.feature_dim), np.nan, dtype=np.float32),
                        [None] * len(samples), [None] * len(samples), [None] * len(samples))
    network = load_backend(model, backend) if forward and compute else None

    def batches(pool: ThreadPoolExecutor) -> Iterator[list[tuple[int, ImagePayload, bool]]]:
        """Look each window up as it is read; the rows to prepare ``(row, payload, run the
        model)``, ``batch_size`` at a time."""
        pending: list[tuple[int, ImagePayload, bool]] = []
        for start, window in _read_ahead(pool, dataset, samples, batch_size):
            hits, misses = _look_up(state, cache, model.fingerprint, preparation, start, window, forward)
            asked = consumer.look_up(hits, state.contents, state.logits) if consumer is not None and hits else []
            payloads = {row: window[row - start][0] for row in (*misses, *asked)}
            need = sorted(payloads)
            if len(need) < len(window):
                on_progress(len(window) - len(need))
            pending.extend((row, payloads[row], row in misses) for row in need)
            while len(pending) >= batch_size:
                yield pending[:batch_size]
                del pending[:batch_size]
        if pending:
            yield pending

    if not compute:
        _stored_only(state, preparer, dataset, consumer, batches, workers)
        return ForwardResults(state.faces, state.logits, state.features, 0, tuple(state.contents))

    def run(prepared: Future, modelled: list[bool]) -> tuple[list[PreparedFace], tuple[torch.Tensor, ...] | None]:
        faces, pixels = prepared.result()
        chosen = [flag for face, flag in zip(faces, modelled) if face.error is None]
        if network is None or pixels is None or not any(chosen):
            return faces, None
        return faces, network.forward(pixels if all(chosen) else pixels[torch.tensor(chosen)])

    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    model_thread = ThreadPoolExecutor(max_workers=1)  # the model runs batches in order, queued ahead
    try:
        queued: deque[tuple[list[int], list[bool], Future]] = deque()
        for batch in batches(pool):
            rows, payloads, modelled = ([item[i] for item in batch] for i in range(3))
            prepared = pool.submit(preparer.prepare_batch, dataset, [samples[r] for r in rows], payloads)
            queued.append((rows, modelled, model_thread.submit(run, prepared, modelled)))
            if len(queued) > COMPUTE_AHEAD:
                _store(state, cache, consumer, model_thread, *queued.popleft(), on_progress)
        while queued:
            _store(state, cache, consumer, model_thread, *queued.popleft(), on_progress)
    finally:
        model_thread.shutdown(cancel_futures=True)
        pool.shutdown(cancel_futures=True)
    return ForwardResults(state.faces, state.logits, state.features, state.computed, tuple(state.contents))


def cached_forward(model: FerModel, dataset: FaceDataset, preparer: FacePreparer, indices: Sequence[int],
                   cache: ResultCache | None, batch_size: int = 32, workers: int = 2,
                   on_progress: Callable[[int], object] = lambda n: None,
                   backend: str = DEFAULT_BACKEND, compute: bool = True) -> ForwardResults:
    """:func:`extract`'s logits and features alone (no consumer)."""
    return extract(model, dataset, preparer, indices, cache, batch_size, workers, on_progress, backend,
                   compute=compute)


@validate_params({"chunk_size": [Interval(Integral, 1, None)]})
def forward_chunks(model: FerModel, dataset: FaceDataset, preparer: FacePreparer, indices: Sequence[int],
                   cache: ResultCache | None, batch_size: int = 32, chunk_size: int = 1024,
                   on_progress: Callable[[int], object] = lambda n: None, backend: str = DEFAULT_BACKEND,
                   compute: bool = True) -> Iterator[ForwardResults]:
    """:func:`cached_forward` over ``indices`` ``chunk_size`` faces at a time (the one chunked
    loop of embedding and prediction: a chunk's results are dropped once the caller has taken
    what it keeps)."""
    for start in range(0, len(indices), chunk_size):
        yield cached_forward(model, dataset, preparer, indices[start:start + chunk_size], cache, batch_size,
                             on_progress=on_progress, backend=backend, compute=compute)


def _look_up(state: _Extraction, cache: ResultCache | None, model: str, preparation: str, start: int,
             window: list[tuple[ImagePayload, str | None]], forward: bool) -> tuple[list[int], list[int]]:
    """Record the window's contents; with ``forward``, fill in the rows whose logits, features
    and face are all stored. The readable rows that need no forward pass, and the rows that do
    (unreadable ones included: preparing them gives their error row)."""
    rows = range(start, start + len(window))
    for row, (_, content) in zip(rows, window):
        state.contents[row] = content
    if not forward:
        return [row for row in rows if state.contents[row] is not None], []
    for row in rows:
        content = state.contents[row]
        state.keys[row] = None if content is None else {
            kind: CacheKey(kind, model, preparation, content) for kind in FORWARD_KINDS}
    asked = [key for row in rows if state.keys[row] for key in state.keys[row].values()]
    stored = {} if cache is None or not asked else cache.get_many(asked)
    hits, misses = [], []
    for row in rows:
        row_keys = state.keys[row]
        if row_keys and state.contents[row] not in state.stored_now and all(key in stored for key in row_keys.values()):
            found, score, *box = (float(v) for v in stored[row_keys["face"]])
            state.faces[row] = PreparedFace(state.samples[row], None, bool(found), score, tuple(box))
            state.logits[row], state.features[row] = stored[row_keys["logits"]], stored[row_keys["embedding"]]
            hits.append(row)
        else:
            misses.append(row)
    return hits, misses


def _stored_only(state: _Extraction, preparer: FacePreparer, dataset: FaceDataset, consumer: BatchConsumer | None,
                 batches: Callable[[ThreadPoolExecutor], Iterator[list[tuple[int, ImagePayload, bool]]]],
                 workers: int) -> None:
    """:func:`extract` without the model: every window looked up, each unreadable image given
    its error row, and :class:`MissingResultsError` if a readable face lacks a stored result."""
    need: list[tuple[int, ImagePayload, bool]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for batch in batches(pool):
            need.extend(batch)
    modelled = [row for row, _, run in need if run and state.contents[row] is not None]
    if modelled:
        raise MissingResultsError("logits and features", len(modelled), len(state.samples))
    asked = [row for row, _, run in need if not run]
    if asked:
        raise MissingResultsError(consumer.what if consumer is not None else "results", len(asked),
                                  len(state.samples))
    for row, payload, _ in need:
        state.faces[row] = preparer.locate(dataset, state.samples[row], payload)[0]


def _store(state: _Extraction, cache: ResultCache | None, consumer: BatchConsumer | None,
           model_thread: ThreadPoolExecutor, rows: list[int], modelled: list[bool], computed: Future,
           on_progress: Callable[[int], object]) -> None:
    """Put one batch's results in place, run the consumer on the faces it needs (on the model's
    thread), store everything in ``cache`` in one transaction, then report the batch."""
    faces, outputs = computed.result()
    ran = [row for row, face, flag in zip(rows, faces, modelled) if flag and face.error is None]
    state.computed += sum(modelled)
    new: dict[CacheKey, np.ndarray] = {}
    if outputs is not None:
        batch_logits, batch_features = (output.numpy() for output in outputs)
        state.logits[ran], state.features[ran] = batch_logits, batch_features
        new.update(_forward_entries(state, ran, faces, rows, batch_logits, batch_features))
    consumed: list[int] = []
    if consumer is not None:
        readable = {row: face for row, face in zip(rows, faces) if face.error is None}
        asked = set(consumer.look_up(ran, state.contents, state.logits)) if ran else set()
        consumed = [row for row, flag in zip(rows, modelled) if row in readable and (not flag or row in asked)]
        if consumed:
            new.update(model_thread.submit(consumer.compute, consumed, [readable[row] for row in consumed]).result())
    for row, face in zip(rows, faces):
        state.faces[row] = dataclasses.replace(face, tensor=None, pixels=None)
    if new and cache is not None:
        cache.put_many(new)
    state.stored_now.update(state.contents[row] for row in ran if state.keys[row])
    if consumer is not None:
        consumer.stored(consumed)
    on_progress(len(rows))


def _forward_entries(state: _Extraction, ran: list[int], faces: list[PreparedFace], rows: list[int],
                     batch_logits: np.ndarray, batch_features: np.ndarray) -> dict[CacheKey, np.ndarray]:
    """The logits, features and face entries of each row the model ran on that has cache keys."""
    face_of = dict(zip(rows, faces))
    new: dict[CacheKey, np.ndarray] = {}
    for row, face_logits, face_features in zip(ran, batch_logits, batch_features):
        row_keys, face = state.keys[row], face_of[row]
        if row_keys:
            new[row_keys["logits"]] = face_logits
            new[row_keys["embedding"]] = face_features
            new[row_keys["face"]] = np.array([face.face_found, face.face_score, *face.box], np.float32)
    return new
