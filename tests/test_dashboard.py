"""The dashboard with Streamlit's AppTest: every page, on real faces with a trained model, and empty."""

import io
import json
import os
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from fer_core.backends import InferenceOptions
from fer_core.config import load_config
from fer_core.data import open_dataset
from fer_core.explain import method_names
from fer_core.explain.regions import REGIONS
from fer_core.labels import EMOTIONS
from fer_core.models import load_model
from fer_core.precompute import EXPLAIN_BATCH_SIZE
from fer_core.runs import Run
from fer_core.workflows import evaluate_model, face_pipeline_for

REPO = Path(__file__).resolve().parent.parent
HOME = str(REPO / "dashboard" / "Home.py")
PAGES = REPO / "pages"
#: The dataset passes without progress bars.
QUIET = InferenceOptions(progress=False)
#: Attribution passes without progress bars, at their default batch size.
QUIET_EXPLAIN = InferenceOptions(batch_size=EXPLAIN_BATCH_SIZE, progress=False)


def write_config(project: Path, name: str, **keys: str) -> Path:
    text = (REPO / "configs" / "config.yaml").read_text()
    for key, value in keys.items():
        text = text.replace(f"  {key}: null", f"  {key}: {value}")
    path = project / "configs" / name
    path.write_text(text)
    return path


def perturbed_copy(weights: Path, out: Path, seed: int = 0) -> Path:
    """The model in ``weights`` with seeded noise (one weight sd) added to its classifier: a second
    trained model that predicts like the first on some faces and not on others."""
    import torch
    from fer_core.models import save_model
    model = load_model(weights)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.module.get_classifier().parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * parameter.std())
    return save_model(model, out)


#: The second model's label on the pages (a weights file of the project).
SECOND = "weights/second.safetensors"


@pytest.fixture(scope="module")
def app_config(project, tiny_model, face_model_path):
    path = write_config(project, "dashboard.yaml", weights_path=str(tiny_model), mediapipe_model=str(face_model_path))
    config = load_config(path)
    faces = open_dataset("fer2013:test", config.resolve(config.data.root))
    subset = faces.subset(np.arange(0, len(faces), 20))
    for name in ("dash-eval-first", "dash-eval"):
        evaluate_model(config, load_model(tiny_model), subset, name=name, n_bootstrap=100, progress=False)
    sd_faces = open_dataset("sd_faces", config.resolve(config.data.root))
    sd_subset = sd_faces.subset(np.arange(0, len(sd_faces), 8))  # all 5 classes
    evaluate_model(config, load_model(tiny_model), sd_subset, name="dash-eval-sd", n_bootstrap=100, progress=False)
    (project / "weights").mkdir(exist_ok=True)
    second = perturbed_copy(tiny_model, project / SECOND)
    evaluate_model(config, load_model(second), sd_subset, name="dash-eval-sd-second", n_bootstrap=100, progress=False)
    return path


def open_page(monkeypatch, config_path: Path, page: str | None = None, **widgets) -> AppTest:
    """A new session on ``page`` (Home first), its widgets (by key) set before its first run."""
    monkeypatch.setenv("FER_CORE_CONFIG", str(config_path))
    app = AppTest.from_file(HOME, default_timeout=180)
    app.run()
    if page:
        for key, value in widgets.items():
            app.session_state[key] = value
        app.switch_page(str(PAGES / page))
        app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def texts(app: AppTest) -> str:
    parts = [m.value for m in app.markdown] + [i.value for i in app.info] + [w.value for w in app.warning]
    parts += [e.value for e in app.error] + [c.value for c in app.code] + [c.value for c in app.caption]
    parts += [s.value for s in app.subheader] + [s.value for s in app.success]
    return "\n".join(map(str, parts))


def images(app: AppTest) -> list:
    """Every picture on the page (an ``st.image`` call with a list gives several)."""
    return [img for element in app.get("image") for img in element.proto.imgs]


def frame_with(app: AppTest, column: str) -> pd.DataFrame:
    """The first table on the page with ``column``."""
    return next(frame.value for frame in app.dataframe if column in frame.value.columns)


def plotly_array(value) -> np.ndarray:
    """A trace's data as an array: plotly writes numpy data as base64 typed arrays."""
    if isinstance(value, dict) and "bdata" in value:
        import base64
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        return array if shape is None else array.reshape([int(n) for n in str(shape).split(",")])
    return np.asarray(value, dtype=float)


def sd_face_bytes(synthetic_root: Path) -> bytes:
    return (synthetic_root / "happy" / "happy_001.jpg").read_bytes()


def test_home_lists_what_is_installed_and_links_each_question(monkeypatch, app_config, tiny_model):
    app = open_page(monkeypatch, app_config)
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Model"] == "mobilenetv3_small_050"
    assert int(metrics["Datasets"]) >= 5  # fer2013 train/test, ferplus train/valid/test, sd_faces
    assert int(metrics["Evaluation runs"]) >= 2 and int(metrics["Training runs"]) >= 1
    body = texts(app)
    assert "Research questions" in [s.value for s in app.subheader]
    assert load_model(tiny_model).fingerprint in body and "`sd_faces`" in body
    links = {link.proto.label: link.proto.page for link in app.get("page_link")}
    assert {"Cross-domain", "Saliency browser", "Embeddings"} <= set(links)
    for code in ("RQ1", "RQ2", "RQ3", "RQ4"):
        assert code in body
    assert "fer-core sweep" in body  # no sweep yet: the next step says how to make one
    counts = frame_with(app, "total").set_index("dataset")  # faces per class of every installed dataset
    assert {"fer2013:test", "ferplus:test", "sd_faces"} <= set(counts.index)
    labels = open_dataset("sd_faces", load_config(app_config).resolve("data")).labels
    for index, emotion in enumerate(EMOTIONS):
        assert counts.loc["sd_faces"].get(emotion, 0) == (labels == index).sum(), emotion
    assert counts.loc["sd_faces", "total"] == len(labels)


