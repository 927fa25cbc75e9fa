"""Post-hoc logit adjustment: the bias shift is exact, the strength is chosen on validation
data by its stated rule, and the adjusted model predicts FER+'s rare classes more often."""

import numpy as np
import pytest

from fer_core.data import FerPlusDataset, stratified_split
from fer_core.errors import InvalidArgument
from fer_core.models import load_model
from fer_core.training.calibration import F1_TIE, adjusted_model, choose_tau, dataset_logits, model_log_prior


@pytest.fixture(scope="module")
def sample(ferplus_root):
    """400 FER+ validation faces (class shares kept) and the training labels for the prior."""
    val = FerPlusDataset(ferplus_root, "valid")
    keep = stratified_split(val.labels, {"use": 400 / len(val), "rest": 1 - 400 / len(val)}, seed=0)["use"]
    return val.subset(np.sort(keep)), FerPlusDataset(ferplus_root, "train").labels


def test_adjustment_shifts_the_logits_by_exactly_tau_log_prior(tiny_model, sample):
    model = load_model(tiny_model)
    faces, train_labels = sample
    log_prior = model_log_prior(model, train_labels)
    logits, labels = dataset_logits(model, faces.subset(np.arange(64)))
    calibration = choose_tau(model, logits, labels, log_prior, "ferplus:valid", taus=(0.0, 0.5))
    adjusted = adjusted_model(model, log_prior, calibration, "ferplus:train")
    shifted, _ = dataset_logits(adjusted, faces.subset(np.arange(64)))
    # float32 logits of size ~10: the shift is one addition, so it is exact to a few ulps.
    assert np.allclose(shifted, logits - calibration.tau * log_prior, atol=1e-5)
    assert adjusted.fingerprint != model.fingerprint or calibration.tau == 0.0
    record = adjusted.provenance["logit_adjustment"]
    assert record["tau"] == calibration.tau and record["parent_fingerprint"] == model.fingerprint
    assert load_model(tiny_model).fingerprint == model.fingerprint  # the original is untouched


def test_the_chosen_strength_follows_the_rule_and_helps_rare_classes(tiny_model, sample):
    model = load_model(tiny_model)
    faces, train_labels = sample
    log_prior = model_log_prior(model, train_labels)
    logits, labels = dataset_logits(model, faces)
    calibration = choose_tau(model, logits, labels, log_prior, "ferplus:valid")
    best = max(row["macro_f1"] for row in calibration.table)
    chosen = next(row for row in calibration.table if row["tau"] == calibration.tau)
    tied = [row for row in calibration.table if row["macro_f1"] >= best - F1_TIE]
    assert chosen["macro_f1"] >= best - F1_TIE and chosen["accuracy"] == max(r["accuracy"] for r in tied)
    untouched = next(row for row in calibration.table if row["tau"] == 0.0)
    assert chosen["macro_f1"] >= untouched["macro_f1"] - F1_TIE
    # The full prior moves predictions away from FER+'s two largest classes (Neutral, Happiness:
    # 62% of training faces): on these faces the share predicted as them falls by a wide margin.
    common = [model.emotions.index("Neutral"), model.emotions.index("Happiness")]
    share = {tau: np.isin((logits - tau * log_prior).argmax(1), common).mean() for tau in (0.0, 1.0)}
    assert share[1.0] < share[0.0] - 0.1, share


def test_bad_strengths_are_refused(tiny_model):
    model = load_model(tiny_model)
    with pytest.raises(InvalidArgument, match="taus"):
        choose_tau(model, np.zeros((2, 8)), np.array([0, 1]), np.zeros(8), "x", taus=(-3.0,))
