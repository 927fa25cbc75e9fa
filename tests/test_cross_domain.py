"""The cross-domain accuracy tables, read from real run directories: a synthetic-fraction sweep
(real-only and synthetic-only models trained in the test on FER+ and Stable Diffusion faces)
and evaluations of the small FER+ model, each checked against the runs' own predictions."""

import numpy as np
import pytest

from fer_core.config import load_config
from fer_core.cross_domain import (accuracy_by_fraction, cross_domain_matrix, evaluation_records,
                                   per_class_accuracy, train_domain)
from fer_core.data import FerPlusDataset, open_dataset
from fer_core.errors import ConfigError, DataError
from fer_core.labels import EMOTIONS
from fer_core.models import TINY_ARCHITECTURE, load_model
from fer_core.runs import Run
from fer_core.training import Stage, TrainSettings
from fer_core.training.experiments import sweep
from fer_core.workflows import evaluate_model


@pytest.fixture(scope="module")
def runs(project, tiny_model, ferplus_root, face_model_path, tmp_path_factory):
    """``runs/``: a sweep (fractions 0 and 1) in ``runs/sweep/`` and two evaluations of the
    small FER+ model (whose training run is ``runs/tiny``) at the top."""
    runs_dir = tmp_path_factory.mktemp("runs")
    config = load_config(project / "configs" / "config.yaml",
                         {"faces.mediapipe_model": str(face_model_path), "paths.runs_dir": str(runs_dir)})
    ferplus = FerPlusDataset(ferplus_root, "test")
    sd_faces = open_dataset("sd_faces", project / "data")
    real_train = FerPlusDataset(ferplus_root, "train").subset(np.arange(0, 26937, 500))
    settings = TrainSettings(architecture=TINY_ARCHITECTURE, input_size=48, stages=(Stage(1, 3e-3, "all"),),
                             batch_size=16, soft_targets=False, augment=None, max_steps_per_epoch=2)
    tests = [ferplus.subset(np.arange(0, 3375, 60)), sd_faces.subset(np.arange(1, 476, 8))]
    sweep(config, real_train, sd_faces.subset(np.arange(0, 476, 8)), ferplus.subset(np.arange(5, 3375, 200)), tests,
          settings, runs_dir / "sweep", fractions=(0.0, 1.0), size=48, n_bootstrap=100, progress=False)
    model = load_model(tiny_model)
    for test in tests:
        evaluate_model(config, model, test, weights_path=tiny_model, name=f"tiny-{test.name}", n_bootstrap=100,
                       progress=False)
    return runs_dir


def accuracy_from_predictions(path):
    table = Run.load(path).predictions
    scored = table[(table["label"] >= 0) & table["error"].isna()]
    return float((scored["pred"] == scored["label"]).mean())


def test_records_trace_each_evaluation_to_its_training_data(runs, tiny_model):
    records = evaluation_records(runs)
    assert len(records) == 6
    by_name = records.set_index("evaluation")
    assert by_name.loc["eval-synthetic-000-ferplus", "train_domain"] == "real"
    assert by_name.loc["eval-synthetic-100-sd_faces", "train_domain"] == "synthetic"
    assert by_name.loc["eval-synthetic-100-sd_faces", "synthetic_fraction"] == 1.0
    assert by_name.loc["eval-synthetic-100-sd_faces", "train_run"] == "synthetic-100"
    tiny = by_name.loc["tiny-sd_faces"]
    assert tiny["train_run"] == "tiny" and tiny["train_domain"] == "real" and tiny["synthetic_fraction"] == 0.0
    assert tiny["model"] == load_model(tiny_model).fingerprint and tiny["test_domain"] == "synthetic"
    assert set(records["test_set"]) == {"ferplus:test", "sd_faces"} and set(records.loc[
        records["test_set"] == "sd_faces", "n"]) == {60}
    for record in records.itertuples():
        assert record.accuracy == pytest.approx(accuracy_from_predictions(record.path))
        assert record.accuracy_ci_low <= record.accuracy <= record.accuracy_ci_high