def test_upload_detects_predicts_and_explains_a_real_sd_face(monkeypatch, app_config, synthetic_root):
    app = open_page(monkeypatch, app_config, "upload.py")
    assert "mediapipe" in texts(app)
    assert app.selectbox(key="upload-model").value.startswith("configured: ")
    assert app.selectbox(key="upload-method").value == "gradcam"
    app.file_uploader[0].set_value(("happy_001.jpg", sd_face_bytes(synthetic_root), "image/jpeg")).run()
    assert not app.exception, [e.value for e in app.exception]
    pictures = images(app)
    assert pictures[0].caption == "1 face(s)" and pictures[1].caption.startswith("face 1 (aligned)")
    assert pictures[2].caption.startswith("face 1: gradcam map of ")
    charts = app.get("plotly_chart")
    assert len(charts) == 1
    figure = json.loads(charts[0].proto.spec)
    probabilities = figure["data"][0]["x"]
    assert len(probabilities) == 8 and abs(sum(probabilities) - 1) < 1e-4
    assert pictures[2].caption.endswith(figure["data"][0]["y"][int(np.argmax(probabilities))])
    buttons = app.get("download_button")
    assert [b.proto.label for b in buttons] == ["Overlay (PNG)", "Download the result (JSON)"]
    gradcam_overlay = pictures[2].url
    app.selectbox(key="upload-method").set_value("saliency").run()
    assert not app.exception
    assert images(app)[2].caption.startswith("face 1: saliency map of ") and images(app)[2].url != gradcam_overlay


def test_upload_finds_every_face_of_a_group_photo(monkeypatch, app_config, synthetic_root):
    from fer_core.images import load_rgb
    faces = [cv2.resize(load_rgb(synthetic_root / folder / f"{folder}_001.jpg"), (256, 256))
             for folder in ("happy", "sad", "angry", "neutral")]
    photo = np.vstack([np.hstack(faces[:2]), np.hstack(faces[2:])])  # four people, two rows
    app = open_page(monkeypatch, app_config, "upload.py")
    png = cv2.imencode(".png", cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))[1].tobytes()
    app.file_uploader[0].set_value(("group.png", png, "image/png")).run()
    assert not app.exception, [e.value for e in app.exception]
    pictures = images(app)
    assert pictures[0].caption == "4 face(s)"
    assert sum(p.caption.startswith("face ") and " gradcam map of " in p.caption for p in pictures) == 4
    assert len(app.get("plotly_chart")) == 4
    assert [b.proto.label for b in app.get("download_button")].count("Overlay (PNG)") == 4


def test_upload_rejects_a_corrupt_file_clearly(monkeypatch, app_config):
    app = open_page(monkeypatch, app_config, "upload.py")
    app.file_uploader[0].set_value(("broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg", "image/jpeg")).run()
    assert not app.exception
    assert any("Cannot read broken.jpg" in e.value for e in app.error)


def test_upload_withholds_predictions_of_an_untrained_head(monkeypatch, project, tiny_model, synthetic_root):
    from fer_core.models import FerModel, save_model
    fresh = FerModel.from_architecture("mobilenetv3_small_050")
    save_model(fresh, project / "weights" / "untrained")
    path = write_config(project, "untrained.yaml", weights_path=str(project / "weights" / "untrained.safetensors"))
    app = open_page(monkeypatch, path, "upload.py")
    assert any("untrained" in w.value for w in app.warning)
    image = io.BytesIO()
    Image.open(io.BytesIO(sd_face_bytes(synthetic_root))).save(image, format="PNG")
    app.file_uploader[0].set_value(("face.png", image.getvalue(), "image/png")).run()
    assert not app.exception and len(app.get("plotly_chart")) == 0


def test_baseline_metrics_shows_the_run_and_compares_two(monkeypatch, app_config, project):
    app = open_page(monkeypatch, app_config, "baseline_metrics.py")
    app.selectbox[0].set_value("dash-eval").run()
    metrics = json.loads((project / "runs" / "dash-eval" / "metrics.json").read_text())
    table = app.dataframe[0].value
    accuracy = table.loc[table["metric"] == "accuracy"].iloc[0]
    assert accuracy["value"] == pytest.approx(metrics["accuracy"])
    assert accuracy["95% CI low"] == pytest.approx(metrics["ci95"]["accuracy"][0])
    assert "scored over the model's 8 classes (--score-over model)" in texts(app)  # the protocol beside the figure
    assert len(app.get("plotly_chart")) == 3  # per-class bars, the confusion matrix, per-class deltas
    assert any(f"{metrics['valence']['accuracy']:.2%}" in m.value for m in app.markdown)
    app.toggle[0].set_value(False).run()
    assert not app.exception
    # The two runs of the same model on the same faces: McNemar finds no difference, every delta is 0.
    assert app.selectbox[1].value == "dash-eval-first"
    assert any("McNemar's exact test on 359 shared faces: p = 1 " in m.value for m in app.markdown)
    deltas = app.dataframe[-1].value  # the per-class deltas
    assert list(deltas["emotion"]) == metrics["emotions"]
    assert (deltas[["precision_delta", "recall_delta", "f1_delta"]] == 0).all().all()
    assert list(deltas["f1_a"]) == pytest.approx([metrics["per_class"][e]["f1"] for e in metrics["emotions"]])


