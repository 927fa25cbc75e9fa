"""Validated configuration: ``configs/config.yaml`` -> typed, frozen dataclasses.

Every key is checked on load: an unknown key, a value of the wrong type or a path that does
not exist is a :class:`~fer_core.errors.ConfigError` naming the key (``model.input_size``).
Relative paths resolve against the project root: the folder that holds ``configs/``.

Keys that nothing ever read were removed (:data:`REMOVED_KEYS`): a config that still sets one
to the value that was in effect anyway loads with a ``FutureWarning`` saying to delete it; any
other value is an error, since it was never applied.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Mapping

import yaml

from fer_core.errors import ConfigError, InvalidArgument

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "config.yaml"
#: Environment variables that override config keys.
ENV_CONFIG = "FER_CORE_CONFIG"
ENV_FACE_MODEL = "FER_CORE_FACE_MODEL"
ENV_WEIGHTS = "FER_CORE_WEIGHTS"
#: The BlazeFace face detectors shipped in ``fer_core/faces/models/`` (Apache-2.0, from the
#: mediapipe 0.10.21 wheel), by the names ``faces.mediapipe_model`` accepts besides a path.
_FACE_MODELS_DIR = Path(__file__).resolve().parent / "faces" / "models"
SHIPPED_FACE_MODELS = {"short_range": _FACE_MODELS_DIR / "face_detection_short_range.tflite",
                       "full_range": _FACE_MODELS_DIR / "face_detection_full_range_sparse.tflite"}
#: The shipped model used when ``faces.mediapipe_model`` is null: faces that fill a good part
#: of the image; ``full_range`` finds the smaller faces of group photos and grids.
DEFAULT_FACE_MODEL = "short_range"


@dataclass(frozen=True)
class ModelConfig:
    """Which network, at which input size, from which weights, on which device."""

    architecture: str = "tf_efficientnet_b0_ns"
    input_size: int = 224
    weights_path: Path | None = None  # must exist when set
    trust_pickle: bool = False  # allow loading pickled .pt files (runs code from the file)
    device: str = "auto"  # auto | cpu | cuda | cuda:N: where the configured model is loaded and run


@dataclass(frozen=True)
class DataConfig:
    """Where data lives and the synthetic grid geometry of the plan."""

    root: Path = Path("data")
    face_size: int = 128
    grid_layout: int = 6
    split_seed: int = 0
    val_fraction: float = 0.1


@dataclass(frozen=True)
class FacesConfig:
    """Face detection, alignment and cropping."""

    detector: Literal["auto", "mediapipe", "haar", "none"] = "auto"  # auto: mediapipe
    # a shipped model by name (short_range, full_range), else a BlazeFace .tflite path; null:
    # short_range. The env FER_CORE_FACE_MODEL overrides it.
    mediapipe_model: Path | None = None
    min_score: float = 0.5
    margin: float = 0.08  # border around the face box, as a fraction of its side (0.08: FER+'s own framing)
    align: bool = True  # rotate so the eyes are level
    max_faces: int = 20


@dataclass(frozen=True)
class InferenceConfig:
    """Batch inference settings."""

    batch_size: int = 32
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    backend: str = "torch"  # a name from fer_core.backends.INFERENCE_BACKENDS: torch | torch-channels-last | onnx


@dataclass(frozen=True)
class PathsConfig:
    """Output folders."""

    cache_dir: Path = Path("cache")
    runs_dir: Path = Path("runs")


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    faces: FacesConfig = field(default_factory=FacesConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    root: Path = PROJECT_ROOT  # not a YAML key: where relative paths resolve

    def resolve(self, path: Path | str) -> Path:
        """An absolute path: relative ones are taken from the project root."""
        path = Path(path).expanduser()
        return path if path.is_absolute() else self.root / path

    def face_model(self) -> Path:
        """The BlazeFace file ``faces.mediapipe_model`` stands for (see :func:`face_model_file`)."""
        return face_model_file(self.faces.mediapipe_model, self.root)

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-ready values (paths as strings), without ``root``."""
        def plain(value: Any) -> Any:
            if dataclasses.is_dataclass(value):
                return {f.name: plain(getattr(value, f.name)) for f in fields(value)
                        if not (value is self and f.name == "root")}
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, tuple):
                return list(value)
            return value
        return plain(self)


