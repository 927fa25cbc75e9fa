"""The shipped default model: loads offline, is what its card says, and recognises real faces."""

import json

import numpy as np
import pytest

from fer_core.backends import InferenceOptions
from fer_core.config import load_config
from fer_core.data import FerPlusDataset, stratified_split
from fer_core.inference import predict_dataset
from fer_core.labels import EMOTIONS
from fer_core.models import load_model
from fer_core.workflows import SHIPPED_WEIGHTS, resolve_weights
from tests.conftest import REPO

WEIGHTS = REPO / SHIPPED_WEIGHTS
#: The dataset passes without progress bars.
QUIET = InferenceOptions(progress=False)


def test_shipped_model_is_the_default_and_small():
    assert resolve_weights(load_config()) == WEIGHTS
    assert WEIGHTS.stat().st_size <= 16 * 2**20
    meta = json.loads(WEIGHTS.with_suffix(".json").read_text())
    assert meta["dtype"] == "float16" and meta["architecture"] == "tf_efficientnet_b0_ns"
    model = load_model(WEIGHTS)
    assert model.provenance["head_trained"] and model.input_size == meta["input_size"]
    assert model.grayscale and model.preprocessing.grayscale  # trained on grey FER+ faces, it sees faces in grey


@pytest.fixture(scope="module")
def sample_predictions(ferplus_root, tmp_path_factory):
    """The shipped model's predictions on a stratified sample of 1,200 FER+ test faces (seed 2)."""
    test = FerPlusDataset(ferplus_root, "test")
    keep = stratified_split(test.labels, {"use": 1200 / len(test), "rest": 1 - 1200 / len(test)}, seed=2)["use"]
    return predict_dataset(load_model(WEIGHTS), test.subset(np.sort(keep)), tmp_path_factory.mktemp("shipped"),
                           options=QUIET)


def test_shipped_model_accuracy_on_real_ferplus_test_faces(sample_predictions):
    accuracy = float((sample_predictions["pred"] == sample_predictions["label"]).mean())
    # The model card reports 83.4% on all 3,375 test faces; 1,200 faces give about +-2.1 points (95%),
    # so 0.03 is about 2.8 standard errors. This sample measured 0.825 (0.822 with the model before).
    assert accuracy == pytest.approx(0.834, abs=0.03)


def test_shipped_model_reads_more_than_the_common_classes(sample_predictions):
    """Recall floors per class on a stratified sample of FER+ test faces (over the model's 8
    classes). The floors sit below the full test set's recalls (weights/MODEL_CARD.md) by about
    two binomial standard errors of the sample's class size. Contempt and disgust (26 and 22 test
    faces, about 9 and 8 here) are not floored: the shipped model reads them at 0.19 and 0.36 on
    the full test set, a failure the card reports (0.00 and 0.25 in this sample). This sample measured
    anger 0.77, fear 0.39, happiness 0.93, neutral 0.85, sadness 0.70, surprise 0.90."""
    table = sample_predictions
    recall = {e: float((table["pred"][table["label"] == i] == i).mean()) for i, e in enumerate(EMOTIONS)}
    floors = {"Anger": 0.70, "Fear": 0.29, "Happiness": 0.89, "Neutral": 0.82, "Sadness": 0.62, "Surprise": 0.84}
    assert all(recall[e] >= floor for e, floor in floors.items()), recall
    assert load_model(WEIGHTS).provenance["logit_adjustment"]["chosen_on"] == "ferplus:valid"  # never a test split