def test_confusion_cell_lists_its_faces_with_probabilities_and_maps(monkeypatch, app_config, project):
    app = open_page(monkeypatch, app_config, "confusion.py")
    app.selectbox[0].set_value("dash-eval").run()
    run = Run.load(project / "runs" / "dash-eval")
    counts = np.array(run.metrics["confusion"]["counts"])
    emotions = run.metrics["confusion"]["labels"]  # rows: FER2013's 7 true classes
    predicted = run.metrics["confusion"]["predicted"]  # columns: the model's 8 (scored over them)
    assert counts.shape == (7, 8) and "scored over the model's 8 classes" in texts(app)
    off = np.where(np.equal.outer(emotions, predicted), 0, counts)
    i, j = np.unravel_index(off.argmax(), counts.shape)  # the default cell: the most frequent confusion
    picked = app.selectbox(key="cell-true").value, app.selectbox(key="cell-predicted").value
    assert picked == (emotions[i], predicted[j])
    assert f"{counts[i, j]} face(s): true {emotions[i]}, predicted {predicted[j]}" in texts(app)
    table = app.dataframe[0].value
    predictions = run.predictions
    expected = predictions[(predictions["label"] == EMOTIONS.index(emotions[i]))
                           & (predictions["pred"] == EMOTIONS.index(predicted[j]))]
    shown = min(8, counts[i, j])
    assert len(table) == shown
    assert set(table["key"]) <= set(expected["key"])
    assert list(table["p_predicted"]) == sorted(table["p_predicted"], reverse=True)
    assert len(images(app)) == 2 * shown  # each face and its Grad-CAM overlay
    # a diagonal cell: the correctly classified faces of the largest class
    correct = [counts[row, predicted.index(emotion)] for row, emotion in enumerate(emotions)]
    k = int(np.argmax(correct))
    app.selectbox(key="cell-true").set_value(emotions[k])
    app.selectbox(key="cell-predicted").set_value(emotions[k]).run()
    assert not app.exception
    assert f"{correct[k]} face(s): true {emotions[k]}, predicted {emotions[k]}" in texts(app)
    app.toggle[0].set_value(True).run()
    heatmap = json.loads(app.get("plotly_chart")[0].proto.spec)["data"][0]
    assert np.allclose(plotly_array(heatmap["z"]), run.metrics["confusion"]["normalized"])
    # a face's drill-down: its probabilities as the run scored it (the same model, the same crop)
    app.session_state["drill-maps"] = app.session_state["drill-neighbours"] = False  # both: tested elsewhere
    app.button(key="drill-cell-0").click().run()
    assert not app.exception, [e.value for e in app.exception]
    face = app.dataframe[0].value.iloc[0]
    assert f"fer2013:test: `{face['key']}`" in texts(app)
    [chart] = [c for c in app.get("plotly_chart") if "drill-probabilities" in c.proto.id]
    probabilities = dict(zip(json.loads(chart.proto.spec)["data"][0]["y"],
                             plotly_array(json.loads(chart.proto.spec)["data"][0]["x"])))
    for emotion, probability in probabilities.items():
        assert probability == pytest.approx(face[f"prob_{emotion}"], abs=1e-4), emotion  # float32 vs stored


def test_runs_lists_runs_shows_curves_and_runs_a_background_job(monkeypatch, app_config, project, tiny_model):
    app = open_page(monkeypatch, app_config, "runs.py")
    table = app.dataframe[0].value
    assert {"dash-eval", "dash-eval-first", "tiny"} <= set(table["run"])
    assert table.set_index("run").loc["dash-eval", "n"] == 359
    assert table.set_index("run").loc["dash-eval", "scoring"] == "model"
    app.selectbox[0].set_value("tiny").run()
    history = json.loads((project / "runs" / "tiny" / "history.json").read_text())["history"]
    curves = json.loads(app.get("plotly_chart")[0].proto.spec)["data"]
    accuracy = next(trace for trace in curves if trace["name"] == "val accuracy")
    assert plotly_array(accuracy["y"]) == pytest.approx([row["val_accuracy"] for row in history])

    app.radio(key="job-kind").set_value("evaluate")
    app.selectbox(key="job-dataset").set_value("fer2013:test")
    app.number_input(key="job-limit").set_value(30)
    app.text_input(key="job-name").set_value("job-eval").run()
    command = app.code[0].value
    assert command.startswith("fer-core --config ") and " evaluate --model " in command
    assert command.endswith("--dataset fer2013:test --name job-eval --limit 30")
    app.button(key="job-start").click().run()
    assert any("keeps running if you leave this page" in s.value for s in app.success)
    app.switch_page(str(PAGES / "home.py")).run()  # leave the page: the job goes on
    metrics_file = project / "runs" / "job-eval" / "metrics.json"
    deadline = time.time() + 240
    while not metrics_file.is_file() and time.time() < deadline:
        time.sleep(2)
    assert json.loads(metrics_file.read_text())["n"] == 30
    app.switch_page(str(PAGES / "runs.py")).run()
    assert "finished" in texts(app) or "running" in texts(app)
    runs = app.dataframe[0].value.set_index("run")
    size = len(open_dataset("fer2013:test", load_config(app_config).resolve("data")))
    assert runs.loc["job-eval", "sample"] == f"30 of {size:,} (stratified 30, seed 0)"
    assert runs.loc["job-eval", "limited"]
    assert not runs.loc["dash-eval", "limited"]
    assert runs.loc["dash-eval-sd", "detector"] == "mediapipe" and runs.loc["dash-eval", "detector"] == "none"  # crops
    assert list(runs.columns[:3]) == ["accuracy", "macro_f1", "best_val_accuracy"]  # the scores never cut off
    assert any("scored only a sample of their test set" in w.value for w in app.warning)
    app.radio(key="job-kind").set_value("explain").run()  # the precompute jobs get their own arguments
    assert " explain --model " in app.code[0].value and "--method " in app.code[0].value
    app.radio(key="job-kind").set_value("gap").run()
    assert "--real " in app.code[0].value and "--synthetic sd_faces" in app.code[0].value