def face_model_file(value: Path | str | None, root: Path | None = None) -> Path:
    """The BlazeFace file a ``faces.mediapipe_model`` value stands for: a shipped model by name
    (:data:`SHIPPED_FACE_MODELS`; None is :data:`DEFAULT_FACE_MODEL`), else the path, a relative
    one taken from ``root`` (from the working directory when ``root`` is None)."""
    name = DEFAULT_FACE_MODEL if value is None else str(value)
    if name in SHIPPED_FACE_MODELS:
        return SHIPPED_FACE_MODELS[name]
    path = Path(value).expanduser()
    return path if root is None or path.is_absolute() else root / path


#: Keys whose value is a file that must exist when set.
_MUST_EXIST = {"model.weights_path"}
_POSITIVE = {"model.input_size", "data.face_size", "data.grid_layout", "inference.batch_size", "faces.max_faces"}
#: Keys removed because nothing read them: the value that was in effect whatever the config
#: said, and why (where the setting comes from instead).
REMOVED_KEYS: Mapping[str, tuple[Any, str]] = MappingProxyType({
    "model.num_classes": (8, "the classes come from the weights file: FerModel.emotions"),
    "data.grid_size": (1024, "nothing read it; the synthetic generator sizes its own grid images"),
    "inference.num_workers": (0, "nothing read it; predict, embed and explain read images ahead in 2 threads"),
    "preprocessing.mean": ([0.485, 0.456, 0.406], "normalisation comes from the weights file: FerModel.mean"),
    "preprocessing.std": ([0.229, 0.224, 0.225], "normalisation comes from the weights file: FerModel.std"),
    "preprocessing.interpolation": ("bilinear", "models resize bilinearly (area when shrinking): "
                                                "FerModel.preprocessing"),
})
#: Sections whose every key was removed.
_REMOVED_SECTIONS = {"preprocessing"}


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the type hint ``hint``; return it in the field's type."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(key, value, option)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {list(allowed)}")
        return value
    if origin is tuple:
        items = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(items):
            raise ConfigError(f"config key '{key}': expected a list of {len(items)} numbers, got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", v, t) for i, (v, t) in enumerate(zip(value, items)))
    if hint is Path:
        if not isinstance(value, (str, Path)) or not str(value):
            raise ConfigError(f"config key '{key}': expected a path (string), got {value!r}")
        return Path(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # a bug in this module


def _removed(key: str, value: Any) -> None:
    """Accept a removed key that holds the value that was in effect (a FutureWarning says to
    delete it); any other value was never applied: an error."""
    if key not in REMOVED_KEYS:
        raise ConfigError(f"unknown config key '{key}'; the section '{key.split('.')[0]}' was removed")
    in_effect, reason = REMOVED_KEYS[key]
    plain = list(value) if isinstance(value, tuple) else value
    if plain != in_effect:
        raise ConfigError(f"config key '{key}' was removed: it never had an effect, so your value {value!r} was "
                          f"never applied ({reason}). Delete the key")
    warnings.warn(f"config key '{key}' was removed: it never had an effect ({reason}). Delete it from your config",
                  FutureWarning, stacklevel=2)


def _without_removed(values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``values`` less the removed keys and sections (each checked by :func:`_removed`)."""
    kept = dict(values)
    for name in list(kept):
        key = f"{prefix}{name}"
        if key in _REMOVED_SECTIONS:
            section = kept.pop(name) or {}
            if not isinstance(section, Mapping):
                raise ConfigError(f"config key '{key}': expected a mapping, got {section!r}")
            for inner, value in section.items():
                _removed(f"{key}.{inner}", value)
        elif key in REMOVED_KEYS:
            _removed(key, kept.pop(name))
    return kept


def _build(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"config key '{prefix.rstrip('.') or '<top>'}': expected a mapping, got {values!r}")
    values = _without_removed(values, prefix)
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls) if not (cls is Config and f.name == "root")}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}'; known keys here: {sorted(known)}")
    kwargs = {}
    for name in known & set(values):
        key, hint = f"{prefix}{name}", hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, values[name] or {}, f"{key}.")
        else:
            kwargs[name] = _coerce(key, values[name], hint)
    return cls(**kwargs)


def _validate(config: Config) -> None:
    for section in fields(config):
        if section.name == "root":
            continue
        for item in fields(getattr(config, section.name)):
            key, value = f"{section.name}.{item.name}", getattr(getattr(config, section.name), item.name)
            if key in _POSITIVE and value <= 0:
                raise ConfigError(f"config key '{key}': must be positive, got {value}")
            if key in _MUST_EXIST and value is not None and not config.resolve(value).is_file():
                raise ConfigError(f"config key '{key}': file not found: {config.resolve(value)}")
    if not 0.0 <= config.data.val_fraction < 1.0:
        raise ConfigError(f"config key 'data.val_fraction': must be in [0, 1), got {config.data.val_fraction}")
    if config.faces.mediapipe_model is not None and not config.face_model().is_file():
        raise ConfigError(f"config key 'faces.mediapipe_model': file not found: {config.face_model()}; expected a "
                          f"BlazeFace .tflite path or one of the shipped models {sorted(SHIPPED_FACE_MODELS)}")
    if config.faces.margin < 0:
        raise ConfigError(f"config key 'faces.margin': must be >= 0, got {config.faces.margin}")
    if not 0.0 <= config.faces.min_score <= 1.0:
        raise ConfigError(f"config key 'faces.min_score': must be in [0, 1], got {config.faces.min_score}")
    from fer_core.backends import INFERENCE_BACKENDS, resolve_device  # the registry is the one list (imports torch)
    if config.inference.backend not in INFERENCE_BACKENDS:
        raise ConfigError(f"config key 'inference.backend': {config.inference.backend!r} is not one of "
                          f"{sorted(INFERENCE_BACKENDS)}")
    try:
        resolve_device(config.model.device)
    except InvalidArgument as exc:
        raise ConfigError(f"config key 'model.device': {exc}") from None


def config_from_dict(values: Mapping[str, Any] | None = None, root: Path | str = PROJECT_ROOT) -> Config:
    """Build and validate a :class:`Config` from nested plain values."""
    config = _build(Config, values or {}, "")
    config = dataclasses.replace(config, root=Path(root).resolve())
    config = _apply_env(config)
    _validate(config)
    return config


def _apply_env(config: Config) -> Config:
    face_model = os.environ.get(ENV_FACE_MODEL)
    if face_model:
        config = dataclasses.replace(config, faces=dataclasses.replace(config.faces, mediapipe_model=Path(face_model)))
    weights = os.environ.get(ENV_WEIGHTS)
    if weights:
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, weights_path=Path(weights)))
    return config


def load_config(path: Path | str | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Load, merge ``overrides`` (dotted keys, e.g. ``{"model.input_size": 64}``) and validate.

    ``path`` defaults to ``$FER_CORE_CONFIG`` or the project's ``configs/config.yaml``.
    """
    path = Path(path or os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections, got {type(values).__name__}")
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if not key:
            raise ConfigError(f"override '{dotted}': expected 'section.key=value'")
        values.setdefault(section, {}) or values.__setitem__(section, {})
        if not isinstance(values[section], dict):
            raise ConfigError(f"config key '{section}': expected a mapping")
        values[section][key] = value
    root = path.resolve().parent.parent if path.resolve().parent.name == "configs" else path.resolve().parent
    return config_from_dict(values, root=root)


def parse_override(text: str) -> tuple[str, Any]:
    """``"model.input_size=64"`` -> ``("model.input_size", 64)`` (value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or "." not in key:
        raise ConfigError(f"override {text!r}: expected section.key=value, e.g. model.input_size=64")
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({exc})") from None