def test_cross_domain_matrix_averages_each_models_newest_evaluation(runs, project, tiny_model, ferplus_root):
    records = evaluation_records(runs)
    matrix = cross_domain_matrix(records)
    assert list(matrix.index) == ["real", "synthetic"] and list(matrix.columns) == ["ferplus:test", "sd_faces"]
    expected = np.mean([accuracy_from_predictions(runs / "sweep" / "eval-synthetic-000-sd_faces"),
                        accuracy_from_predictions(runs / "tiny-sd_faces")])
    assert matrix.loc["real", "sd_faces"] == pytest.approx(expected)
    assert matrix.loc["synthetic", "ferplus:test"] == pytest.approx(
        accuracy_from_predictions(runs / "sweep" / "eval-synthetic-100-ferplus"))
    by_run = cross_domain_matrix(records, metric="macro_f1", rows="train_run", columns="test_domain")
    assert set(by_run.index) == {"synthetic-000", "synthetic-100", "tiny"} and set(by_run.columns) == {"real", "synthetic"}
    # a newer evaluation of the same model on the same test set replaces the older one
    config = load_config(project / "configs" / "config.yaml", {"paths.runs_dir": str(runs)})
    newer = evaluate_model(config, load_model(tiny_model), FerPlusDataset(ferplus_root, "test").subset(np.arange(30)),
                           weights_path=tiny_model, name="tiny-ferplus-again", n_bootstrap=100, progress=False)
    again = cross_domain_matrix(evaluation_records(runs))
    assert again.loc["real", "ferplus:test"] == pytest.approx(np.mean(
        [accuracy_from_predictions(newer.path), accuracy_from_predictions(runs / "sweep" / "eval-synthetic-000-ferplus")]))
    newer.path.joinpath("metrics.json").unlink()          # unfinished runs are left out
    assert len(evaluation_records(runs)) == 6


def test_accuracy_by_fraction_and_per_class_accuracy_on_synthetic_faces(runs):
    records = evaluation_records(runs)
    by_fraction = accuracy_by_fraction(records)
    sweep_rows = by_fraction[by_fraction["train_run"].str.startswith("synthetic-")]
    assert sorted(zip(sweep_rows["test_set"], sweep_rows["synthetic_fraction"])) == [
        ("ferplus:test", 0.0), ("ferplus:test", 1.0), ("sd_faces", 0.0), ("sd_faces", 1.0)]
    per_class = per_class_accuracy(records)
    assert set(per_class["test_set"]) == {"sd_faces"}
    for evaluation, classes in per_class.groupby("evaluation"):
        run = Run.load(runs / evaluation if (runs / evaluation).is_dir() else runs / "sweep" / evaluation)
        assert list(classes["emotion"]) == ["Anger", "Happiness", "Neutral", "Sadness", "Surprise"]
        assert classes["support"].sum() == run.metrics["n"]
        for row in classes.itertuples():     # per-class accuracy is each class's recall
            assert row.accuracy == pytest.approx(run.metrics["per_class"][row.emotion]["recall"])
        assert classes["correct"].sum() / classes["support"].sum() == pytest.approx(run.metrics["accuracy"])
    everything = per_class_accuracy(records, test_domain=None)
    assert set(everything["test_set"]) == {"ferplus:test", "sd_faces"}
    assert set(everything.loc[everything["test_set"] == "ferplus:test", "emotion"]) == set(EMOTIONS)


def test_bad_arguments_and_empty_folders(runs, tmp_path):
    records = evaluation_records(runs)
    with pytest.raises(ConfigError, match="metric"):
        cross_domain_matrix(records, metric="top5")
    with pytest.raises(ConfigError, match="rows"):
        cross_domain_matrix(records, rows="colour")
    with pytest.raises(DataError, match="not found"):
        evaluation_records(tmp_path / "missing")
    assert evaluation_records(tmp_path).empty and cross_domain_matrix(evaluation_records(tmp_path)).empty
    assert [train_domain(f) for f in (0.0, 0.25, 1.0, float("nan"))] == [
        "real", "mixed (25% synthetic)", "synthetic", "unknown"]