def test_saliency_browser_puts_real_and_synthetic_maps_side_by_side(monkeypatch, app_config):
    import streamlit as st
    from dashboard.jobs import list_jobs
    from fer_core.cache import ResultCache
    from fer_core.explain import record_quality
    from fer_core.precompute import embed_datasets, explain_dataset
    from fer_core.views import class_rows
    config = load_config(app_config)
    model = load_model(config.model.weights_path)
    root = config.resolve(config.data.root)
    # Grad-CAM maps stored as `fer-core explain` stores them (no --layer): the page, which names the
    # default layer in its layer box, must find them (issue 13: it recomputed them under another key)
    sd_faces = open_dataset("sd_faces", root)
    with ResultCache.from_config(config) as cache:
        explain_dataset(model, sd_faces.subset(class_rows(sd_faces, "Sadness", 4)), cache, "gradcam",
                        face_pipeline=face_pipeline_for(config, model), options=QUIET_EXPLAIN)
    app = open_page(monkeypatch, app_config, "saliency.py", **{"sal-count": 4, "sal-shown": 4, "sal-per-area": False})
    assert not app.exception, [e.value for e in app.exception]
    assert [s.value for s in app.subheader][:2] == ["real: fer2013:test", "synthetic: sd_faces"]
    captions = [c.value for c in app.caption if "Happiness face(s)" in c.value]
    assert len(captions) == 2 and all(c.startswith("4 Happiness face(s)") for c in captions)
    assert len(images(app)) == 8  # 4 real + 4 synthetic overlays
    # each thumbnail says the true class, the model's prediction and its confidence, as the model scores the face
    with ResultCache.from_config(config) as cache:
        scored = embed_datasets(model, {"fer2013:test": open_dataset("fer2013:test", root).subset(
            class_rows(open_dataset("fer2013:test", root), "Happiness", 32))}, cache, face_pipeline_for(config, model),
            projections=(), options=QUIET).table
    first = scored.iloc[0]
    assert images(app)[0].caption.startswith(f"true Happiness · pred {first['pred_emotion']} "
                                              f"{first['confidence']:.0%}")
    charts = [json.loads(chart.proto.spec)["data"] for chart in app.get("plotly_chart")]
    real, synthetic, difference = (plotly_array(chart[0]["z"]).astype(float) for chart in charts[:3])
    assert real.shape == synthetic.shape and np.allclose(difference, synthetic - real, atol=1e-5, equal_nan=True)
    assert np.isfinite(real).mean() > 0.5 and np.nanstd(real) > 0 and np.nanstd(synthetic) > 0  # NaN: no face there
    regions = {trace["name"]: plotly_array(trace["y"]) for trace in charts[3]}  # mean share per region and domain
    assert set(regions) == {"real", "synthetic"}
    assert all(abs(shares.sum() - 1) < 1e-6 for shares in regions.values())  # every face's attribution is placed
    assert "No sanity check stored for gradcam" in texts(app)
    assert "gradcam (coarse, fast overlay, not checked)" in app.selectbox(key="sal-method").options
    # only the wrong predictions among the first 32 Happiness faces of each dataset
    app.radio(key="sal-correct").set_value("wrong").run()
    assert not app.exception, [e.value for e in app.exception]
    wrong = scored[scored["pred"] != scored["label"]]
    assert f"{min(4, len(wrong))} Happiness face(s)" in texts(app)
    assert all(img.caption.endswith("✗") for img in images(app)) and images(app)
    assert images(app)[0].caption.startswith(f"true Happiness · pred {wrong.iloc[0]['pred_emotion']} ")
    app.radio(key="sal-correct").set_value("all").run()
    # a new session with the page memo cleared reads every map back from the result cache
    st.cache_data.clear()
    again = open_page(monkeypatch, app_config, "saliency.py", **{"sal-count": 4, "sal-shown": 4})
    assert [c.value for c in again.caption if "Happiness face(s)" in c.value] == \
        ["4 Happiness face(s); when first shown, 0 were computed and 4 read from the cache"] * 2
    again.selectbox(key="sal-emotion").set_value("Sadness").run()  # the synthetic maps the CLI stored
    assert "4 Sadness face(s); when first shown, 0 were computed and 4 read from the cache" in \
        [c.value for c in again.caption]
    before = [img.url for img in images(again)]
    again.selectbox(key="sal-method").set_value("saliency").run()
    assert not again.exception
    assert len(images(again)) == 8 and [img.url for img in images(again)] != before
    assert "Mean saliency map of Sadness on aligned faces" in texts(again)
    # a second model beside the first: two overlays a face, its own row of mean maps
    again.selectbox(key="sal-second").set_value(SECOND).run()
    assert not again.exception, [e.value for e in again.exception]
    assert len(images(again)) == 16 and images(again)[1].caption == SECOND
    assert f"**{SECOND}** (the same faces; each model explains its own predicted class)" in texts(again)
    assert len(again.get("plotly_chart")) == 3 + 3 + 1  # mean maps of each model, region shares

    # a face's drill-down: every method for its predicted and true class, probabilities (its
    # neighbours: in the Embeddings test, where the page holds the faces they are looked for in)
    again.selectbox(key="sal-second").set_value(None)
    again.session_state["drill-neighbours"] = False
    again.button(key="drill-real-0").click().run()
    assert not again.exception, [e.value for e in again.exception]
    assert "Every method" in texts(again)
    [probabilities] = [json.loads(c.proto.spec)["data"][0] for c in again.get("plotly_chart")
                       if "drill-probabilities" in c.proto.id]
    assert abs(sum(plotly_array(probabilities["x"])) - 1) < 1e-4
    [regions] = [frame.value for frame in again.dataframe if "mouth" in frame.value.columns]
    assert set(regions["method"]) == set(method_names())
    assert np.allclose(regions[list(REGIONS)].sum(axis=1), 1)  # each map's positive attribution, placed

    # the sanity check's button starts `fer-core sanity` in the background (its run to the end and
    # what it stores are tested in test_explain; the job machinery in the Runs test): it is stopped here
    checked = open_page(monkeypatch, app_config, "saliency.py", **{"sal-count": 4, "sal-shown": 4})
    checked.number_input(key="sanity-faces").set_value(8)
    checked.button(key="sanity-start").click().run()
    assert not checked.exception, [e.value for e in checked.exception]
    [job] = [job for job in list_jobs(config) if "sanity" in job.command]
    assert list(job.command) == ["fer-core", "--config", str(app_config), "sanity", "--model",
                                 str(config.model.weights_path), "--dataset", "fer2013:test", "--method", "gradcam",
                                 "--faces", "8"]
    assert f"**{job.id}**: running" in texts(checked)
    os.killpg(job.pid, signal.SIGTERM)  # the job's own process group: the page started it in a new session
    try:
        os.waitpid(job.pid, 0)  # this process started it: reap it (a zombie still answers kill(pid, 0))
    except ChildProcessError:
        pass  # already reaped by subprocess's own clean-up
    assert not job.running
    # a stored check (what the job stores) flags the method, with its tables
    faces = open_dataset("fer2013:test", root).subset(np.arange(0, 800, 100))
    result = record_quality(config, model, model.preprocessing.batch([faces.read(s) for s in faces]), ["gradcam"],
                            source="fer2013:test[0:800:100]")["gradcam"]
    checked.run()
    verdict = "failed the sanity check" if not result["passed"] else "gradcam passed the sanity check"
    assert verdict in texts(checked)
    verdicts = checked.dataframe[0].value.set_index("method")
    assert verdicts.loc["gradcam", "verdict"] == ("passed" if result["passed"] else "failed")
    assert set(verdicts.loc[verdicts.index != "gradcam", "verdict"]) == {"not checked"}
    # the stored check's two tables, with their controls (issue 14): the cascade steps beside the
    # different-faces and noise-stability rows; deletion / insertion beside a random order and the
    # centre prior, each figure as stored
    frames = [frame.value for frame in checked.dataframe]
    [randomisation] = [frame for frame in frames if "step" in frame.columns]
    [faithfulness] = [frame for frame in frames if "centre_deletion_auc" in frame.columns]
    assert list(randomisation["step"]) == [f"+{layer}" for layer in result["randomisation"]["layers"]] + [
        "different faces", "noise stability"]
    stability = result["randomisation"]["noise_stability"]["decision"]["mean"]
    assert randomisation["decision_mean"].iloc[-1] == pytest.approx(stability)
    [row] = faithfulness.to_dict("records")
    for field in ("deletion_auc", "random_deletion_auc", "centre_deletion_auc", "centre_deletion_p_value",
                  "insertion_auc", "centre_insertion_auc", "centre_insertion_p_value"):
        assert row[field] == pytest.approx(result["faithfulness"][field]), field


