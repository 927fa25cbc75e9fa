"""One dataset face in full, for the dashboard's drill-down: the photo as stored with the face
the pipeline found in it, the aligned crop the model saw and its class probabilities, an
attribution map per method and explained class with its facial-region shares, and the face's
nearest faces in the model's feature space."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from fer_core.backends import InferenceOptions
from fer_core.cache import ResultCache
from fer_core.data import FaceDataset
from fer_core.domain_gap import nearest_rows
from fer_core.errors import DataError
from fer_core.explain.analysis.regions import REGIONS, region_shares
from fer_core.faces import Face, FacePipeline
from fer_core.inference import find_face
from fer_core.labels import EMOTIONS
from fer_core.models import EmotionRecognizer, FerModel
from fer_core.precompute import explain_dataset
from fer_core.views import map_keypoints, rows_for_keys


@dataclass(frozen=True, eq=False)
class FaceView:
    """One face as the model saw it: ``photo`` is the image as stored (RGB), ``face`` the crop
    the model classified with its detection in ``photo``'s pixels (the whole image for
    pre-cropped data, or when no face was found: ``detected`` is then False); ``label`` the true
    emotion (``""`` unknown); ``probabilities`` the softmax over the model's classes, in its
    order; ``predicted`` the class under the recognizer's scoring protocol; ``features`` the
    pooled penultimate features."""

    key: str
    source: str
    label: str
    photo: np.ndarray
    face: Face
    detected: bool
    probabilities: dict[str, float]
    predicted: str
    features: np.ndarray

    @property
    def confidence(self) -> float:
        """The probability of the predicted class."""
        return self.probabilities[self.predicted]


def view_face(recognizer: EmotionRecognizer, dataset: FaceDataset, key: str,
              face_pipeline: FacePipeline | None) -> FaceView:
    """The face with sample ``key`` in ``dataset``, found as every table of the project finds it
    (:func:`fer_core.inference.find_face`), classified and embedded by ``recognizer``."""
    [row] = rows_for_keys(dataset, [key])
    sample = dataset[row]
    photo = dataset.read(sample)
    face, detected = find_face(photo, dataset.pre_cropped, face_pipeline)
    predicted, scores = recognizer.predict_emotions(face.image)
    features = recognizer.extract_features(face.image)[0]
    return FaceView(sample.key, sample.source, EMOTIONS[sample.label] if sample.label >= 0 else "", photo, face,
                    detected and not dataset.pre_cropped, dict(zip(recognizer.emotions, map(float, scores))),
                    predicted, features)


@dataclass(frozen=True, eq=False)
class FaceMap:
    """One method's map of one face (at the stored map size) for ``target`` (the class
    explained), and the share of its positive attribution in each facial region
    (:data:`~fer_core.explain.analysis.regions.REGIONS`; NaN when the map has none)."""

    method: str
    target: str
    map: np.ndarray
    shares: dict[str, float]
    computed: bool


def explain_face(model: FerModel, dataset: FaceDataset, key: str, cache: ResultCache, method: str, target: str,
                 face_pipeline: FacePipeline | None,
                 options: InferenceOptions = InferenceOptions(progress=False)) -> FaceMap | None:
    """``method``'s map of face ``key`` for its ``target`` (``"predicted"``, ``"true"`` or an
    emotion), read from ``cache`` where stored and computed and stored otherwise (through
    :func:`fer_core.precompute.explain_dataset`, with the method's default settings: the maps
    the Saliency browser and ``fer-core explain`` store; ``options``: how the model runs, by
    default without a progress bar); None when the face has nothing to explain for ``target``
    (no label for ``"true"``, or an unreadable image)."""
    rows = rows_for_keys(dataset, [key])
    found = explain_dataset(model, dataset.subset(rows), cache, method, target=target, face_pipeline=face_pipeline,
                            options=options)
    if not len(found.maps):
        return None
    points, _ = map_keypoints(found.keypoints, found.maps.shape[-1], dataset.pre_cropped)
    shares = region_shares(found.maps, points)[0]
    return FaceMap(method, str(found.table["target_emotion"].iloc[0]), found.maps[0],
                   dict(zip(REGIONS, map(float, shares))), bool(found.computed))


def nearest_faces(features: np.ndarray, pool: pd.DataFrame, pool_features: np.ndarray, k: int = 4,
                  exclude: np.ndarray | None = None) -> pd.DataFrame:
    """The ``k`` faces of each domain of ``pool`` (an embeddings table,
    :class:`fer_core.precompute.Embeddings`, with its ``features``) nearest to ``features`` by
    cosine distance, nearest first: the pool's columns plus ``cosine_distance``. Rows marked in
    ``exclude`` (e.g. the face itself) are left out."""
    if len(pool) != len(pool_features):
        raise DataError(f"the pool has {len(pool)} rows and {len(pool_features)} feature rows")
    keep = np.ones(len(pool), dtype=bool) if exclude is None else ~np.asarray(exclude, dtype=bool)
    if keep.shape != (len(pool),):
        raise DataError(f"exclude: expected one flag per pool row ({len(pool)}), got shape {keep.shape}")
    found = []
    for domain in dict.fromkeys(pool["domain"]):
        rows = np.flatnonzero(keep & (pool["domain"] == domain).to_numpy())
        if not len(rows):
            continue
        order, distances = nearest_rows(features, pool_features[rows], k)
        found.append(pool.iloc[rows[order]].assign(cosine_distance=distances))
    return pd.concat(found, ignore_index=True) if found else pool.iloc[:0].assign(cosine_distance=[])
