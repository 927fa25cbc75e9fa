"""Scoring protocols and the one mapping from model logits to canonical columns: over the
model's classes by default, on heads of any class order and size, on real faces."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import metrics as skm

from fer_core.backends import InferenceOptions
from fer_core.config import load_config
from fer_core.data import open_dataset
from fer_core.errors import DataError, InvalidArgument
from fer_core.evaluation import classification_report
from fer_core.inference import PROB_COLUMNS, predict_dataset
from fer_core.labels import EMOTIONS
from fer_core.models import TINY_ARCHITECTURE, EmotionRecognizer, FerModel
from fer_core.precompute import embed_datasets
from fer_core.scoring import PROTOCOLS, ScoringWarning, canonical_probabilities, score, scored_rows, scoring_for
from fer_core.workflows import evaluate_model

HAPPY, SAD, NEUTRAL, CONTEMPT = (EMOTIONS.index(e) for e in ("Happiness", "Sadness", "Neutral", "Contempt"))
#: The dataset passes without progress bars.
QUIET = InferenceOptions(progress=False)


def test_protocols_choose_the_classes_a_prediction_may_be():
    two = ("Happiness", "Sadness")
    assert scoring_for("model", EMOTIONS, two).classes == EMOTIONS
    assert scoring_for("dataset", EMOTIONS, two).classes == two
    assert scoring_for("seven", EMOTIONS, two).classes == tuple(e for e in EMOTIONS if e != "Contempt")
    # A Neutral sink: the model's top class is Neutral on both faces; only the dataset protocol hides it.
    logits = np.zeros((2, 8))
    logits[:, NEUTRAL] = 3.0
    logits[0, HAPPY], logits[1, SAD] = 2.0, 1.0
    assert list(scoring_for("model", EMOTIONS, two).predict(logits)) == [NEUTRAL, NEUTRAL]
    assert list(scoring_for("dataset", EMOTIONS, two).predict(logits)) == [HAPPY, SAD]
    with pytest.raises(InvalidArgument, match=r"scoring_for\(\) argument 'protocol': expected one of \['dataset', "):
        scoring_for("dataset-only", EMOTIONS, two)
    with pytest.raises(InvalidArgument, match="nothing to predict"):
        scoring_for("dataset", ("Anger",), two)
    assert set(PROTOCOLS) == {"model", "dataset", "seven"}


def test_warnings_name_few_classes_and_classes_that_cannot_be_predicted():
    labels = np.array([HAPPY, SAD, SAD, -1])
    few = scoring_for("model", EMOTIONS, ("Happiness", "Sadness"), labels)
    assert len(few.warnings) == 1 and "only 2 class(es) (Happiness, Sadness)" in few.warnings[0]
    record = few.record()
    assert record["protocol"] == "model" and record["classes"] == list(EMOTIONS) and record["warnings"]
    assert few.summary() == "scored over the model's 8 classes (--score-over model)"
    ferplus = np.arange(8)
    assert scoring_for("model", EMOTIONS, EMOTIONS, ferplus).warnings == ()
    assert "Contempt can never be predicted" in scoring_for("seven", EMOTIONS, EMOTIONS, ferplus).warnings[0]
    seven_head = tuple(e for e in EMOTIONS if e != "Contempt")
    assert "Contempt can never be predicted" in scoring_for("model", seven_head, EMOTIONS, ferplus).warnings[0]


def test_canonical_columns_follow_the_model_class_order():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 8))
    order = rng.permutation(8)
    shuffled = tuple(EMOTIONS[i] for i in order)
    expected = canonical_probabilities(logits, EMOTIONS)
    assert np.allclose(canonical_probabilities(logits[:, order], shuffled), expected, atol=1e-7)  # float32 rounding
    assert (scoring_for("model", shuffled).predict(logits[:, order]) == logits.argmax(1)).all()
    seven = [i for i in range(8) if i != CONTEMPT]
    probabilities = canonical_probabilities(logits[:, seven], [EMOTIONS[i] for i in seven])
    assert np.isnan(probabilities[:, CONTEMPT]).all()
    assert np.allclose(np.nansum(probabilities, axis=1), 1.0, atol=1e-6)


def test_metrics_count_predictions_outside_the_test_set_as_errors():
    rng = np.random.default_rng(1)
    y_true = rng.choice([HAPPY, SAD], 300)
    y_pred = np.where(rng.random(300) < 0.5, y_true, NEUTRAL)  # half the faces fall into a Neutral sink
    report = classification_report(y_true, y_pred, ["Happiness", "Sadness"], n_resamples=100, predicted=EMOTIONS)
    assert report["accuracy"] == pytest.approx((y_true == y_pred).mean())
    assert report["confusion"]["labels"] == ["Happiness", "Sadness"]
    assert report["confusion"]["predicted"] == list(EMOTIONS)  # every class a prediction could be
    counts = np.array(report["confusion"]["counts"])
    assert counts.shape == (2, 8) and counts.sum() == 300
    assert counts[:, NEUTRAL].sum() == (y_pred == NEUTRAL).sum()
    assert np.allclose(np.array(report["confusion"]["normalized"]).sum(1), 1.0)
    # macro-F1 and the per-class table are over the test set's true classes only
    assert set(report["per_class"]) == {"Happiness", "Sadness"}
    assert report["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, labels=[HAPPY, SAD], average="macro"))
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):  # scikit-learn's, not ours
        assert report["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    low, high = report["ci95"]["accuracy"]
    assert low < report["accuracy"] < high
    with pytest.raises(DataError, match="not among the scored classes"):
        classification_report(y_true, y_pred, ["Happiness", "Sadness"], n_resamples=10,
                              predicted=["Happiness", "Sadness"])


def _with_head(model: FerModel, emotions: tuple[str, ...]) -> FerModel:
    """A copy of ``model`` whose classifier has the rows of ``emotions``, in that order."""
    module = copy.deepcopy(model.module)
    head = module.get_classifier()
    rows = [model.emotions.index(e) for e in emotions]
    module.reset_classifier(len(emotions))
    with torch.no_grad():
        module.get_classifier().weight.copy_(head.weight[rows])
        module.get_classifier().bias.copy_(head.bias[rows])
    return FerModel(module, model.architecture, emotions, model.input_size, model.mean, model.std,
                    dict(model.provenance))


@pytest.fixture(scope="module")
def heads():
    """A small seeded network (random weights: face-dependent outputs, no training needed) with
    its canonical 8-class head, the same head reordered, and the head without Contempt."""
    torch.manual_seed(0)
    model = FerModel.from_architecture(TINY_ARCHITECTURE)
    model.input_size = 48
    with torch.no_grad():
        model.module.get_classifier().weight.normal_(0, 0.5)
    reordered = tuple(reversed(EMOTIONS[:4])) + EMOTIONS[6:] + EMOTIONS[4:6]
    return model, _with_head(model, reordered), _with_head(model, tuple(e for e in EMOTIONS if e != "Contempt"))


@pytest.fixture(scope="module")
def faces(project):
    config = load_config(project / "configs" / "config.yaml")
    ferplus = open_dataset("ferplus:test", config.resolve(config.data.root))
    return ferplus.subset(np.arange(0, len(ferplus), 75))  # 45 real faces, every class (1 Disgust, 2 Contempt)


def test_prob_columns_and_predictions_do_not_depend_on_the_head_order(heads, faces, tmp_path):
    model, reordered, seven = heads
    tables = [predict_dataset(m, faces, tmp_path / name, options=QUIET) for m, name in
              zip(heads, ("canonical", "reordered", "seven"))]
    canonical, shuffled, dropped = tables
    probabilities = canonical[list(PROB_COLUMNS)].to_numpy()
    # the same network: only float32 summation order differs
    assert np.allclose(shuffled[list(PROB_COLUMNS)].to_numpy(), probabilities, atol=1e-6)
    assert (shuffled["pred"] == canonical["pred"]).all() and canonical["pred"].nunique() > 1  # real outputs
    # the 7-class head: no Contempt column, the rest is the 8-class softmax renormalised without it
    assert dropped["prob_Contempt"].isna().all()
    others = [c for c in PROB_COLUMNS if c != "prob_Contempt"]
    renormalised = canonical[others].to_numpy() / (1 - canonical[["prob_Contempt"]].to_numpy())
    assert np.allclose(dropped[others].to_numpy(), renormalised, atol=1e-5)  # float32, one division
    seven_protocol = scoring_for("seven", EMOTIONS).predict(np.log(np.maximum(probabilities, 1e-30)))
    assert (dropped["pred"].to_numpy() == seven_protocol).all()
    # the recogniser and the embeddings table name the same classes
    crops = [faces.read(sample) for sample in faces]
    for head, table in zip(heads, tables):
        labels, _ = EmotionRecognizer(head).predict_emotions(crops)
        assert labels == [EMOTIONS[p] for p in table["pred"]]
        embedded = embed_datasets(head, {"ferplus:test": faces}, None, projections=(), options=QUIET).table
        assert list(embedded["pred"]) == list(table["pred"])
        assert np.allclose(embedded["confidence"], table[list(PROB_COLUMNS)].to_numpy()[
            np.arange(len(table)), table["pred"]], atol=1e-6)


def test_evaluate_scores_a_seven_class_head_and_records_the_protocol(heads, faces, project):
    config = load_config(project / "configs" / "config.yaml")
    _, _, seven = heads
    with pytest.warns(ScoringWarning, match="Contempt can never be predicted"):
        run = evaluate_model(config, seven, faces, name="seven-head", n_bootstrap=50, progress=False)
    assert run.info["scoring"]["protocol"] == "model"
    assert run.info["scoring"]["classes"] == [e for e in EMOTIONS if e != "Contempt"]
    # columns: the true classes (all 8 here) and the classes predictable; nothing lands in Contempt's
    assert run.metrics["confusion"]["predicted"] == list(EMOTIONS)
    assert np.array(run.metrics["confusion"]["counts"])[:, CONTEMPT].sum() == 0
    assert run.metrics["per_class"]["Contempt"]["recall"] == 0
    assert run.metrics["accuracy"] == pytest.approx((run.predictions["pred"] == run.predictions["label"]).mean())


def test_one_score_gives_every_table_the_figures_it_computed_on_its_own():
    """:func:`score` equals, bit for bit, each formula the tables used before it (evaluation
    runs, training's validation, calibration, per-class accuracy): a Neutral sink on a test set
    without Contempt, with predictions outside its classes (seeded)."""
    rng = np.random.default_rng(0)
    classes = [i for i in range(8) if i != CONTEMPT]
    y_true = rng.choice(classes, 300)
    y_pred = np.where(rng.random(300) < 0.5, y_true, rng.choice([NEUTRAL, CONTEMPT], 300))
    scores = score(y_true, y_pred, classes)
    assert scores.accuracy == skm.accuracy_score(y_true, y_pred) == np.mean(y_pred == y_true)
    assert scores.macro_f1 == skm.f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)
    recall = skm.recall_score(y_true, y_pred, labels=classes, average=None, zero_division=0)
    assert np.array_equal(scores.recall, recall)
    per_class = [np.sum((y_true == c) & (y_pred == c)) / np.sum(y_true == c) for c in classes]
    assert scores.recall.tolist() == per_class
    assert scores.balanced_accuracy == recall.mean() and 0.4 < scores.accuracy < 0.7
    report = classification_report(y_true, y_pred, [EMOTIONS[c] for c in classes], n_resamples=10)
    assert (report["accuracy"], report["macro_f1"]) == (scores.accuracy, scores.macro_f1)
    table = pd.DataFrame({"label": [0, -1, 2, 3], "error": [None, None, "unreadable", None]})
    assert scored_rows(table)["label"].tolist() == [0, 3]
