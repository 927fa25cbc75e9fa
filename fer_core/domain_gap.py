"""How far synthetic faces are from real ones, measured on model features.

2-D projections of feature sets behind one registry (``project(features, "umap")``, like
timm's ``create_model``), and domain-gap metrics between real features ``A`` and synthetic
features ``B``: a domain classifier (balanced accuracy and proxy A-distance), the unbiased
RBF MMD² with a permutation test, KID, distances between class centroids and each synthetic
face's nearest real face. :func:`domain_gap_report` gathers them in a JSON-ready dict.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from numbers import Integral, Real

import numpy as np

from fer_core.errors import DataError, InvalidArgument
from fer_core.labels import EMOTIONS
from fer_core.validation import Interval, StrOptions, validate_params

Projection = Callable[..., np.ndarray]

#: Projection methods by name; each maps ``(features, seed, **params)`` to an ``(N, 2)`` array.
PROJECTIONS: dict[str, Projection] = {}


def register_projection(name: str) -> Callable[[Projection], Projection]:
    """Decorator that adds a projection method to :data:`PROJECTIONS` under ``name``."""
    def add(method: Projection) -> Projection:
        PROJECTIONS[name] = method
        return method
    return add


def check_features(features: np.ndarray, name: str = "features", min_rows: int = 2) -> np.ndarray:
    """``features`` as a finite float64 ``(N, D)`` array with at least ``min_rows`` rows."""
    array = np.asarray(features)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        raise DataError(f"{name} must be a numeric (N, D) array, got shape {array.shape} of {array.dtype}")
    if array.shape[0] < min_rows or array.shape[1] < 1:
        raise DataError(f"{name} needs at least {min_rows} rows and 1 column, got shape {array.shape}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise DataError(f"{name} contains NaN or infinite values")
    return array


def _check_pair(real: np.ndarray, synthetic: np.ndarray, min_rows: int = 2) -> tuple[np.ndarray, np.ndarray]:
    real = check_features(real, "real features", min_rows)
    synthetic = check_features(synthetic, "synthetic features", min_rows)
    if real.shape[1] != synthetic.shape[1]:
        raise DataError(f"real and synthetic features must have the same width, got {real.shape[1]} "
                        f"and {synthetic.shape[1]}")
    return real, synthetic


@register_projection("pca")
def _pca(features: np.ndarray, seed: int, **params) -> np.ndarray:
    from sklearn.decomposition import PCA
    return PCA(n_components=2, random_state=seed, **params).fit_transform(features)


@register_projection("tsne")
def _tsne(features: np.ndarray, seed: int, **params) -> np.ndarray:
    from sklearn.manifold import TSNE
    params.setdefault("perplexity", min(30.0, (len(features) - 1) / 3))
    params.setdefault("init", "pca")
    return TSNE(n_components=2, random_state=seed, **params).fit_transform(features)


@register_projection("umap")
def _umap(features: np.ndarray, seed: int, **params) -> np.ndarray:
    from umap import UMAP
    params.setdefault("n_neighbors", min(15, len(features) - 1))
    return UMAP(n_components=2, random_state=seed, **params).fit_transform(features)


@validate_params({"method": [StrOptions(PROJECTIONS)]})
def project(features: np.ndarray, method: str = "pca", seed: int = 0, **params) -> np.ndarray:
    """Project ``(N, D)`` features to ``(N, 2)`` with a method of :data:`PROJECTIONS`.

    ``seed`` makes the result deterministic; ``params`` go to the method (PCA, t-SNE or
    UMAP keyword arguments, e.g. ``perplexity`` or ``n_neighbors``).
    """
    array = check_features(features, min_rows=4)
    try:
        return np.asarray(PROJECTIONS[method](array, seed, **params), dtype=np.float64)
    except TypeError as exc:
        raise InvalidArgument(f"invalid parameters {sorted(params)} for projection {method!r}: {exc}") from exc


@dataclass(frozen=True)
class DomainClassifierScore:
    """Cross-validated real-vs-synthetic classification: ``balanced_accuracy`` (0.5 = the
    domains cannot be told apart) and the proxy A-distance ``2 (1 - 2 err)`` (0 to 2)."""

    balanced_accuracy: float
    proxy_a_distance: float
    folds: int


@validate_params({"folds": [Interval(Integral, 2, None)]})
def domain_classifier_accuracy(real: np.ndarray, synthetic: np.ndarray, folds: int = 5,
                               seed: int = 0) -> DomainClassifierScore:
    """Logistic regression on standardized features, stratified ``folds``-fold CV, telling
    real (``real``) from synthetic (``synthetic``) rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    real, synthetic = _check_pair(real, synthetic, min_rows=folds)
    features = np.concatenate([real, synthetic])
    domain = np.r_[np.zeros(len(real), dtype=np.int64), np.ones(len(synthetic), dtype=np.int64)]
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    predicted = cross_val_predict(classifier, features, domain,
                                  cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    accuracy = float(balanced_accuracy_score(domain, predicted))
    return DomainClassifierScore(accuracy, 2.0 * (1.0 - 2.0 * (1.0 - accuracy)), folds)


def _unbiased_mmd2(kernel: np.ndarray, first: np.ndarray) -> float:
    """Unbiased MMD² from the pooled kernel matrix; ``first`` marks the rows of the first set."""
    second = ~first
    m, n = int(first.sum()), int(second.sum())
    k_xx = kernel[np.ix_(first, first)]
    k_yy = kernel[np.ix_(second, second)]
    k_xy = kernel[np.ix_(first, second)]
    return float((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1)) + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
                 - 2.0 * k_xy.mean())


