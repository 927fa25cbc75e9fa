"""Config validation: every bad value is an error that names its key."""

from pathlib import Path

import pytest

from fer_core.config import DEFAULT_CONFIG, REMOVED_KEYS, config_from_dict, load_config, parse_override
from fer_core.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    configs = tmp_path / "configs"
    configs.mkdir(exist_ok=True)
    path = configs / "config.yaml"
    path.write_text(text)
    return path


def test_shipped_config_loads_with_the_plan_keys():
    config = load_config(DEFAULT_CONFIG)
    assert (config.model.input_size, config.model.device) == (224, "auto")
    assert (config.data.face_size, config.data.grid_layout) == (128, 6)
    assert config.root == DEFAULT_CONFIG.parent.parent
    assert not {key.split(".")[0] for key in REMOVED_KEYS} - {"model", "data", "inference", "preprocessing"}
    assert "preprocessing" not in config.to_dict() and "num_classes" not in config.to_dict()["model"]


def test_removed_keys_warn_at_the_value_in_effect_and_fail_at_any_other(tmp_path):
    # a config written before the keys went (the old shipped file) still loads, told to delete them
    old = ("model:\n  num_classes: 8\ndata:\n  grid_size: 1024\ninference:\n  num_workers: 0\n"
           "preprocessing:\n  mean: [0.485, 0.456, 0.406]\n  std: [0.229, 0.224, 0.225]\n  interpolation: bilinear\n")
    with pytest.warns(FutureWarning) as caught:
        config = load_config(write(tmp_path, old))
    assert sorted(str(w.message).split("'")[1] for w in caught) == sorted(REMOVED_KEYS)
    assert config == load_config(write(tmp_path, "model: {}\n"))
    # another value was never applied: an error that says so
    with pytest.raises(ConfigError, match=r"'preprocessing.std' was removed.*\[0.5, 0.5, 0.5\] was never applied"):
        load_config(write(tmp_path, "preprocessing:\n  std: [0.5, 0.5, 0.5]\n"))
    with pytest.raises(ConfigError, match="unknown config key 'preprocessing.size'"):
        load_config(write(tmp_path, "preprocessing:\n  size: 3\n"))


@pytest.mark.parametrize("text, key", [
    ("model:\n  input_sise: 224\n", "model.input_sise"),
    ("modle:\n  input_size: 224\n", "modle"),
    ("model:\n  input_size: big\n", "model.input_size"),
    ("model:\n  input_size: 22.5\n", "model.input_size"),
    ("model:\n  input_size: -3\n", "model.input_size"),
    ("model:\n  trust_pickle: 'yes'\n", "model.trust_pickle"),
    ("model:\n  num_classes: 7\n", "model.num_classes"),
    ("model:\n  device: gpu\n", "model.device"),
    ("inference:\n  num_workers: 4\n", "inference.num_workers"),
    ("model:\n  weights_path: weights/nothing_here.safetensors\n", "model.weights_path"),
    ("faces:\n  detector: dlib\n", "faces.detector"),
    ("faces:\n  mediapipe_model: /no/such/model.tflite\n", "faces.mediapipe_model"),
    ("faces:\n  max_faces: 0\n", "faces.max_faces"),
    ("faces:\n  min_score: 1.5\n", "faces.min_score"),
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
