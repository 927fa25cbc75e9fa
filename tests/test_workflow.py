"""End to end on real faces: train a small model, predict, evaluate, resume, compare, CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from fer_core.backends import InferenceOptions
from fer_core.cli import main
from fer_core.config import load_config
from fer_core.data import open_dataset
from fer_core.errors import DataError, InvalidArgument
from fer_core.inference import predict_dataset
from fer_core.labels import EMOTIONS
from fer_core.models import load_model
from fer_core.runs import Run, list_runs
from fer_core.workflows import compare_runs, dataset_for, evaluate_model, training_dataset

#: The dataset passes without progress bars.
QUIET = InferenceOptions(progress=False)


@pytest.fixture(scope="module")
def config(project):
    return load_config(project / "configs" / "config.yaml")


@pytest.fixture(scope="module")
def fer2013_test_subset(config):
    dataset = open_dataset("fer2013:test", config.resolve(config.data.root))
    return dataset.subset(np.arange(0, len(dataset), 12))  # 599 faces across all classes


def test_trained_model_learned_something_real(tiny_model, config):
    history = json.loads((tiny_model.parent / "history.json").read_text())
    losses = [h["train_loss"] for h in history["history"]]
    assert losses[-1] < losses[0] < np.log(8) + 0.05  # starts at chance, goes down
    assert history["best"]["val_accuracy"] > 0.45  # majority class (Neutral) is ~0.36 of FER+ valid
    model = load_model(tiny_model)
    assert model.provenance["head_trained"] and model.input_size == 48


def test_evaluate_writes_a_self_describing_run(tiny_model, config, fer2013_test_subset):
    model = load_model(tiny_model)
    run = evaluate_model(config, model, fer2013_test_subset, weights_path=tiny_model, name="eval-fer2013",
                         n_bootstrap=200, progress=False)
    info, metrics, table = run.info, run.metrics, run.predictions
    assert info["kind"] == "evaluation" and info["model"]["fingerprint"] == model.fingerprint
    assert info["dataset"]["emotions"] == [e for e in EMOTIONS if e != "Contempt"]
    assert len(table) == len(fer2013_test_subset) == metrics["n"]
    # scored over the model's 8 classes by default: a prediction may be Contempt, which FER2013 lacks
    assert info["scoring"]["protocol"] == "model" and info["scoring"]["classes"] == list(EMOTIONS)
    assert (table["pred"] == table["pred_all"]).all()
    assert metrics["confusion"]["labels"] == info["dataset"]["emotions"]
    assert metrics["confusion"]["predicted"] == list(EMOTIONS)
    assert np.allclose(table[[f"prob_{e}" for e in EMOTIONS]].sum(axis=1), 1.0, atol=1e-5)
    assert metrics["accuracy"] == pytest.approx(skm.accuracy_score(table["label"], table["pred"]))
    majority_share = table["label"].value_counts(normalize=True).max()  # Happiness, ~0.25
    assert metrics["accuracy"] > majority_share + 0.05
    low, high = metrics["ci95"]["accuracy"]
    assert low < metrics["accuracy"] < high
    assert list_runs(config.resolve(config.paths.runs_dir), kind="evaluation")[0].id == "eval-fer2013"


def test_seven_protocol_drops_contempt_and_names_itself(tiny_model, config, fer2013_test_subset):
    model = load_model(tiny_model)
    run = evaluate_model(config, model, fer2013_test_subset, name="eval-fer2013-seven", n_bootstrap=50,
                         progress=False, score_over="seven")
    table = run.predictions
    assert run.info["scoring"]["protocol"] == "seven" and "Contempt" not in run.info["scoring"]["classes"]
    assert (table["pred"] != EMOTIONS.index("Contempt")).all()  # HSEmotion's protocol for 7-class data
    assert run.metrics["confusion"]["predicted"] == run.info["dataset"]["emotions"]  # square again
    dataset_run = evaluate_model(config, model, fer2013_test_subset, name="eval-fer2013-dataset", n_bootstrap=50,
                                 progress=False, score_over="dataset")
    assert (dataset_run.predictions["pred"] == table["pred"]).all()  # FER2013's classes are the seven


def test_prediction_resumes_after_an_interruption(tiny_model, config, fer2013_test_subset, tmp_path):
    model = load_model(tiny_model)
    full = predict_dataset(model, fer2013_test_subset, tmp_path / "full", chunk_size=100, options=QUIET)
    # An interrupted run: only the first two parts were written.
    out = tmp_path / "resumed"
    predict_dataset(model, fer2013_test_subset, out, chunk_size=100, limit=200, options=QUIET)
    with pytest.raises(Exception, match="another model, dataset or setting"):
        predict_dataset(model, fer2013_test_subset, out, chunk_size=100, options=QUIET)
    (out / "progress.json").unlink()
    parts = sorted((out / "parts").glob("part-*.parquet"))
    assert len(parts) == 2
    resumed = predict_dataset(model, fer2013_test_subset, out, chunk_size=100, options=QUIET)
    pd.testing.assert_frame_equal(resumed, full)


def test_unreadable_images_are_reported_not_fatal(tiny_model, config, fer2013_root, tmp_path):
    folder = tmp_path / "faces"
    for emotion in ("happy", "sad"):
        (folder / emotion).mkdir(parents=True)
        for source in sorted((fer2013_root / "test" / emotion).glob("*.jpg"))[:5]:
            (folder / emotion / source.name).write_bytes(source.read_bytes())
    (folder / "sad" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    dataset = open_dataset(str(folder), config.resolve(config.data.root))
    with pytest.warns(UserWarning, match="broken.jpg"):
        table = predict_dataset(load_model(tiny_model), dataset, tmp_path / "out", options=QUIET)
    assert table["error"].notna().sum() == 1 and (table["pred"] >= 0).sum() == 10


def test_compare_runs_mcnemar(tiny_model, config, fer2013_test_subset):
    model = load_model(tiny_model)
    a = evaluate_model(config, model, fer2013_test_subset, name="cmp-a", n_bootstrap=50, progress=False)
    same = compare_runs(a, a)
    assert same["mcnemar"]["p_value"] == 1.0
    untrained = load_model(tiny_model.parent / "best.safetensors")
    for p in untrained.module.parameters():  # a broken copy of the model: re-initialised weights
        p.data.normal_(0, 0.02)
    untrained.__dict__.pop("fingerprint", None)
    b = evaluate_model(config, untrained, fer2013_test_subset, name="cmp-b", n_bootstrap=50, progress=False)
    result = compare_runs(a, b)
    assert result["mcnemar"]["p_value"] < 1e-3
    assert result["mcnemar"]["accuracy_a"] > result["mcnemar"]["accuracy_b"]


def test_cli_evaluate_and_errors(tiny_model, project, capsys):
    config_file = str(project / "configs" / "config.yaml")
    code = main(["--config", config_file, "evaluate", "--model", str(tiny_model), "--dataset", "ferplus:test",
                 "--limit", "150", "--name", "cli-eval", "--bootstrap", "100"])
    assert code == 0
    out = capsys.readouterr().out
    assert "ferplus:test[stratified 150, seed 0]: accuracy" in out
    assert "scored over the model's 8 classes (--score-over model)" in out  # the protocol beside the figure
    assert Run.load(project / "runs" / "cli-eval").metrics["n"] <= 150
    assert main(["--config", config_file, "evaluate", "--model", "weights/none.safetensors",
                 "--dataset", "ferplus:test"]) == 2
    assert "weights file not found" in capsys.readouterr().err
    assert main(["--config", config_file, "evaluate", "--model", str(tiny_model), "--dataset", "affectnet:train"]) == 2
    assert "real/affectnet" in capsys.readouterr().err
    assert main(["--config", config_file, "--set", "model.input_size=big", "info"]) == 2
    assert "'model.input_size'" in capsys.readouterr().err


def test_cli_limit_is_a_stratified_sample_named_in_the_run(tiny_model, project, capsys):
    config_file = str(project / "configs" / "config.yaml")
    assert main(["--config", config_file, "evaluate", "--model", str(tiny_model), "--dataset", "fer2013:test",
                 "--limit", "40", "--sample-seed", "2", "--bootstrap", "50"]) == 0
    run = next(r for r in list_runs(project / "runs", kind="evaluation") if "limit40-seed2" in r.id)
    assert run.id.startswith("eval-mobilenetv3_small_050-fer2013_test-limit40-seed2-")
    label = "fer2013:test[stratified 40, seed 2]"
    assert run.info["dataset"]["label"] == label and run.info["dataset"]["sampling"]["seed"] == 2
    table = run.predictions
    assert len(table) == 40 and (table["dataset"] == label).all()
    assert table["label"].nunique() == 7  # every FER2013 class; the first 40 files are all Anger
    assert label in capsys.readouterr().out
    # a two-class folder: the CLI warns, and run.json keeps the warning
    folder = project / "two-classes"
    for emotion in ("happy", "sad"):
        (folder / emotion).mkdir(parents=True, exist_ok=True)
        for source in sorted((project / "data" / "real" / "fer2013" / "test" / emotion).glob("*.jpg"))[:6]:
            (folder / emotion / source.name).write_bytes(source.read_bytes())
    assert main(["--config", config_file, "evaluate", "--model", str(tiny_model), "--dataset", str(folder),
                 "--name", "two-classes", "--bootstrap", "20"]) == 0
    assert "warning: the test set has only 2 class(es)" in capsys.readouterr().err
    assert "only 2 class(es)" in Run.load(project / "runs" / "two-classes").info["scoring"]["warnings"][0]


def test_predict_a_folder_of_photos_gives_every_face_and_skips_faceless_images(tiny_model, project, synthetic_root,
                                                                              face_model_path, tmp_path):
    import cv2
    from fer_core.images import load_rgb, save_rgb
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("happy_003", "sad_003", "surprise_003"):
        (photos / f"{name}.jpg").write_bytes((synthetic_root / name.split("_")[0] / f"{name}.jpg").read_bytes())
    pair = [cv2.resize(load_rgb(synthetic_root / emotion / f"{emotion}_002.jpg"), (256, 256))
            for emotion in ("happy", "sad")]
    save_rgb(np.hstack(pair), photos / "two_people.png")  # two faces side by side
    save_rgb(np.full((256, 256, 3), 128, np.uint8), photos / "grey.png")  # no face
    out = tmp_path / "out"
    assert main(["--config", str(project / "configs" / "config.yaml"), "--set",
                 f"faces.mediapipe_model={face_model_path}", "predict", "--model", str(tiny_model),
                 "--dataset", str(photos), "--out", str(out)]) == 0
    table = pd.read_parquet(out / "predictions.parquet")
    faces = table.groupby("key")["face"].apply(list).to_dict()
    assert faces == {"happy_003.jpg": [0], "sad_003.jpg": [0], "surprise_003.jpg": [0], "two_people.png": [0, 1],
                     "grey.png": [-1]}
    found = table[table["face_found"]]
    assert len(found) == 5 and (found["pred"] >= 0).all()
    assert np.allclose(found[[f"prob_{e}" for e in EMOTIONS]].sum(axis=1), 1.0, atol=1e-5)
    pair = table[table["key"] == "two_people.png"]
    centres = sorted((pair["box_x0"] + pair["box_x1"]) / 2)
    assert centres[0] < 256 < centres[1]  # one face in each half of the 512 px wide image
    grey = table[table["key"] == "grey.png"].iloc[0]
    assert not grey["face_found"] and grey["pred"] == -1 and grey["error"] is None
    assert table.loc[table["key"] == "grey.png", [f"prob_{e}" for e in EMOTIONS]].isna().all().all()


@pytest.mark.slow
def test_console_entry_points_run():
    script = Path(sys.executable).parent / "fer-core"
    for command in ([str(script), "--version"], [sys.executable, "-m", "fer_core", "--help"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "fer-core" in result.stdout


def test_model_card_prints_each_figures_protocol_and_detector(tiny_model, config, tmp_path, synthetic_root):
    from fer_core.model_card import model_card
    from fer_core.precompute import select
    model = load_model(tiny_model)
    faces = select(open_dataset("sd_faces", config.resolve(config.data.root)), 20, seed=0)
    run = evaluate_model(config, model, faces, name="card-sd", n_bootstrap=50, progress=False)
    assert run.info["faces"]["detector"].startswith("mediapipe:")  # the shipped model, no setup
    # the crop's framing is part of the protocol: FER+'s own (README: face framing), eyes levelled
    assert (run.info["faces"]["margin"], run.info["faces"]["align"]) == (config.faces.margin, True)
    text = model_card(tiny_model, [run], tmp_path / "confusion.png", "confusion.png")
    row = next(line for line in text.splitlines() if line.startswith("| `sd_faces["))
    assert "scored over the model's 8 classes (--score-over model)" in row and "| mediapipe:" in row
    assert (tmp_path / "confusion.png").stat().st_size > 0
    assert "- Trained by fer_core" in text and "Weight average" not in text
    # a weight average (fer-core average) is described through each of its sources, never as "unknown"
    from fer_core.models import save_model
    from fer_core.models.averaging import average_models
    soup = save_model(average_models([model, model]), tmp_path / "soup")
    card = model_card(soup, [run], tmp_path / "confusion.png", "confusion.png")
    assert "- Weight average (`fer-core average`: uniform mean" in card and "unknown" not in card
    assert card.count(f"the model of run `{model.provenance['run']}` (fingerprint `{model.fingerprint}`") == 1
    assert f"; and the model `{model.fingerprint}` (described above)." in card
    # an average of an average (the shipped model's making) describes the inner one and its calibrated
    # source, each model once, never "None" or "nan"
    from fer_core.training.calibration import Calibration, adjusted_model
    shifted = adjusted_model(model, np.arange(len(model.emotions), dtype=np.float32),
                             Calibration(0.5, (), "ferplus:valid"), "ferplus:train")
    nested = average_models([model, shifted])
    card = model_card(save_model(average_models([nested, model]), tmp_path / "nested"), [run],
                      tmp_path / "confusion.png", "confusion.png")
    head = card.split("## Recipe")[0]
    assert f"the weight average (fingerprint `{nested.fingerprint}`) of 2 models: the model of run `tiny`" in head
    assert f"(fingerprint `{shifted.fingerprint}`, calibrated at tau 0.5 on `ferplus:valid`;" in head
    assert f"; and the model `{model.fingerprint}` (described above)." in head
    assert "None" not in head and "nan" not in head


def test_joined_training_specs_keep_each_parts_labels(config):
    """``ferplus:test+fer2013:test`` is one set: the FER+ faces with their vote distributions, the
    FER2013 faces with their own one-hot labels (the same photos, relabelled: both kept)."""
    joined = training_dataset(config, "ferplus:test+fer2013:test", soft_labels=True)
    assert (joined.label, len(joined)) == ("ferplus+fer2013:test", 3_572 + 7_178)
    ferplus = {s.key.partition(":")[2]: s for s in joined if s.key.startswith("0-")}
    fer2013 = [s for s in joined if s.key.startswith("1-")]
    assert len(ferplus) == 3_572 and len(fer2013) == 7_178
    assert ferplus["FER2013Test/fer0032220.png"].soft_label == pytest.approx((0.2, 0.7, 0.1, 0, 0, 0, 0, 0))
    assert all(s.soft_label is None for s in fer2013)
    counts = np.bincount([s.label for s in fer2013], minlength=len(EMOTIONS))
    assert dict(zip(EMOTIONS, counts.tolist()))["Contempt"] == 0 and counts.sum() == 7_178
    assert counts[EMOTIONS.index("Disgust")] == 111  # FER2013 test's own labels, not FER+'s
    assert joined.read(fer2013[0]).shape == (48, 48, 3)
    plain = dataset_for(config, "ferplus:test+fer2013:test")
    assert len(plain) == 3_375 + 7_178 and all(s.soft_label is None for s in plain)  # FER+: majority, ties dropped
    with pytest.raises(InvalidArgument, match="empty part"):
        dataset_for(config, "ferplus:test+")
    with pytest.raises(DataError, match="soft labels exist only for FER"):
        training_dataset(config, "fer2013:train+fer2013:test", soft_labels=True)