def decode_uri(uri: str) -> np.ndarray:
    """An image ``data:`` URI as an RGB array."""
    import base64
    assert uri.startswith("data:image/jpeg;base64,")
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(base64.b64decode(uri.split(",", 1)[1]), np.uint8),
                                     cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_embeddings_plot_both_domains_and_measure_the_gap(monkeypatch, app_config, project):
    import fer_core.precompute
    from fer_core.backends import resolve_device
    from fer_core.cache import ResultCache
    from fer_core.domain_gap import project as projection
    from fer_core.precompute import embed_datasets
    app = open_page(monkeypatch, app_config, "embeddings.py", **{"emb-projection": "pca", "emb-limit": 40})
    assert not app.exception, [e.value for e in app.exception]
    traces = json.loads(app.get("plotly_chart")[0].proto.spec)["data"]
    names = [t["name"] for t in traces]
    assert names[0] == "real (40)" and names[1].startswith("synthetic (")
    config = load_config(app_config)
    model = load_model(config.model.weights_path)
    datasets = {s: open_dataset(s, config.resolve(config.data.root)) for s in ("fer2013:test", "sd_faces")}
    with ResultCache.from_config(config) as cache:
        found = embed_datasets(model, datasets, cache, face_pipeline_for(config, model), projections=(), limit=40,
                               options=QUIET)
    assert found.computed == 0  # the page stored every face's features
    xy = projection(found.features, "pca")
    real_rows = np.flatnonzero(found.table["domain"] == "real")
    # PCA's sign is arbitrary
    assert np.allclose(np.abs(plotly_array(traces[0]["x"])), np.abs(xy[real_rows, 0]), atol=1e-3)
    # each point carries its face for the hover preview (and the script that shows it is on the page)
    first_row, uri = traces[0]["customdata"][0]
    data = datasets["fer2013:test"]
    stored = [data.read(data[i]) for i in range(len(data)) if data[i].key in set(found.table["key"].iloc[:6])]
    errors = [np.abs(cv2.resize(image, (48, 48), interpolation=cv2.INTER_AREA).astype(float)
                     - decode_uri(uri)).mean() for image in stored]
    key_order = [data[i].key for i in range(len(data)) if data[i].key in set(found.table["key"].iloc[:6])]
    assert key_order[int(np.argmin(errors))] == found.table["key"].iloc[first_row]  # the point's own face
    assert min(errors) < 4  # JPEG at quality 80 of a 48 px face: a few grey levels off
    assert any("plotly_hover" in element.proto.body for element in app.get("html"))
    # a lasso around three points (as the browser reports it: customdata, or trace and index) lists their faces
    lasso = [{"customdata": [0, uri]}, {"customdata": [3, ""]}, {"curve_number": 1, "point_index": 2}]
    app.session_state["embedding-scatter"] = {"selection": {"points": lasso, "point_indices": [], "box": [],
                                                            "lasso": []}}
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    assert "3 selected face(s)" in texts(app) and len(images(app)) == 3
    synthetic_rows = np.flatnonzero(found.table["domain"] == "synthetic")
    listed = app.dataframe[0].value
    assert list(listed["key"]) == list(found.table["key"].iloc[[0, 3, synthetic_rows[2]]])
    # a click on one point opens its face's drill-down (its maps: tested on the Saliency page)
    app.session_state["drill-pool"], app.session_state["drill-maps"] = 40, False
    app.session_state["embedding-scatter"] = {"selection": {"points": [{"curve_number": 1, "point_index": 2}],
                                                            "point_indices": [], "box": [], "lasso": []}}
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    clicked = found.table.iloc[synthetic_rows[2]]
    assert f"sd_faces: `{clicked['key']}`" in texts(app)
    # its nearest faces of each domain among the faces plotted, nearest first, itself left out
    from fer_core.domain_gap import nearest_rows
    neighbours = [img.caption for img in images(app) if ", d=" in (img.caption or "")]
    assert len(neighbours) == 8 and "Nearest real faces" in texts(app) and "Nearest synthetic faces" in texts(app)
    others = np.flatnonzero((found.table["domain"] == "synthetic") & (found.table["key"] != clicked["key"]))
    _, expected = nearest_rows(found.features[synthetic_rows[2]], found.features[others], 4)
    distances = [float(caption.rsplit("d=", 1)[1]) for caption in neighbours]
    # the dialog's query features come from the recognizer (the same crop, the same weights): the
    # distances agree to the 3 decimals shown
    assert distances[4:] == pytest.approx(expected, abs=1.5e-3) and distances[:4] == sorted(distances[:4])
    app.session_state["embedding-scatter"] = {"selection": {"points": [], "point_indices": [], "box": [],
                                                            "lasso": []}}
    app.radio(key="emb-color").set_value("emotion").run()
    traces = json.loads(app.get("plotly_chart")[0].proto.spec)["data"]
    counts = found.table["emotion"].value_counts()
    assert {t["name"] for t in traces} == {f"{e} ({n})" for e, n in counts.items()}
    app.toggle(key="emb-matched").set_value(True)
    devices = []
    run_on = fer_core.precompute.on_device
    monkeypatch.setattr(fer_core.precompute, "on_device", lambda model, device: devices.append(device)
                        or run_on(model, device))
    app.button(key="gap-button").click().run()
    assert not app.exception, [e.value for e in app.exception]
    # the page ran the gap job on the device the config names (``auto`` resolved as the CLI resolves it)
    assert devices and set(devices) == {str(resolve_device(config.model.device))}
    metrics = {m.label: m for m in app.metric}
    # Chance is 50%; the stratified sample now gives 72.5% (deterministic, seeded): a wide margin above chance.
    assert float(metrics["Domain classifier (balanced acc.)"].value.rstrip("%")) > 60  # 48 px FER vs SD photos
    assert not any(m.proto.delta for m in app.metric)  # a p-value is no change: no arrow
    assert 0 < float(metrics["MMD permutation p"].value) <= 1
    gaps = frame_with(app, "read against")
    report = json.loads(next((project / "runs" / "gap").glob(f"{model.fingerprint}-*limit40*.json")).read_text())
    kid = gaps.loc["KID (mean ± sd over subsets)"].iloc[0]
    assert kid == f"{report['kid']['mean']:.3g} ± {report['kid']['std']:.2g}"  # written out in full
    # class-matched: as many faces of each emotion in both domains (the classes both hold)
    shared = sorted(set(found.table.loc[found.table["domain"] == "real", "emotion"])
                    & set(found.table.loc[found.table["domain"] == "synthetic", "emotion"]))
    real_n, synthetic_n = gaps.loc["faces (real + synthetic)"].iloc[1].split(" + ")
    assert real_n == synthetic_n == str(sum(
        min((found.table["emotion"][found.table["domain"] == d] == e).sum() for d in ("real", "synthetic"))
        for e in shared))
    # within each emotion: every class both domains hold, with its sizes
    per_class = frame_with(app, "n_real").set_index("emotion")
    assert sorted(per_class.index) == shared
    for emotion in shared:
        for domain in ("real", "synthetic"):
            assert per_class.loc[emotion, f"n_{domain}"] == ((found.table["domain"] == domain)
                                                             & (found.table["emotion"] == emotion)).sum()
    centroids = json.loads(app.get("plotly_chart")[1].proto.spec)["data"][0]
    assert list(centroids["x"]) == list(per_class.index)
    # a second model beside the first: its own scatter and its own gap columns
    app.selectbox(key="emb-second").set_value(SECOND).run()
    assert not app.exception, [e.value for e in app.exception]
    scatters = [c for c in app.get("plotly_chart") if "embedding-scatter" in c.proto.id]
    assert len(scatters) == 2
    assert f"{SECOND}: all faces" in frame_with(app, "read against").columns


