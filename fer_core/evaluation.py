"""Classification metrics with bootstrap confidence intervals, McNemar's test, Cochran's Q with
Holm's correction, and the spread of repeated runs.

Point estimates come from scikit-learn; confidence intervals from ``scipy.stats.bootstrap``
(paired resampling of faces); McNemar's exact test from ``scipy.stats.binomtest``; Cochran's Q
from its textbook formula with ``scipy.stats.chi2``; the spread over seeds from Student's t.
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from fer_core.errors import DataError
from fer_core.labels import EMOTIONS, VALENCE_GROUPS, class_indices, valence_index
from fer_core.scoring import score

#: Headline metrics that get a bootstrap confidence interval.
CI_METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def _confusions(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """Confusion matrices for a batch of resamples: ``(..., n)`` -> ``(..., k, k)``."""
    flat = (y_true * k + y_pred).reshape(-1, y_true.shape[-1])
    counts = np.stack([np.bincount(row, minlength=k * k) for row in flat])
    return counts.reshape(*y_true.shape[:-1], k, k)


def _scores_from_confusion(cm: np.ndarray, n_labels: int) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and macro-F1 from confusion matrices ``(..., k, k)`` as
    scikit-learn computes them: balanced accuracy over the classes present in the truth,
    macro-F1 over the first ``n_labels`` classes (the rest collect off-label predictions)."""
    cm = cm.astype(np.float64)
    support = cm.sum(-1)
    predicted = cm.sum(-2)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    present = support > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present, tp / np.where(present, support, 1), 0.0)
        precision = np.where(predicted > 0, tp / np.where(predicted > 0, predicted, 1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.where(precision + recall > 0,
                                                                                 precision + recall, 1), 0.0)
    return {
        "accuracy": tp.sum(-1) / cm.sum((-2, -1)),
        "balanced_accuracy": (recall * present).sum(-1) / present.sum(-1),
        "macro_f1": f1[..., :n_labels].mean(-1),
    }


def bootstrap_ci(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int, n_resamples: int = 1000,
                 confidence: float = 0.95, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CIs of :data:`CI_METRICS` (faces resampled with replacement).

    Labels are positions ``0..n_labels-1``; predictions may also be ``n_labels`` (off-label)."""
    if len(y_true) < 2:
        return {name: (float("nan"), float("nan")) for name in CI_METRICS}
    cis = {}
    for name in CI_METRICS:
        def statistic(t: np.ndarray, p: np.ndarray, axis: int = -1, name: str = name) -> np.ndarray:
            return _scores_from_confusion(_confusions(t, p, n_labels + 1), n_labels)[name]
        result = stats.bootstrap((y_true, y_pred), statistic, paired=True, vectorized=True,
                                 n_resamples=n_resamples, confidence_level=confidence, method="percentile",
                                 random_state=np.random.default_rng(seed))
        cis[name] = (float(result.confidence_interval.low), float(result.confidence_interval.high))
    return cis


def classification_report(y_true: Sequence[int], y_pred: Sequence[int], emotions: Sequence[str] = EMOTIONS,
                          n_resamples: int = 1000, seed: int = 0,
                          predicted: Sequence[str] | None = None) -> dict[str, Any]:
    """Every metric of a prediction set, JSON-ready.

    ``y_true`` and ``y_pred`` are canonical class indices (into :data:`EMOTIONS`); ``emotions``
    are the test set's true classes, ``predicted`` the classes a prediction could be (the
    scoring protocol's; default: ``emotions`` and whatever ``y_pred`` holds). A prediction may
    be a class the test set lacks: it counts as an error of its face's class.

    - ``per_class`` and ``macro_f1`` are over the true classes ``emotions`` only (a class the
      test set lacks has no recall; its false alarms lower the precision of no true class);
      ``balanced_accuracy`` is the mean recall over the true classes present.
    - ``confusion``: rows ``labels`` (the true classes), columns ``predicted`` (the true classes
      and every class a prediction could be, canonical order); each row of ``normalized`` sums
      to 1 over all the columns, so a sink such as Neutral on a folder without Neutral shows.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise DataError(f"y_true and y_pred must be 1-d and equally long, got {y_true.shape} and {y_pred.shape}")
    if len(y_true) == 0:
        raise DataError("no labelled predictions to evaluate")
    labels = class_indices(emotions)
    outside = sorted(set(np.unique(y_true)) - set(labels))
    if outside:
        raise DataError(f"true labels {[EMOTIONS[i] for i in outside]} are not among the dataset's classes {list(emotions)}")
    possible = set(labels) | set(np.unique(y_pred) if predicted is None else class_indices(predicted))
    unexpected = sorted(set(np.unique(y_pred)) - possible)
    if unexpected:
        raise DataError(f"predictions {[EMOTIONS[i] for i in unexpected]} are not among the scored classes "
                        f"{list(predicted)}")
    columns = np.array(sorted(possible), dtype=np.int64)
    scores = score(y_true, y_pred, labels)
    cm = skm.confusion_matrix(y_true, y_pred, labels=columns)[np.searchsorted(columns, labels)]
    with np.errstate(invalid="ignore", divide="ignore"):
        cm_norm = np.nan_to_num(cm / cm.sum(1, keepdims=True))
    # Positions into `labels` for the vectorized bootstrap (predictions outside map to an extra class).
    position = {int(c): i for i, c in enumerate(labels)}
    t_pos = np.array([position[int(t)] for t in y_true])
    p_pos = np.array([position.get(int(p), len(labels)) for p in y_pred])
    groups = list(VALENCE_GROUPS)
    v_true, v_pred = valence_index(y_true), valence_index(y_pred)
    return {
        "n": int(len(y_true)),
        "emotions": list(emotions),
        "accuracy": scores.accuracy,
        "balanced_accuracy": scores.balanced_accuracy,
        "macro_f1": scores.macro_f1,
        "weighted_f1": scores.weighted_f1,
        "ci95": bootstrap_ci(t_pos, p_pos, len(labels), n_resamples=n_resamples, seed=seed),
        "per_class": {
            e: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for e, p, r, f, s in zip(emotions, scores.precision, scores.recall, scores.f1, scores.support)
        },
        "confusion": {"labels": list(emotions), "predicted": [EMOTIONS[i] for i in columns], "counts": cm.tolist(),
                      "normalized": cm_norm.round(6).tolist()},
        "valence": {
            "groups": groups,
            "accuracy": float(skm.accuracy_score(v_true, v_pred)),
            "per_group_recall": {
                g: float(r) for g, r in zip(groups, skm.recall_score(
                    v_true, v_pred, labels=range(len(groups)), average=None, zero_division=0))
            },
        },
    }


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict[str, float | int]:
    """McNemar's exact test on paired correctness (same faces, two models).

    ``b``: faces A got right and B wrong; ``c``: the reverse. The p-value is the two-sided
    binomial test of ``b`` out of ``b + c`` against 1/2 (exact; valid for small counts).
    """
    a = np.asarray(correct_a, dtype=bool)
    b_ = np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape:
        raise DataError(f"McNemar needs the same faces in both sets: {a.shape} vs {b_.shape}")
    b = int(np.sum(a & ~b_))
    c = int(np.sum(~a & b_))
    p_value = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)
    return {"n": int(a.size), "a_only_correct": b, "b_only_correct": c,
            "accuracy_a": float(a.mean()) if a.size else float("nan"),
            "accuracy_b": float(b_.mean()) if a.size else float("nan"), "p_value": p_value}


def _cochran_statistic(columns: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Cochran's Q from column totals ``(..., k)`` and the row totals (fixed under permutation)."""
    total = rows.sum()
    denominator = k * total - (rows ** 2).sum()
    return (k - 1) * (k * (columns ** 2).sum(axis=-1) - total ** 2) / denominator


def cochran_q(correct: np.ndarray, n_permutations: int = 9999, seed: int = 0) -> dict[str, float | int]:
    """Cochran's Q test that ``k`` paired treatments (columns) have the same success rate, on a
    ``(blocks, k)`` array of 0/1 outcomes (here: a face under one seed, correct or not, for each
    training mix). ``Q = (k-1) (k sum_j C_j^2 - N^2) / (k N - sum_i R_i^2)`` with column totals
    ``C_j``, row totals ``R_i`` and ``N`` successes. ``p_value``: chi-square on ``k-1`` degrees of
    freedom (the textbook approximation, poor with few informative blocks); ``p_permutation``: the
    exact-in-the-limit test that shuffles each block's outcomes over the treatments
    (``n_permutations`` seeded draws, ``(hits + 1) / (n + 1)``). Blocks that agree on every
    treatment carry no information and drop out. With ``k = 2`` Q is McNemar's chi-square without
    continuity correction and the permutation test McNemar's exact test."""
    x = np.asarray(correct, dtype=np.int64)
    if x.ndim != 2 or x.shape[1] < 2 or x.shape[0] == 0:
        raise DataError(f"Cochran's Q needs a (blocks, k >= 2) array of 0/1 outcomes, got shape {x.shape}")
    if not np.isin(x, (0, 1)).all():
        raise DataError("Cochran's Q needs 0/1 outcomes")
    k = x.shape[1]
    rows = x.sum(axis=1)
    informative = x[(rows > 0) & (rows < k)]
    result = {"q": 0.0, "df": k - 1, "p_value": 1.0, "p_permutation": 1.0, "permutations": n_permutations,
              "blocks": int(x.shape[0]), "informative_blocks": int(len(informative))}
    if not len(informative):
        return result
    row_totals = informative.sum(axis=1)
    q = float(_cochran_statistic(informative.sum(axis=0), row_totals, k))
    rng = np.random.default_rng(seed)
    columns = np.zeros((n_permutations, k), dtype=np.int64)
    for total in np.unique(row_totals):  # blocks of r successes put them on a uniform r-subset of treatments
        subsets = np.array([[j in chosen for j in range(k)] for chosen in itertools.combinations(range(k), total)])
        picks = rng.multinomial(int((row_totals == total).sum()), np.full(len(subsets), 1 / len(subsets)),
                                size=n_permutations)
        columns += picks @ subsets.astype(np.int64)
    hits = int((_cochran_statistic(columns, row_totals, k) >= q - 1e-9).sum())
    return {**result, "q": q, "p_value": float(stats.chi2.sf(q, k - 1)),
            "p_permutation": (hits + 1) / (n_permutations + 1)}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of ``p_values`` (family-wise error), in their order:
    the ``i``-th smallest becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (len(p) - np.arange(len(p))) * p[order])
    adjusted = np.empty_like(p)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted.tolist()


def seed_spread(values: Sequence[float], confidence: float = 0.95) -> dict[str, float | int]:
    """Mean, sample standard deviation and the Student-t confidence interval of the mean of
    repeated runs (one value per seed); sd and the interval are NaN for a single run."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise DataError("seed_spread needs at least one value")
    mean = float(v.mean())
    if v.size < 2:
        return {"n": 1, "mean": mean, "sd": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    sd = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, v.size - 1)) * sd / np.sqrt(v.size)
    return {"n": int(v.size), "mean": mean, "sd": sd, "ci_low": float(mean - half), "ci_high": float(mean + half)}
