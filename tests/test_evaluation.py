"""Metrics equal scikit-learn's on a fixed prediction set; CIs and McNemar behave."""

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from fer_core.errors import DataError
from fer_core.evaluation import classification_report, mcnemar
from fer_core.labels import EMOTIONS, FER2013_FOLDERS


@pytest.fixture
def predictions():
    rng = np.random.default_rng(42)
    seven = np.array([i for i, e in enumerate(EMOTIONS) if e != "Contempt"])
    y_true = rng.choice(seven, 600, p=[0.14, 0.02, 0.14, 0.25, 0.17, 0.17, 0.11])
    y_pred = np.where(rng.random(600) < 0.65, y_true, rng.choice(seven, 600))
    return y_true, y_pred


def test_metrics_equal_sklearn(predictions):
    y_true, y_pred = predictions
    report = classification_report(y_true, y_pred, FER2013_FOLDERS.emotions, n_resamples=200)
    labels = [EMOTIONS.index(e) for e in FER2013_FOLDERS.emotions]
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert report["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert report["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, labels=labels, average="macro"))
    assert report["confusion"]["counts"] == skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels)
    for i, emotion in enumerate(FER2013_FOLDERS.emotions):
        assert report["per_class"][emotion] == pytest.approx(
            {"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]})
    normalized = np.array(report["confusion"]["normalized"])
    assert np.allclose(normalized.sum(1), 1.0)


def test_confidence_intervals_contain_the_estimate_and_shrink_with_n(predictions):
    y_true, y_pred = predictions
    small = classification_report(y_true[:150], y_pred[:150], FER2013_FOLDERS.emotions, n_resamples=300)
    large = classification_report(y_true, y_pred, FER2013_FOLDERS.emotions, n_resamples=300)
    for name in ("accuracy", "balanced_accuracy", "macro_f1"):
        low, high = large["ci95"][name]
        assert low < large[name] < high
        assert high - low < small["ci95"][name][1] - small["ci95"][name][0]
    # The accuracy CI is close to the normal approximation for a proportion.
    acc, n = large["accuracy"], large["n"]
    half = 1.96 * np.sqrt(acc * (1 - acc) / n)
    assert large["ci95"]["accuracy"][1] - large["ci95"]["accuracy"][0] == pytest.approx(2 * half, rel=0.2)


def test_valence_accuracy_counts_within_group_confusions_as_correct():
    anger, disgust, happy, neutral = (EMOTIONS.index(e) for e in ("Anger", "Disgust", "Happiness", "Neutral"))
    report = classification_report([anger, anger, happy, neutral], [disgust, anger, neutral, neutral],
                                   n_resamples=50)
    assert report["accuracy"] == 0.5
    assert report["valence"]["accuracy"] == 0.75


def test_mcnemar_matches_the_exact_binomial_test():
    a = np.array([True] * 30 + [False] * 10 + [True] * 50)
    b = np.array([False] * 30 + [True] * 10 + [True] * 50)
    result = mcnemar(a, b)
    assert (result["a_only_correct"], result["b_only_correct"]) == (30, 10)
    assert result["p_value"] == pytest.approx(stats.binomtest(10, 40, 0.5).pvalue)
    assert result["p_value"] < 0.01
    assert mcnemar(a, a)["p_value"] == 1.0


def test_bad_inputs():
    with pytest.raises(DataError, match="equally long"):
        classification_report([0, 1], [0])
    with pytest.raises(DataError, match="no labelled predictions"):
        classification_report([], [])
    with pytest.raises(DataError, match="not among the dataset's classes"):
        classification_report([1], [1], FER2013_FOLDERS.emotions)