def _squared_distances(features: np.ndarray) -> np.ndarray:
    norms = (features ** 2).sum(1)
    return np.maximum(norms[:, None] + norms[None, :] - 2.0 * features @ features.T, 0.0)


def median_gamma(features: np.ndarray) -> float:
    """The median heuristic for the RBF kernel ``exp(-gamma d²)``: 1 / median pairwise d²."""
    distances = _squared_distances(check_features(features))
    median = float(np.median(distances[np.triu_indices(len(distances), k=1)]))
    if median <= 0.0:
        raise DataError("the median heuristic needs distinct feature rows (median pairwise distance is 0)")
    return 1.0 / median


@validate_params({"gamma": [Interval(Real, 0, None, closed="neither"), None],
                  "permutations": [Interval(Integral, 1, None)]})
def mmd_rbf(real: np.ndarray, synthetic: np.ndarray, gamma: float | None = None, permutations: int = 200,
            seed: int = 0) -> tuple[float, float]:
    """Unbiased MMD² with the RBF kernel ``exp(-gamma ||x - y||²)`` and its permutation-test
    p-value ``(1 + #{permuted >= observed}) / (1 + permutations)``. ``gamma`` None uses
    :func:`median_gamma` on the pooled features."""
    real, synthetic = _check_pair(real, synthetic)
    pooled = np.concatenate([real, synthetic])
    gamma = median_gamma(pooled) if gamma is None else float(gamma)
    kernel = np.exp(-gamma * _squared_distances(pooled))
    first = np.arange(len(pooled)) < len(real)
    observed = _unbiased_mmd2(kernel, first)
    rng = np.random.default_rng(seed)
    exceed = sum(_unbiased_mmd2(kernel, rng.permutation(first)) >= observed for _ in range(permutations))
    return observed, (1.0 + exceed) / (1.0 + permutations)


@validate_params({"subsets": [Interval(Integral, 1, None)], "subset_size": [Interval(Integral, 2, None)]})
def kid(real: np.ndarray, synthetic: np.ndarray, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018) on these features: the mean and
    standard deviation over ``subsets`` random subsets of the unbiased MMD² with the kernel
    ``(x·y / D + 1)³``. ``subset_size`` is capped at the smaller set's size."""
    real, synthetic = _check_pair(real, synthetic)
    size = min(subset_size, len(real), len(synthetic))
    rng = np.random.default_rng(seed)
    first = np.arange(2 * size) < size
    values = []
    for _ in range(subsets):
        pooled = np.concatenate([real[rng.choice(len(real), size, replace=False)],
                                 synthetic[rng.choice(len(synthetic), size, replace=False)]])
        values.append(_unbiased_mmd2((pooled @ pooled.T / pooled.shape[1] + 1.0) ** 3, first))
    return float(np.mean(values)), float(np.std(values))