def test_cross_domain_shows_the_matrix_and_per_class_accuracy(monkeypatch, app_config, project):
    app = open_page(monkeypatch, app_config, "cross_domain.py")
    assert not app.exception, [e.value for e in app.exception]
    sd = json.loads((project / "runs" / "dash-eval-sd" / "metrics.json").read_text())
    on_fer = [Run.load(p.parent) for p in (project / "runs").glob("*/metrics.json")
              if Run.load(p.parent).info["dataset"]["label"].split("[")[0] == "fer2013:test"]  # samples too
    real = max(on_fer, key=lambda r: r.info["created"]).metrics  # a model's newest evaluation counts
    matrix = json.loads(app.get("plotly_chart")[0].proto.spec)["data"][0]
    cells = {(y, x): z for y, row in zip(matrix["y"], plotly_array(matrix["z"])) for x, z in zip(matrix["x"], row)}
    tiny = f"real · tiny ({load_model(load_config(app_config).model.weights_path).fingerprint[:8]})"  # one row a model
    assert cells[(tiny, "sd_faces")] == pytest.approx(sd["accuracy"])
    assert cells[(tiny, "fer2013:test")] == pytest.approx(real["accuracy"])
    text = dict(zip(matrix["y"], matrix["text"]))[tiny]
    assert f"n={sd['n']}" in text[matrix["x"].index("sd_faces")] and f"n={real['n']}" in text[matrix["x"].index("fer2013:test")]
    assert "fer-core sweep" in texts(app)  # one synthetic share only: the sweep is what is missing
    # two models side by side on the test set both were scored on, McNemar on the faces they share
    pair = frame_with(app, "difference").set_index("test_set")
    first, second = Run.load(project / "runs" / "dash-eval-sd"), Run.load(project / "runs" / "dash-eval-sd-second")
    labels = list(pair.columns[:2])
    assert {app.selectbox(key="xd-first").value, app.selectbox(key="xd-second").value} == {
        first.info["model"]["fingerprint"], second.info["model"]["fingerprint"]}
    ordered = (first, second) if app.selectbox(key="xd-first").value == first.info["model"]["fingerprint"] \
        else (second, first)
    assert [pair.loc["sd_faces", label] for label in labels] == pytest.approx([r.metrics["accuracy"] for r in ordered])
    assert pair.loc["sd_faces", "shared"] == first.metrics["n"]  # the same 60 faces
    from fer_core.workflows import compare_runs
    assert pair.loc["sd_faces", "p_value"] == pytest.approx(compare_runs(*ordered)["mcnemar"]["p_value"])
    table = frame_with(app, "correct")
    table = table[table["evaluation"] == "dash-eval-sd"].set_index("emotion")
    for emotion, scores in sd["per_class"].items():
        assert table.loc[emotion, "accuracy"] == pytest.approx(scores["recall"])
        assert table.loc[emotion, "support"] == scores["support"]


