"""The dashboard with Streamlit's AppTest: every page, with data and a trained model, and empty."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from fer_core.config import load_config
from fer_core.data import open_dataset
from fer_core.models import load_model
from fer_core.workflows import evaluate_model

REPO = Path(__file__).resolve().parent.parent
HOME = str(REPO / "dashboard" / "Home.py")
PAGES = REPO / "pages"


def write_config(project: Path, name: str, **model_keys: str) -> Path:
    text = (REPO / "configs" / "config.yaml").read_text()
    for key, value in model_keys.items():
        text = text.replace(f"  {key}: null", f"  {key}: {value}")
    path = project / "configs" / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def app_config(project, tiny_model, face_model_path):
    path = write_config(project, "dashboard.yaml", weights_path=str(tiny_model), mediapipe_model=str(face_model_path))
    config = load_config(path)
    faces = open_dataset("fer2013:test", config.resolve(config.data.root))
    subset = faces.subset(np.arange(0, len(faces), 20))
    for name in ("dash-eval-first", "dash-eval"):
        evaluate_model(config, load_model(tiny_model), subset, name=name, n_bootstrap=100, progress=False)
    return path


def open_page(monkeypatch, config_path: Path, page: str | None = None) -> AppTest:
    monkeypatch.setenv("FER_CORE_CONFIG", str(config_path))
    app = AppTest.from_file(HOME, default_timeout=120)
    app.run()
    if page:
        app.switch_page(str(PAGES / page))
        app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def texts(app: AppTest) -> str:
    parts = [m.value for m in app.markdown] + [i.value for i in app.info] + [w.value for w in app.warning]
    parts += [e.value for e in app.error] + [c.value for c in app.code] + [c.value for c in app.caption]
    return "\n".join(map(str, parts))


def sd_face_bytes(synthetic_root: Path) -> bytes:
    return (synthetic_root / "happy" / "happy_001.jpg").read_bytes()


def test_home_lists_model_datasets_and_questions(monkeypatch, app_config, tiny_model):
    app = open_page(monkeypatch, app_config)
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Model"] == "mobilenetv3_small_050"
    assert int(metrics["Datasets"]) >= 5  # fer2013 train/test, ferplus train/valid/test, sd_faces
    assert int(metrics["Evaluation runs"]) >= 1
    body = texts(app)
    assert "Research questions" in [s.value for s in app.subheader]
    assert "synthetic" in body and load_model(tiny_model).fingerprint in body


def test_upload_detects_and_predicts_a_real_sd_face(monkeypatch, app_config, synthetic_root):
    app = open_page(monkeypatch, app_config, "upload.py")
    assert "mediapipe" in texts(app)
    app.file_uploader[0].set_value(("happy_001.jpg", sd_face_bytes(synthetic_root), "image/jpeg")).run()
    assert not app.exception, [e.value for e in app.exception]
    captions = [image.proto.imgs[0].caption for image in app.get("image")]
    assert captions[0] == "1 face(s)" and captions[1].startswith("face 1 (aligned)")
    charts = app.get("plotly_chart")
    assert len(charts) == 1
    figure = json.loads(charts[0].proto.spec)
    probabilities = figure["data"][0]["x"]
    assert len(probabilities) == 8 and abs(sum(probabilities) - 1) < 1e-4
    assert len(app.get("download_button")) == 1


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


def test_baseline_metrics_shows_the_run(monkeypatch, app_config, project):
    app = open_page(monkeypatch, app_config, "baseline_metrics.py")
    metrics = json.loads((project / "runs" / "dash-eval" / "metrics.json").read_text())
    table = app.dataframe[0].value
    accuracy = table.loc[table["metric"] == "accuracy"].iloc[0]
    assert accuracy["value"] == pytest.approx(metrics["accuracy"])
    assert accuracy["95% CI low"] == pytest.approx(metrics["ci95"]["accuracy"][0])
    assert len(app.get("plotly_chart")) == 2  # per-class bars and the confusion matrix
    assert any(f"{metrics['valence']['accuracy']:.2%}" in m.value for m in app.markdown)
    app.toggle[0].set_value(False).run()
    assert not app.exception
    # The two runs of the same model on the same faces: McNemar finds no difference.
    assert app.selectbox[1].value == "dash-eval-first"
    assert any("McNemar's exact test on 359 shared faces: p = 1 " in m.value for m in app.markdown)


def test_empty_states_say_what_to_do(monkeypatch, tmp_path):
    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "config.yaml"
    config.write_text((REPO / "configs" / "config.yaml").read_text())
    home = open_page(monkeypatch, config)
    body = texts(home)
    assert "No usable model" in body and "No datasets" in body and "fer-core data install" in body
    metrics_page = open_page(monkeypatch, config, "baseline_metrics.py")
    assert "fer-core evaluate" in texts(metrics_page)
    upload = open_page(monkeypatch, config, "upload.py")
    assert "Upload a photo" in texts(upload)


def test_invalid_config_is_reported(monkeypatch, tmp_path):
    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "config.yaml"
    config.write_text("model:\n  input_size: huge\n")
    app = open_page(monkeypatch, config)
    assert any("'model.input_size'" in e.value for e in app.error)