def _check_labels(labels: np.ndarray, rows: int, name: str) -> np.ndarray:
    array = np.asarray(labels)
    if array.shape != (rows,) or not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{name} must be {rows} integer labels (one per feature row), got shape {array.shape} "
                        f"of {array.dtype}")
    if array.size and (array.min() < 0 or array.max() >= len(EMOTIONS)):
        raise DataError(f"{name} must index fer_core.labels.EMOTIONS (0..{len(EMOTIONS) - 1})")
    return array


def centroid_distances(real: np.ndarray, real_labels: np.ndarray, synthetic: np.ndarray,
                       synthetic_labels: np.ndarray) -> dict[str, dict[str, float]]:
    """For each emotion present in both sets: the Euclidean and cosine distances between the
    real and the synthetic class centroids, with the class sizes."""
    real, synthetic = _check_pair(real, synthetic, min_rows=1)
    real_labels = _check_labels(real_labels, len(real), "real labels")
    synthetic_labels = _check_labels(synthetic_labels, len(synthetic), "synthetic labels")
    distances: dict[str, dict[str, float]] = {}
    for label in np.intersect1d(real_labels, synthetic_labels):
        real_centroid = real[real_labels == label].mean(0)
        synthetic_centroid = synthetic[synthetic_labels == label].mean(0)
        norms = np.linalg.norm(real_centroid) * np.linalg.norm(synthetic_centroid)
        distances[EMOTIONS[label]] = {
            "euclidean": float(np.linalg.norm(real_centroid - synthetic_centroid)),
            "cosine": float(1.0 - real_centroid @ synthetic_centroid / norms) if norms > 0 else float("nan"),
            "n_real": int((real_labels == label).sum()),
            "n_synthetic": int((synthetic_labels == label).sum()),
        }
    return distances


def _unit_rows(features: np.ndarray, name: str) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    if (norms == 0).any():
        raise DataError(f"{name} has all-zero rows; cosine distance is undefined for them")
    return features / norms


