"""The cross-domain accuracy tables, read from real run directories: a synthetic-fraction sweep
(real-only and synthetic-only models trained in the test on FER+ and Stable Diffusion faces),
evaluations of the small FER+ model and a limited one of the shipped model, each checked
against the runs' own predictions."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fer_core.cli import main
from fer_core.config import load_config
from fer_core.cross_domain import (accuracy_by_fraction, cell_notes, cross_domain_cells, cross_domain_matrix,
                                   evaluation_records, export_cross_domain, label_fraction, matrix_markdown,
                                   per_class_accuracy, train_domain)
from fer_core.data import FerPlusDataset, open_dataset
from fer_core.errors import DataError, InvalidArgument
from fer_core.labels import EMOTIONS
from fer_core.models import TINY_ARCHITECTURE, load_model
from fer_core.runs import Run, trained_by
from fer_core.training import Stage, TrainSettings
from fer_core.jobs.experiments import sweep
from fer_core.workflows import SHIPPED_WEIGHTS, evaluate_model

SHIPPED = Path(__file__).resolve().parent.parent / SHIPPED_WEIGHTS
#: The shipped model is scored on a stratified sample of this many FER+ test faces (``limit``).
SHIPPED_LIMIT = 40


@pytest.fixture(scope="module")
def runs(project, tiny_model, ferplus_root, face_model_path, tmp_path_factory):
    """``runs/``: a sweep (fractions 0 and 1) in ``runs/sweep/``, two evaluations of the small
    FER+ model (whose training run is ``runs/tiny``) and a limited evaluation of the shipped
    model (no training run here: its weights' provenance names its data) at the top."""
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
    evaluate_model(config, load_model(SHIPPED), ferplus, weights_path=SHIPPED, name="shipped-ferplus",
                   limit=SHIPPED_LIMIT, n_bootstrap=100, progress=False)
    return runs_dir


def accuracy_from_predictions(path):
    table = Run.load(path).predictions
    scored = table[(table["label"] >= 0) & table["error"].isna()]
    return float((scored["pred"] == scored["label"]).mean())


def test_records_trace_each_evaluation_to_its_training_data(runs, tiny_model):
    records = evaluation_records(runs)
    assert len(records) == 7
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
    shipped = by_name.loc["shipped-ferplus"]   # no training run here: its weights' provenance says ferplus:train
    assert pd.isna(shipped["train_run"]) and shipped["train_domain"] == "real" and shipped["synthetic_fraction"] == 0.0
    assert shipped["train_data"].startswith("ferplus:train") and shipped["model_label"].startswith(f"{trained_by(load_model(SHIPPED).provenance)} (")
    assert shipped["n"] == SHIPPED_LIMIT and shipped["dataset_size"] == 3375 and shipped["limited"]
    assert shipped["test_set"] == "ferplus:test" and shipped["sampling"] == f"stratified {SHIPPED_LIMIT}, seed 0"
    assert not records.drop(index=records.index[records["evaluation"] == "shipped-ferplus"])["limited"].any()
    assert shipped["data_sha256"] == Run.load(shipped["path"]).info["provenance"]["data"]["test"]["sha256"]
    # the sweep's summary and its training runs carry their provenance too
    summary = json.loads((runs / "sweep" / "summary.json").read_text())["provenance"]
    assert summary["command"]["call"].startswith("fer_core.jobs.experiments.sweep(")
    assert set(summary["data"]) == {"real_train", "synthetic_train", "val", "test ferplus", "test sd_faces"}
    assert summary["data"]["real_train"]["size"] == 54 and summary["data"]["test sd_faces"]["size"] == 60
    trained = Run.load(runs / "sweep" / "synthetic-100")
    assert trained.info["provenance"]["data"]["train"]["size"] == trained.info["data"]["train"]["size"]
    assert trained.info["provenance"]["command"]["call"] == summary["command"]["call"]   # the API call made
    for record in records.itertuples():
        assert record.accuracy == pytest.approx(accuracy_from_predictions(record.path))
        assert record.accuracy_ci_low <= record.accuracy <= record.accuracy_ci_high


def test_cross_domain_matrix_has_one_row_per_model_with_its_own_n(runs, project, tiny_model, ferplus_root):
    records = evaluation_records(runs)
    cells = cross_domain_cells(records)
    matrix, notes = cross_domain_matrix(cells), cell_notes(cells)
    tiny = f"real · tiny ({load_model(tiny_model).fingerprint[:8]})"
    shipped_model = load_model(SHIPPED)
    shipped = f"real · {trained_by(shipped_model.provenance)} ({shipped_model.fingerprint[:8]})"
    assert len(matrix) == 4 and {tiny, shipped} <= set(matrix.index)      # four models, one row each
    assert list(matrix.columns) == ["ferplus:test", "sd_faces"]
    # the real x ferplus:test cell of the old matrix mixed these two models; now each keeps its own score and n
    on_fer = cells[cells["test_set"] == "ferplus:test"].set_index("row")
    assert matrix.loc[tiny, "ferplus:test"] == pytest.approx(accuracy_from_predictions(runs / "tiny-ferplus"))
    assert matrix.loc[shipped, "ferplus:test"] == pytest.approx(accuracy_from_predictions(runs / "shipped-ferplus"))
    assert on_fer.loc[tiny, "n"] == 57 and not on_fer.loc[tiny, "limited"]   # every 60th of the 3,375 faces
    assert on_fer.loc[shipped, "n"] == SHIPPED_LIMIT and on_fer.loc[shipped, "limited"]
    assert notes.loc[shipped, "ferplus:test"] == f"n={SHIPPED_LIMIT} limited"
    assert notes.loc[tiny, "ferplus:test"] == "n=57"
    assert np.isnan(matrix.loc[shipped, "sd_faces"])                  # the shipped model was not scored on SD faces
    markdown = matrix_markdown(cells)
    assert f"| {shipped} | {matrix.loc[shipped, 'ferplus:test']:.3f} (n=40 limited) |  |" in markdown

    # the aggregate says over how many models it averages, with their spread
    by_domain = cross_domain_cells(records, aggregate="train_domain").set_index(["row", "test_set"])
    real_fer = by_domain.loc[("real", "ferplus:test")]
    scores = on_fer.loc[on_fer["train_domain"] == "real", "accuracy"]
    assert real_fer["n_models"] == 3 == len(scores) and real_fer["accuracy"] == pytest.approx(scores.mean())
    assert real_fer["std"] == pytest.approx(scores.std(ddof=1)) and real_fer["min"] == pytest.approx(scores.min())
    assert real_fer["n"] == on_fer.loc[on_fer["train_domain"] == "real", "n"].sum() and real_fer["limited"]
    assert np.isnan(by_domain.loc[("synthetic", "sd_faces"), "std"])     # one model: no spread
    aggregate_notes = cell_notes(cross_domain_cells(records, aggregate="train_domain"))
    assert aggregate_notes.loc["real", "ferplus:test"].startswith("3 models, sd ")

    # a newer evaluation of the same model on the same test set replaces the older one
    config = load_config(project / "configs" / "config.yaml", {"paths.runs_dir": str(runs)})
    newer = evaluate_model(config, load_model(tiny_model), FerPlusDataset(ferplus_root, "test").subset(np.arange(30)),
                           weights_path=tiny_model, name="tiny-ferplus-again", n_bootstrap=100, progress=False)
    again = cross_domain_cells(evaluation_records(runs)).set_index(["row", "test_set"])
    assert again.loc[(tiny, "ferplus:test"), "accuracy"] == pytest.approx(accuracy_from_predictions(newer.path))
    assert again.loc[(tiny, "ferplus:test"), "n"] == 30 and len(again) == len(cells)
    newer.path.joinpath("metrics.json").unlink()          # unfinished runs are left out
    assert len(evaluation_records(runs)) == 7


def test_cli_prints_and_exports_the_matrix(runs, project, capsys):
    settings = ["--config", str(project / "configs" / "config.yaml"), "--set", f"paths.runs_dir={runs}"]
    assert main([*settings, "cross-domain"]) == 0
    printed = capsys.readouterr().out
    exported = sorted((runs / "exports").glob("cross_domain-accuracy-per_model-*.csv"))
    assert len(exported) == 1 and f"-> {exported[0]}" in printed
    table = pd.read_csv(exported[0])
    expected = cross_domain_cells(evaluation_records(runs))
    assert list(table["row"]) == list(expected["row"]) and np.allclose(table["accuracy"], expected["accuracy"])
    assert list(table["n"]) == list(expected["n"])
    assert exported[0].with_suffix(".md").read_text() in printed
    record = json.loads(exported[0].with_suffix(".json").read_text())
    assert record["kind"] == "export" and record["provenance"]["command"]["argv"] == ["fer-core", *settings,
                                                                                       "cross-domain"]
    assert set(record["evaluations"]) == set(expected["evaluation"])
    out = runs.parent / "matrix.csv"
    assert main([*settings, "cross-domain", "--runs-dir", str(runs), "--aggregate", "--metric", "macro_f1",
                 "--out", str(out)]) == 0
    assert "| trained on | ferplus:test | sd_faces |" in capsys.readouterr().out
    assert set(pd.read_csv(out)["row"]) == {"real", "synthetic"} and out.with_suffix(".md").is_file()
    assert main([*settings, "cross-domain", "--aggregate", "colour"]) == 2
    assert "argument 'aggregate': expected one of" in capsys.readouterr().err


def test_accuracy_by_fraction_and_per_class_accuracy_on_synthetic_faces(runs):
    records = evaluation_records(runs)
    by_fraction = accuracy_by_fraction(records)
    sweep_rows = by_fraction[by_fraction["train_run"].str.startswith("synthetic-", na=False)]
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
    with pytest.raises(InvalidArgument, match=r"cross_domain_cells\(\) argument 'metric': .*got 'top5'"):
        cross_domain_cells(records, metric="top5")
    with pytest.raises(InvalidArgument, match=r"argument 'aggregate': expected one of .* or None, got 'colour'"):
        cross_domain_cells(records, aggregate="colour")
    with pytest.raises(DataError, match="not found"):
        evaluation_records(tmp_path / "missing")
    empty = cross_domain_cells(evaluation_records(tmp_path))
    assert empty.empty and cross_domain_matrix(empty).empty and "no finished evaluation" in matrix_markdown(empty)
    with pytest.raises(InvalidArgument, match=r"accuracy_by_fraction\(\) argument 'metric'"):
        accuracy_by_fraction(empty, metric="top5")
    with pytest.raises(InvalidArgument, match="expected a .csv file to write"):
        export_cross_domain(empty, "accuracy", tmp_path / "cells.md", tmp_path, [])
    assert [train_domain(f) for f in (0.0, 0.25, 1.0, float("nan"))] == [
        "real", "mixed (25% synthetic)", "synthetic", "unknown"]
    # training data as weights' provenance names it
    assert [label_fraction(text) for text in ("ferplus:train (FER+ vote distributions, 28,556 faces)", "sd_faces",
                                              "mix(ferplus+sd_faces, synthetic=0.25)", "fer2013:train")] == [
        0.0, 1.0, 0.25, 0.0]
    assert all(np.isnan(label_fraction(text)) for text in ("/data/my_faces", "", None))
    # a weight average's sources' data (runs.trained_on): one share when they agree
    assert label_fraction("ferplus:train + ferplus:train (FER+ votes) + fer2013:train") == 0.0
    assert np.isnan(label_fraction("ferplus:train + sd_faces:train"))
