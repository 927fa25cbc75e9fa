"""Inference backends: every registered backend gives eager PyTorch's logits and features on
real faces, through predict, embed, the recogniser (upload) and the CLI; bad names and a
missing ONNX Runtime are clear errors; ``fer-core export --onnx`` writes a graph that runs."""

import dataclasses
import sys

import numpy as np
import pandas as pd
import pytest

from fer_core.backends import INFERENCE_BACKENDS, InferenceOptions, fold_pads_into_convs, load_backend, onnx_bytes
from fer_core.cache import ResultCache
from fer_core.cli import main
from fer_core.config import config_from_dict
from fer_core.data import FerPlusDataset
from fer_core.errors import ConfigError, InvalidArgument
from fer_core.inference import embed_dataset, predict_dataset
from fer_core.models import EmotionRecognizer, load_model
from fer_core.workflows import SHIPPED_WEIGHTS
from tests.conftest import REPO

WEIGHTS = REPO / SHIPPED_WEIGHTS
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def model():
    return load_model(WEIGHTS)


@pytest.fixture(scope="module")
def faces(ferplus_root):
    test = FerPlusDataset(ferplus_root, "test")
    return test.subset(np.arange(0, len(test), len(test) // 48)[:48])


@pytest.mark.parametrize("name", sorted(INFERENCE_BACKENDS))
def test_backend_matches_eager_on_real_faces(model, faces, name):
    batch = model.preprocessing.batch([faces.read(sample) for sample in faces])
    eager_logits, eager_features = load_backend(model, "torch").forward(batch)
    logits, features = load_backend(model, name).forward(batch)
    assert np.abs(logits.numpy() - eager_logits.numpy()).max() <= TOLERANCE
    assert np.abs(features.numpy() - eager_features.numpy()).max() <= TOLERANCE
    # the faces are real and the model trained: the predictions are not one constant class
    assert len(set(logits.numpy().argmax(1))) >= 3
    assert load_backend(model, name) is load_backend(model, name)  # built once per model


def test_onnx_export_moves_the_same_pads_into_the_convolutions(model):
    import onnx

    def pads(graph: bytes) -> int:
        return sum(node.op_type == "Pad" for node in onnx.load_from_string(graph).graph.node)
    plain = onnx_bytes(model)
    # B0's five stride-2 'same' convolutions pad unevenly; exported as constants, then folded
    assert pads(plain) == 5 and pads(fold_pads_into_convs(plain)) == 0


def test_predict_and_embed_through_onnx_match_eager(model, faces, tmp_path):
    eager_options = InferenceOptions(batch_size=16, progress=False)
    onnx_options = InferenceOptions(batch_size=16, backend="onnx", progress=False)
    eager = predict_dataset(model, faces, tmp_path / "torch", options=eager_options)
    fast = predict_dataset(model, faces, tmp_path / "onnx", options=onnx_options)
    probs = [c for c in eager.columns if c.startswith("prob_")]
    assert (fast["pred"] == eager["pred"]).all()
    assert np.abs(fast[probs].to_numpy() - eager[probs].to_numpy()).max() <= TOLERANCE
    with ResultCache(tmp_path / "cache.sqlite") as cache:
        keys, features = embed_dataset(model, faces, cache, options=onnx_options)
    eager_keys, eager_features = embed_dataset(model, faces, None, options=eager_options)
    assert keys == eager_keys and np.abs(features - eager_features).max() <= TOLERANCE


def test_recognizer_serves_upload_through_the_backend(model, faces):
    crops = [faces.read(sample) for sample in faces]
    labels, scores = EmotionRecognizer(model, backend="onnx").predict_emotions(crops)
    eager_labels, eager_scores = EmotionRecognizer(model).predict_emotions(crops)
    assert labels == eager_labels and np.abs(scores - eager_scores).max() <= TOLERANCE
    features = EmotionRecognizer(model, backend="torch-channels-last").extract_features(crops[:5])
    assert np.abs(features - EmotionRecognizer(model).extract_features(crops[:5])).max() <= TOLERANCE


def test_unknown_backend_is_a_config_error_or_an_invalid_argument(model):
    with pytest.raises(ConfigError, match="inference.backend.*'tensorrt'.*onnx"):
        config_from_dict({"inference": {"backend": "tensorrt"}})
    with pytest.raises(InvalidArgument, match=r"load_backend\(\) argument 'name': expected one of \['onnx', .*\], "
                                              r"got 'tensorrt'"):
        load_backend(model, "tensorrt")
    with pytest.raises(InvalidArgument, match=r"EmotionRecognizer\(\) argument 'backend': .* got 'ONNX'"):
        EmotionRecognizer(model, backend="ONNX")
    with pytest.warns(DeprecationWarning, match="renamed INFERENCE_BACKENDS"):
        from fer_core.backends import BACKENDS
    assert BACKENDS is INFERENCE_BACKENDS
    assert config_from_dict({"inference": {"backend": "onnx"}}).inference.backend == "onnx"


def test_missing_onnxruntime_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    with pytest.raises(ConfigError, match="pip install onnxruntime"):
        load_backend(load_model(WEIGHTS), "onnx")  # a fresh model: nothing loaded yet


def test_cli_predict_uses_the_configured_backend_and_exports_onnx(project, tmp_path, model):
    import onnxruntime

    config_file = str(project / "configs" / "config.yaml")
    tables = {}
    for name in ("torch", "onnx"):
        out = tmp_path / name
        assert main(["--config", config_file, "--set", f"inference.backend={name}", "predict",
                     "--model", str(WEIGHTS), "--dataset", "ferplus:test", "--limit", "40", "--out", str(out)]) == 0
        tables[name] = pd.read_parquet(out / "predictions.parquet")
    assert (tables["onnx"]["pred"] == tables["torch"]["pred"]).all()
    assert main(["--config", config_file, "export", str(WEIGHTS), "--out", str(tmp_path / "b0"), "--onnx"]) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "b0.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["fingerprint"] == model.fingerprint
    test = FerPlusDataset(project / "data" / "real" / "ferplus", "test")
    batch = model.preprocessing.batch([test.read(test[i]) for i in range(0, 400, 20)])
    logits, features = session.run(["logits", "features"], {"input": batch.numpy()})
    eager_logits, eager_features = load_backend(model, "torch").forward(batch)
    assert np.abs(logits - eager_logits.numpy()).max() <= TOLERANCE
    assert np.abs(features - eager_features.numpy()).max() <= TOLERANCE


def test_inference_threads_reach_torch_and_onnx_runtime(faces):
    import torch

    from fer_core.workflows import load_configured_model

    before = torch.get_num_threads()
    wanted = before + 1
    batch = load_model(WEIGHTS).preprocessing.batch([faces.read(sample) for sample in faces])
    try:
        config = config_from_dict({"inference": {"threads": wanted, "backend": "onnx"},
                                   "model": {"weights_path": str(WEIGHTS)}})
        model = load_configured_model(config)
        assert torch.get_num_threads() == wanted
        session = load_backend(model, config.inference.backend).session
        assert session.get_session_options().intra_op_num_threads == wanted
        logits, _ = load_backend(model, config.inference.backend).forward(batch)
        eager_logits, _ = load_backend(model, "torch").forward(batch)
        assert np.abs(logits.numpy() - eager_logits.numpy()).max() <= TOLERANCE  # the same outputs, more threads
        torch.set_num_threads(before)
        unchanged = load_configured_model(dataclasses.replace(config, inference=dataclasses.replace(
            config.inference, threads=0)))
        assert torch.get_num_threads() == before  # 0 keeps the library default
        assert load_backend(unchanged, "onnx").session.get_session_options().intra_op_num_threads == before
        with pytest.raises(ConfigError, match="inference.threads"):
            load_configured_model(dataclasses.replace(config, inference=dataclasses.replace(
                config.inference, threads=-1)))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name", sorted(INFERENCE_BACKENDS))
def test_test_time_flip_averages_each_face_with_its_mirror(model, faces, name):
    """With test-time flip every backend gives the mean of the plain model's logits of the face
    and of its mirror image (the head is linear, so averaging the pooled features is exact up to
    float32 rounding), under a fingerprint of its own; saliency refuses the averaged model."""
    from fer_core.explain import explain
    flipped = model.with_test_time_flip()
    batch = model.preprocessing.batch([faces.read(sample) for sample in faces])
    plain = load_backend(model, "torch")
    expected = (plain.logits(batch) + plain.logits(batch.flip(-1))) / 2
    logits = load_backend(flipped, name).logits(batch)
    assert np.abs(logits.numpy() - expected.numpy()).max() <= TOLERANCE
    assert np.abs(flipped.logits(batch).detach().numpy() - expected.numpy()).max() <= TOLERANCE
    # a face and its mirror are read differently by the plain model, so the mean is not either view
    assert np.abs(plain.logits(batch).numpy() - expected.numpy()).max() > 100 * TOLERANCE
    assert flipped.fingerprint != model.fingerprint and not model.test_time_flip
    with pytest.raises(InvalidArgument, match="mirror image"):
        explain(flipped, batch[:2], "saliency")


def test_evaluate_records_test_time_flip(project, capsys):
    assert main(["--config", str(project / "configs" / "config.yaml"), "evaluate", "--model", str(WEIGHTS),
                 "--dataset", "ferplus:test", "--limit", "40",
                 "--name", "flip", "--test-time-flip", "--bootstrap", "10"]) == 0
    assert "with test-time flip" in capsys.readouterr().out
    from fer_core.runs import Run
    record = Run.load(project / "runs" / "flip").info["model"]
    assert record["test_time_flip"] is True and record["fingerprint"] != load_model(WEIGHTS).fingerprint