def nearest_real(synthetic: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each synthetic row, the index of the nearest real row and its cosine distance
    ``1 - cos`` (0 = same direction, 2 = opposite)."""
    real, synthetic = _check_pair(real, synthetic, min_rows=1)
    similarity = _unit_rows(synthetic, "synthetic features") @ _unit_rows(real, "real features").T
    indices = similarity.argmax(1)
    return indices, 1.0 - similarity[np.arange(len(synthetic)), indices]


def domain_gap_report(real: np.ndarray, synthetic: np.ndarray, real_labels: np.ndarray | None = None,
                      synthetic_labels: np.ndarray | None = None, seed: int = 0) -> dict:
    """Every domain-gap metric between real and synthetic features, as a JSON-ready dict;
    per-class centroid distances when both label arrays are given."""
    real, synthetic = _check_pair(real, synthetic, min_rows=5)
    mmd2, p_value = mmd_rbf(real, synthetic, seed=seed)
    kid_mean, kid_std = kid(real, synthetic, seed=seed)
    neighbours, neighbour_distances = nearest_real(synthetic, real)
    report = {
        "n_real": len(real),
        "n_synthetic": len(synthetic),
        "domain_classifier": asdict(domain_classifier_accuracy(real, synthetic, seed=seed)),
        "mmd_rbf": {"mmd2": mmd2, "p_value": p_value},
        "kid": {"mean": kid_mean, "std": kid_std},
        "nearest_real": {
            "mean_cosine_distance": float(neighbour_distances.mean()),
            "median_cosine_distance": float(np.median(neighbour_distances)),
            "distinct_real_neighbours": int(np.unique(neighbours).size),
        },
    }
    if real_labels is not None and synthetic_labels is not None:
        report["centroid_distances"] = centroid_distances(real, real_labels, synthetic, synthetic_labels)
    return report


@validate_params({"k": [Interval(Integral, 1, None)]})
def nearest_rows(query: np.ndarray, pool: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``pool`` nearest to the feature vector ``query`` by cosine distance
    (``1 - cos``), nearest first: their indices and distances."""
    query_row, pool = _check_pair(np.asarray(query).reshape(1, -1), pool, min_rows=1)
    distances = 1.0 - (_unit_rows(pool, "pool features") @ _unit_rows(query_row, "query features")[0])
    order = np.argsort(distances, kind="stable")[:k]
    return order, distances[order]


def class_matched_rows(real_labels: np.ndarray, synthetic_labels: np.ndarray,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a class-matched comparison: for every emotion both sets hold, as many faces of it
    from each set (the smaller count, a seeded draw from the larger); unlabelled faces and the
    classes one set lacks are left out. The gap measured on these rows is not the class mix's."""
    real_labels, synthetic_labels = np.asarray(real_labels), np.asarray(synthetic_labels)
    if real_labels.ndim != 1 or synthetic_labels.ndim != 1:
        raise DataError(f"expected one label per face (-1: unknown), got shapes {real_labels.shape} and "
                        f"{synthetic_labels.shape}")
    known = [_check_labels(labels[labels >= 0], int((labels >= 0).sum()), name)  # -1: unknown, left out
             for name, labels in (("real labels", real_labels), ("synthetic labels", synthetic_labels))]
    rng = np.random.default_rng(seed)
    real_rows, synthetic_rows = [], []
    for label in np.intersect1d(*known):
        first, second = np.flatnonzero(real_labels == label), np.flatnonzero(synthetic_labels == label)
        count = min(len(first), len(second))
        real_rows.append(np.sort(rng.choice(first, count, replace=False)))
        synthetic_rows.append(np.sort(rng.choice(second, count, replace=False)))
    if not real_rows:
        raise DataError("the real and synthetic faces share no labelled emotion: nothing to match")
    return np.concatenate(real_rows), np.concatenate(synthetic_rows)


#: Fewest faces of a class on each side for :func:`per_class_gap` to measure it.
MIN_CLASS_FACES = 5


def per_class_gap(real: np.ndarray, real_labels: np.ndarray, synthetic: np.ndarray, synthetic_labels: np.ndarray,
                  permutations: int = 200, seed: int = 0) -> list[dict]:
    """The gap within each emotion both sets hold (at least :data:`MIN_CLASS_FACES` faces a
    side): class sizes, centroid cosine distance, the domain classifier's balanced accuracy
    (chance: 0.5) and RBF MMD² with its permutation p-value, Holm-adjusted over the classes
    (``p_holm``). A class with fewer faces gets a row with its sizes and a ``note``."""
    real, synthetic = _check_pair(real, synthetic, min_rows=1)
    real_labels = _check_labels(real_labels, len(real), "real labels")
    synthetic_labels = _check_labels(synthetic_labels, len(synthetic), "synthetic labels")
    centroids = centroid_distances(real, real_labels, synthetic, synthetic_labels)
    rows = []
    for emotion, centroid in centroids.items():
        label = EMOTIONS.index(emotion)
        first, second = real[real_labels == label], synthetic[synthetic_labels == label]
        row = {"emotion": emotion, "n_real": len(first), "n_synthetic": len(second),
               "centroid_cosine": centroid["cosine"], "classifier_balanced_accuracy": float("nan"),
               "mmd2": float("nan"), "p_value": float("nan"), "note": ""}
        if min(len(first), len(second)) < MIN_CLASS_FACES:
            row["note"] = f"fewer than {MIN_CLASS_FACES} faces on a side: not measured"
        else:
            folds = min(5, len(first), len(second))
            classifier = domain_classifier_accuracy(first, second, folds, seed)
            row["classifier_balanced_accuracy"] = classifier.balanced_accuracy
            row["mmd2"], row["p_value"] = mmd_rbf(first, second, permutations=permutations, seed=seed)
        rows.append(row)
    adjusted = holm_finite([row["p_value"] for row in rows])
    return [{**row, "p_holm": float(p)} for row, p in zip(rows, adjusted)]


def holm_finite(p_values: Sequence[float]) -> np.ndarray:
    """:func:`fer_core.evaluation.holm` over the finite p-values (NaN: not tested, left NaN)."""
    from fer_core.evaluation import holm
    values = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(len(values), np.nan)
    finite = np.isfinite(values)
    adjusted[finite] = holm(values[finite]) if finite.any() else []
    return adjusted