def build_grid(faces: list[np.ndarray], cell: int = 220, gutter: int = 12) -> np.ndarray:
    """A 3x3 grid on grey: eight faces and one empty cell (bottom right)."""
    side = 3 * cell + 4 * gutter
    grid = np.full((side, side, 3), 128, np.uint8)
    for n, face in enumerate(faces[:8]):
        r, c = divmod(n, 3)
        y, x = gutter + r * (cell + gutter), gutter + c * (cell + gutter)
        grid[y:y + cell, x:x + cell] = cv2.resize(face, (cell, cell), interpolation=cv2.INTER_AREA)
    return grid


def test_synthetic_data_imports_a_grid_and_shows_every_cell(monkeypatch, tmp_path, synthetic_root, face_model_path,
                                                              tiny_model):
    from fer_core.faces.detectors import MediaPipeDetector
    from fer_core.images import load_rgb
    from fer_core.synthetic import (CreditLedger, ExtractSettings, committed_grids, extract_faces, summarize,
                                    write_report)
    (tmp_path / "configs").mkdir()
    config = write_config(tmp_path, "config.yaml", mediapipe_model=str(face_model_path))
    app = open_page(monkeypatch, config, "synthetic.py")
    assert "No extraction manifest yet" in texts(app) and "The credit ledger is empty" in texts(app)
    faces = [load_rgb(p) for p in sorted((synthetic_root / "happy").glob("*.jpg"))[:8]]
    png = cv2.imencode(".png", cv2.cvtColor(build_grid(faces), cv2.COLOR_RGB2BGR))[1].tobytes()
    app.file_uploader[0].set_value(("grid.png", png, "image/png"))
    app.number_input[1].set_value(3)  # the credit budget
    app.button[0].click().run()  # the form's "Import" button
    assert not app.exception, [e.value for e in app.exception]
    root = tmp_path / "data" / "synthetic"
    ledger = CreditLedger(root / "ledger.json")
    assert ledger.summary()["grids"]["committed"] == 1 and ledger.spent == 1
    batch = ledger.entries()[0]["batch"]
    assert any(f"1 of 1 grid(s) imported as batch {batch}" in s.value for s in app.success), texts(app)
    assert app.selectbox(key="revert-batch").value == batch  # the import just made, ready to revert
    manifest = extract_faces(committed_grids(ledger), MediaPipeDetector(face_model_path), root / "processed",
                             root / "manifest.parquet", ExtractSettings(face_size=64, test_fraction=1.0),
                             progress=False)
    write_report(root / "manifest.parquet", root / "processed", root / "report")
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Grids"] == "1" and metrics["Cells"] == str(len(manifest))
    assert metrics["Accepted faces"] == str(int(manifest["accepted"].sum()))
    assert metrics["Budget"] == "3" and metrics["Spent"] == "1" and metrics["Remaining"] == "2"
    assert "3x3" in texts(app) and len(manifest) == 9
    # the rejected cells: the only table with both columns (one grid's cells have no grid_file, the layout
    # disagreements no reject_reason)
    rejected = next(f.value for f in app.dataframe if {"grid_file", "reject_reason"} <= set(f.value.columns))
    assert "no face" in set(rejected["reject_reason"])  # the empty cell, with its reason
    assert len(rejected) == int((~manifest["accepted"]).sum())
    disagreements = frame_with(app, "requested")  # the config asks for 6x6 grids; this one is 3x3
    assert disagreements.to_dict("records") == summarize(manifest)["layout_disagreements"]
    assert list(disagreements["found"]) == ["3x3"] and list(disagreements["requested"]) == ["6x6"]
    sheets = [img.caption for img in images(app) if img.caption.endswith("red rejected with its reason")]
    assert sheets == ["contact_sheet.png: every cell: green accepted, red rejected with its reason"]  # 1 grid: 1 page
    accepted = int(manifest["accepted"].sum())
    assert accepted >= 6
    # the plan's arithmetic: 1 grid on 1 credit, so the faces accepted per credit are that grid's, and the 2
    # remaining credits should yield twice as many
    assert metrics["Faces accepted per credit"] == str(float(accepted))
    plan = frame_with(app, "credits of").set_index("credits of")
    assert plan.loc["remaining", "credits"] == 2 and plan.loc["remaining", "faces_accepted_expected"] == 2 * accepted
    assert list(frame_with(app, "reserved_at")["batch"]) == [batch]

    # the extracted faces, scored: the Cross-domain page gives their accuracy by prompted intensity
    loaded = load_config(config)
    run = evaluate_model(loaded, load_model(tiny_model), open_dataset("synthetic:test", loaded.resolve("data")),
                         name="synth-eval", n_bootstrap=100, progress=False)
    page = open_page(monkeypatch, config, "cross_domain.py")
    intensity = page.dataframe[1].value.set_index("intensity")
    assert list(intensity.index) == ["unstated"]  # the grid was imported without an intensity
    assert intensity.loc["unstated", "accuracy"] == pytest.approx(run.metrics["accuracy"])
    assert intensity.loc["unstated", "support"] == run.metrics["n"] == int(manifest["accepted"].sum())

    # the revert undoes the import: grid file, faces, manifest, report and ledger entry
    app.button(key="revert").click().run()
    assert not app.exception, [e.value for e in app.exception]
    assert any(f"Reverted batch {batch}: 1 grid(s), 1 credit(s) back, {accepted} face(s)" in s.value
               for s in app.success), texts(app)
    assert not CreditLedger(root / "ledger.json").entries() and not (root / "manifest.parquet").exists()
    assert not [f for f in (root / "processed").rglob("*") if f.is_file()]
    assert not list((root / "report").glob("contact_sheet*"))
    assert "No extraction manifest yet" in texts(app) and "No contact sheet yet" in texts(app)


