"""Projections and domain-gap metrics on real features: the shipped FER+ model's embeddings of
FER2013 test faces (real) and of Stable Diffusion faces found by MediaPipe (synthetic)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fer_core import labels as label_space
from fer_core.backends import InferenceOptions
from fer_core.data import FaceDataset, FolderDataset, stratified_split
from fer_core.domain_gap import (
    PROJECTIONS,
    centroid_distances,
    domain_classifier_accuracy,
    domain_gap_report,
    kid,
    mmd_rbf,
    nearest_real,
    project,
)
from fer_core.errors import DataError, InvalidArgument
from fer_core.faces import FacePipeline, create_detector
from fer_core.inference import embed_dataset
from fer_core.labels import EMOTIONS
from fer_core.models import load_model

SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "weights" / "fer_b0_ferplus.safetensors"
#: The dataset passes without progress bars.
QUIET = InferenceOptions(progress=False)


@dataclass(frozen=True)
class Domains:
    real: np.ndarray
    real_labels: np.ndarray
    synthetic: np.ndarray
    synthetic_labels: np.ndarray


def _stratified(dataset: FaceDataset, count: int) -> FaceDataset:
    share = count / len(dataset)
    return dataset.subset(stratified_split(dataset.labels, {"use": share, "rest": 1 - share}, seed=0)["use"])


def _halves(features: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(features))
    return features[order[: len(order) // 2]], features[order[len(order) // 2:]]


@pytest.fixture(scope="module")
def domains(fer2013_root, synthetic_root, face_model_path) -> Domains:
    """200 FER2013 test faces (pre-cropped) and 150 SD faces (MediaPipe crops), embedded."""
    model = load_model(SHIPPED_MODEL)
    real = _stratified(FolderDataset(fer2013_root, "test", name="fer2013", pre_cropped=True,
                                     label_map=label_space.FER2013_FOLDERS), 200)
    synthetic = _stratified(FolderDataset(synthetic_root, None, name="sd_faces", domain="synthetic"), 150)
    faces = FacePipeline(create_detector("mediapipe", model_path=face_model_path), crop_size=model.input_size)
    real_keys, real_features = embed_dataset(model, real, None, options=QUIET)
    synthetic_keys, synthetic_features = embed_dataset(model, synthetic, None, face_pipeline=faces, options=QUIET)
    assert len(real_keys) == len(real) and len(synthetic_keys) == len(synthetic)
    return Domains(real_features, real.labels, synthetic_features, synthetic.labels)


def test_domain_classifier_tells_real_from_synthetic(domains):
    score = domain_classifier_accuracy(domains.real, domains.synthetic, folds=5, seed=0)
    assert score.balanced_accuracy > 0.75  # measured 0.83; chance is 0.5
    assert score.proxy_a_distance == pytest.approx(2 * (1 - 2 * (1 - score.balanced_accuracy)))


@pytest.mark.parametrize("domain", ["real", "synthetic"])
def test_random_halves_of_one_domain_are_not_called_different(domains, domain):
    """Random halves of one domain are exchangeable: the permutation test should reject at
    p < 0.05 about 5% of the time, and the domain classifier should sit at chance."""
    features = getattr(domains, domain)
    p_values = [mmd_rbf(*_halves(features, seed), permutations=200, seed=seed)[1] for seed in range(10)]
    assert sum(p < 0.05 for p in p_values) <= 2  # measured 1 of 10 in each domain
    accuracies = [domain_classifier_accuracy(*_halves(features, seed), seed=seed).balanced_accuracy
                  for seed in range(5)]
    assert np.mean(accuracies) < 0.6 and max(accuracies) < 0.65  # measured about 0.48 / 0.53


def test_mmd_separates_domains_and_exceeds_within_domain(domains):
    between, p_value = mmd_rbf(domains.real, domains.synthetic, permutations=200, seed=0)
    assert p_value < 0.01  # 1/201 is the smallest possible with 200 permutations
    within, _ = mmd_rbf(*_halves(domains.real), permutations=20, seed=0)
    assert between > 5 * abs(within)
    assert mmd_rbf(domains.real, domains.synthetic, permutations=20, seed=3) == \
        mmd_rbf(domains.real, domains.synthetic, permutations=20, seed=3)


def test_kid_between_domains_exceeds_kid_within_a_domain(domains):
    size = 75  # the synthetic halves' size, so every KID below has the same bias and spread
    between, _ = kid(domains.real, domains.synthetic, subsets=100, subset_size=size, seed=0)
    for features in (domains.real, domains.synthetic):
        within = [kid(*_halves(features, seed), subsets=20, subset_size=size, seed=seed)[0] for seed in range(10)]
        assert between > max(within)  # measured 0.0021 against at most 0.0014
        assert between > 5 * abs(np.mean(within))  # measured means about 0.0001


def test_centroid_distances_match_classes_across_domains(domains):
    distances = centroid_distances(domains.real, domains.real_labels, domains.synthetic, domains.synthetic_labels)
    shared = sorted(set(domains.real_labels) & set(domains.synthetic_labels))
    assert list(distances) == [EMOTIONS[label] for label in shared]
    for label in shared:
        entry = distances[EMOTIONS[label]]
        assert entry["n_real"] == int((domains.real_labels == label).sum())
        assert entry["n_synthetic"] == int((domains.synthetic_labels == label).sum())
        assert entry["euclidean"] > 0 and 0 < entry["cosine"] < 2
    # the synthetic happy faces lie closest to the real happy faces, of every real class
    happy = EMOTIONS.index("Happiness")
    synthetic_happy = domains.synthetic[domains.synthetic_labels == happy]
    to_real_class = {label: centroid_distances(domains.real, domains.real_labels, synthetic_happy,
                                               np.full(len(synthetic_happy), label))[EMOTIONS[label]]["cosine"]
                     for label in np.unique(domains.real_labels)}
    assert min(to_real_class, key=to_real_class.get) == happy


def test_nearest_real_face_is_the_cosine_nearest_and_shares_labels(domains):
    indices, distances = nearest_real(domains.synthetic, domains.real)
    assert indices.shape == distances.shape == (len(domains.synthetic),)
    assert indices.min() >= 0 and indices.max() < len(domains.real)
    unit_real = domains.real / np.linalg.norm(domains.real, axis=1, keepdims=True)
    unit_synthetic = domains.synthetic / np.linalg.norm(domains.synthetic, axis=1, keepdims=True)
    brute = 1 - unit_synthetic @ unit_real.T
    np.testing.assert_array_equal(indices, brute.argmin(1))
    np.testing.assert_allclose(distances, brute.min(1), atol=1e-6)
    # labels agree far more often than the largest real class share (0.245): measured 0.43
    assert (domains.real_labels[indices] == domains.synthetic_labels).mean() > 0.35
    self_indices, self_distances = nearest_real(domains.real[:20], domains.real)
    np.testing.assert_array_equal(self_indices, np.arange(20))
    np.testing.assert_allclose(self_distances, 0, atol=1e-6)


# UMAP's first call compiles its numba kernels (~30 s): an end-to-end check marked slow
@pytest.mark.parametrize("method, params", [("pca", {}), ("tsne", {"max_iter": 500}),
                                            pytest.param("umap", {}, marks=pytest.mark.slow)])
def test_projections_are_seeded_and_keep_the_emotion_structure(domains, method, params):
    from sklearn.manifold import trustworthiness
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    features = np.concatenate([domains.real[::3][:60], domains.synthetic[::2][:60]])
    emotions = np.concatenate([domains.real_labels[::3][:60], domains.synthetic_labels[::2][:60]])
    first = project(features, method, seed=1, **params)
    assert first.shape == (120, 2) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, project(features, method, seed=1, **params))
    # neighbours in 2-D are neighbours in feature space (random points: 0.53; measured 0.88-0.97)
    assert trustworthiness(features, first, n_neighbors=5) > 0.8
    # and 5-NN in 2-D predicts the emotion well above the largest class share (0.32; measured 0.52-0.56)
    assert cross_val_score(KNeighborsClassifier(5), first, emotions, cv=5).mean() > 0.42


def test_report_is_json_ready_and_agrees_with_the_metrics(domains):
    report = domain_gap_report(domains.real, domains.synthetic, domains.real_labels, domains.synthetic_labels, seed=0)
    decoded = json.loads(json.dumps(report))
    assert decoded["n_real"] == 200 and decoded["n_synthetic"] == 150
    score = domain_classifier_accuracy(domains.real, domains.synthetic, seed=0)
    assert decoded["domain_classifier"]["balanced_accuracy"] == pytest.approx(score.balanced_accuracy)
    assert decoded["mmd_rbf"]["p_value"] < 0.01
    assert decoded["kid"]["mean"] > 0
    assert set(decoded["centroid_distances"]) == {"Anger", "Happiness", "Neutral", "Sadness", "Surprise"}
    assert 0 < decoded["nearest_real"]["distinct_real_neighbours"] <= 150
    assert "centroid_distances" not in domain_gap_report(domains.real, domains.synthetic, seed=0)


def test_bad_input_gets_clear_errors(domains):
    with pytest.raises(InvalidArgument, match=r"project\(\) argument 'method': expected one of \['pca', .*'isomap'"):
        project(domains.real, "isomap")
    with pytest.raises(InvalidArgument, match="invalid parameters"):
        project(domains.real, "pca", not_a_parameter=1)
    with pytest.raises(InvalidArgument, match=r"kid\(\) argument 'subset_size': expected an integer >= 2, got 1"):
        kid(domains.real, domains.synthetic, subset_size=1)
    with pytest.raises(DataError, match="same width"):
        mmd_rbf(domains.real, domains.synthetic[:, :10])
    broken = domains.synthetic.copy()
    broken[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        kid(domains.real, broken)
    with pytest.raises(DataError, match="integer labels"):
        centroid_distances(domains.real, domains.real_labels[:-1], domains.synthetic, domains.synthetic_labels)
    with pytest.raises(DataError, match="EMOTIONS"):
        centroid_distances(domains.real, domains.real_labels + 8, domains.synthetic, domains.synthetic_labels)
    assert sorted(PROJECTIONS) == ["pca", "tsne", "umap"]
