"""Config validation: every bad value is an error that names its key."""

from pathlib import Path

import pytest

from fer_core.config import DEFAULT_CONFIG, config_from_dict, load_config, parse_override
from fer_core.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    configs = tmp_path / "configs"
    configs.mkdir(exist_ok=True)
    path = configs / "config.yaml"
    path.write_text(text)
    return path


def test_shipped_config_loads_with_the_plan_keys():
    config = load_config(DEFAULT_CONFIG)
    assert (config.model.input_size, config.model.num_classes) == (224, 8)
    assert (config.data.grid_size, config.data.face_size, config.data.grid_layout) == (1024, 128, 6)
    assert config.root == DEFAULT_CONFIG.parent.parent


@pytest.mark.parametrize("text, key", [
    ("model:\n  input_sise: 224\n", "model.input_sise"),
    ("modle:\n  input_size: 224\n", "modle"),
    ("model:\n  input_size: big\n", "model.input_size"),
    ("model:\n  input_size: 22.5\n", "model.input_size"),
    ("model:\n  input_size: -3\n", "model.input_size"),
    ("model:\n  trust_pickle: 'yes'\n", "model.trust_pickle"),
    ("model:\n  num_classes: 7\n", "model.num_classes"),
    ("model:\n  weights_path: weights/nothing_here.safetensors\n", "model.weights_path"),
    ("faces:\n  detector: dlib\n", "faces.detector"),
    ("faces:\n  mediapipe_model: /no/such/model.tflite\n", "faces.mediapipe_model"),
    ("preprocessing:\n  mean: [0.5, 0.5]\n", "preprocessing.mean"),
    ("data:\n  val_fraction: 1.5\n", "data.val_fraction"),
    ("data: 12\n", "data"),
])
def test_bad_values_name_their_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=rf"'{key}'"):
        load_config(write(tmp_path, text))


def test_missing_weights_file_message_gives_the_resolved_path(tmp_path):
    with pytest.raises(ConfigError, match=str(tmp_path / "weights" / "x.safetensors")):
        load_config(write(tmp_path, "model:\n  weights_path: weights/x.safetensors\n"))


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_relative_paths_resolve_against_project_root_and_existing_files_pass(tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "m.safetensors").write_bytes(b"x")
    config = load_config(write(tmp_path, "model:\n  weights_path: weights/m.safetensors\n"))
    assert config.resolve(config.model.weights_path) == tmp_path / "weights" / "m.safetensors"


def test_overrides_and_env(tmp_path, monkeypatch):
    config = load_config(DEFAULT_CONFIG, dict([parse_override("model.input_size=64"),
                                               parse_override("faces.detector=none")]))
    assert config.model.input_size == 64 and config.faces.detector == "none"
    with pytest.raises(ConfigError, match="'inference.batch_sise'"):
        load_config(DEFAULT_CONFIG, {"inference.batch_sise": 4})
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_override("batch_size=4")
    model = tmp_path / "face.tflite"
    model.write_bytes(b"x")
    monkeypatch.setenv("FER_CORE_FACE_MODEL", str(model))
    assert load_config(DEFAULT_CONFIG).faces.mediapipe_model == model


def test_round_trip_through_plain_values():
    config = load_config(DEFAULT_CONFIG)
    assert config_from_dict(config.to_dict(), root=config.root) == config