def test_synthetic_data_shows_the_installed_sd_faces(monkeypatch, app_config):
    app = open_page(monkeypatch, app_config, "synthetic.py")
    assert not app.exception, [e.value for e in app.exception]
    counts = frame_with(app, "total").set_index("dataset")
    labels = open_dataset("sd_faces", load_config(app_config).resolve("data")).labels
    assert counts.loc["sd_faces", "total"] == len(labels) == 476
    app.number_input(key="synthetic-per-class").set_value(2).run()
    shown = [img.caption for img in images(app)]
    present = [EMOTIONS[i] for i in sorted(set(labels))]
    assert len(shown) == 2 * len(present) and shown[:2] == ["angry_000.jpg", "angry_001.jpg"]  # 2 of each emotion
    assert [m.value for m in app.markdown if m.value.strip("*") in EMOTIONS] == [f"**{e}**" for e in present]


def test_empty_states_say_what_to_do(monkeypatch, tmp_path):
    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "config.yaml"
    config.write_text((REPO / "configs" / "config.yaml").read_text())
    body = texts(open_page(monkeypatch, config))
    assert "No usable model" in body and "No datasets" in body and "fer-core data install" in body
    for page, command in (("baseline_metrics.py", "fer-core evaluate"), ("confusion.py", "fer-core evaluate"),
                          ("runs.py", "fer-core train"), ("synthetic.py", "fer-core synth extract"),
                          ("upload.py", "Upload a photo"), ("cross_domain.py", "fer-core evaluate"),
                          ("saliency.py", "No usable model"), ("embeddings.py", "No usable model")):
        assert command in texts(open_page(monkeypatch, config, page)), page


def test_invalid_config_is_reported(monkeypatch, tmp_path):
    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "config.yaml"
    config.write_text("model:\n  input_size: huge\n")
    app = open_page(monkeypatch, config)
    assert any("'model.input_size'" in e.value for e in app.error)


def test_a_job_reads_progress_from_bars_and_from_sanity_lines(tmp_path):
    from dashboard.jobs import Job
    job = Job(tmp_path, ("fer-core", "sanity"), pid=0, started="")
    assert job.progress() is None
    (tmp_path / "log.txt").write_text("predict:  37%|###      | 37/100\rpredict:  64%|######   | 64/100\n")
    assert job.progress() == 0.64
    with (tmp_path / "log.txt").open("a") as log:   # fer-core sanity's line as a method starts
        log.write("sanity 3/4: occlusion on 32 faces (50% done)\n")
    assert job.progress() == 0.5 and job.log_tail(1) == "sanity 3/4: occlusion on 32 faces (50% done)"


def test_view_filters_keep_the_faces_asked_for_and_refuse_unknown_choices():
    from fer_core.errors import InvalidArgument
    from fer_core.views import class_rows, filter_faces
    # labels -1 (unlabelled), right, wrong, right; confidences 0.9, 0.2, 0.6, 0.5
    table = pd.DataFrame({"label": [-1, 2, 3, 4], "pred": [1, 2, 5, 4], "confidence": [0.9, 0.2, 0.6, 0.5]})
    assert filter_faces(table).tolist() == [0, 1, 2, 3]
    assert filter_faces(table, "correct", (0.3, 1.0)).tolist() == [3]
    assert filter_faces(table, "wrong").tolist() == [2]  # the unlabelled face is neither
    with pytest.raises(InvalidArgument, match=r"filter_faces\(\) argument 'correctness': .*got 'right'"):
        filter_faces(table, "right")
    with pytest.raises(InvalidArgument, match=r"argument 'confidence': .*got \(0.8, 0.2\)"):
        filter_faces(table, confidence=(0.8, 0.2))
    with pytest.raises(InvalidArgument, match=r"class_rows\(\) argument 'emotion': expected one of .*got 'happy'"):
        class_rows(None, "happy", 4)
