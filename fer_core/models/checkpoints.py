"""Weights files in every format fer_core reads, told apart by their content.

=================  ===========================================================================
format             what it is
=================  ===========================================================================
``fer_core``       ours: ``<stem>.safetensors`` (the state dict, float32 or float16) beside
                   ``<stem>.json`` (architecture, emotions in order, preprocessing, provenance)
``state-dict``     ``torch.save(model.state_dict())``, e.g. HSEmotion's VGGFace2 backbone
                   ``state_vggface2_enet0_new.pt`` (no classifier: a chance-level head is added)
``pickled-model``  ``torch.save(model)``, e.g. HSEmotion's ``enet_b0_8_best_vgaf.pt``; runs code
                   from the file, so it needs ``trust_pickle=True``; old timm class paths are
                   remapped (:mod:`fer_core.models.legacy`)
=================  ===========================================================================

Every loader ends the same way: the weights are checked key by key against a freshly built
registered architecture and loaded strictly into it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping

import safetensors.torch
import torch

from fer_core import __version__
from fer_core.errors import ModelLoadError, UntrustedPickleError
from fer_core.labels import EMOTION_INDEX, EMOTIONS
from fer_core.models import legacy
from fer_core.models.factory import (ARCHITECTURES, FerModel, architecture_spec, classifier_name, create_model,
                                     expected_shapes)
from fer_core.validation import Options, validate_params

FORMAT_VERSION = 1
#: Class order of HSEmotion heads by their number of outputs (the 7-class models drop Contempt).
HSEMOTION_CLASS_ORDERS: Mapping[int, tuple[str, ...]] = {
    8: EMOTIONS,
    7: tuple(e for e in EMOTIONS if e != "Contempt"),
}
#: Dtypes :func:`save_model` writes.
SAVE_DTYPES = (torch.float32, torch.float16)
_SHOWN_MISMATCHES = 6


@dataclass(frozen=True)
class LoadOptions:
    """What the caller of :func:`load_model` asked for."""

    architecture: str | None
    trust_pickle: bool
    num_classes: int


class FileProbe:
    """What a file's bytes say about its format, read without unpickling anything."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with path.open("rb") as f:
            self.head = f.read(16)

    @property
    def is_safetensors(self) -> bool:
        """An 8-byte little-endian header length, then a JSON header that fits in the file."""
        size = int.from_bytes(self.head[:8], "little")
        return len(self.head) > 8 and self.head[8:9] == b"{" and 8 + size <= self.path.stat().st_size

    @property
    def is_json(self) -> bool:
        return self.head.lstrip()[:1] == b"{"

    @cached_property
    def torch_globals(self) -> list[str] | None:
        """For a ``torch.save`` zip archive, the globals its pickle names beyond tensors and
        plain containers (empty for a state dict); None for any other file."""
        if self.head[:4] != b"PK\x03\x04" or not zipfile.is_zipfile(self.path):
            return None
        try:
            with zipfile.ZipFile(self.path) as archive:
                if not any(name.endswith("data.pkl") for name in archive.namelist()):
                    return None
            return torch.serialization.get_unsafe_globals_in_checkpoint(self.path)
        except Exception as exc:  # a damaged archive: zipfile or torch says why
            raise ModelLoadError(f"{self.path}: damaged torch archive ({exc})") from exc


@dataclass(frozen=True)
class CheckpointFormat:
    """A weights format: how to recognise it from a :class:`FileProbe`, and how to load it."""

    name: str
    description: str
    matches: Callable[[FileProbe], bool]
    load: Callable[[Path, FileProbe, LoadOptions], FerModel]


# --- fitting weights to an architecture ------------------------------------------------------

@dataclass(frozen=True)
class _Fit:
    """``state`` renamed for ``architecture``, how many classes its head has, and what still differs."""

    architecture: str
    state: dict[str, torch.Tensor]
    num_classes: int
    head_trained: bool
    mismatches: list[str]


def _collapse_sequential_head(state: dict[str, torch.Tensor], head: str) -> dict[str, torch.Tensor]:
    """``classifier.1.weight`` -> ``classifier.weight`` when the head was a Sequential holding one Linear."""
    pattern = re.compile(rf"^{re.escape(head)}\.(\d+)\.(weight|bias)$")
    indices = {m.group(1) for m in map(pattern.match, state) if m}
    if len(indices) != 1:
        return state
    return {(f"{head}.{m.group(2)}" if (m := pattern.match(key)) else key): value for key, value in state.items()}


def _fit(state: dict[str, torch.Tensor], architecture: str, headless_classes: int) -> _Fit:
    head = classifier_name(architecture)
    state = _collapse_sequential_head(state, head)
    head_weight = state.get(f"{head}.weight")
    head_trained = head_weight is not None
    num_classes = head_weight.shape[0] if head_trained else headless_classes
    expected = dict(expected_shapes(architecture, num_classes))
    if not head_trained:
        expected = {k: v for k, v in expected.items() if not k.startswith(f"{head}.")}
    mismatches = [  # in the network's own order, then what the network does not have
        f"missing {k}" if k not in state else f"{k}: file {tuple(state[k].shape)} vs expected {shape}"
        for k, shape in expected.items() if k not in state or tuple(state[k].shape) != shape
    ] + [f"unexpected {k}" for k in state if k not in expected]
    return _Fit(architecture, state, num_classes, head_trained, mismatches)


def _resolve_fit(state: dict[str, torch.Tensor], options: LoadOptions, source: Path) -> _Fit:
    """The registered architecture ``state`` fits: the one asked for, else the one its shapes match."""
    if options.architecture is not None:
        architecture_spec(options.architecture)
        fit = _fit(state, options.architecture, options.num_classes)
        if not fit.mismatches:
            return fit
        fitting = [n for n in ARCHITECTURES if n != options.architecture
                   and not _fit(state, n, options.num_classes).mismatches]
        hint = f"; they fit {fitting[0]!r}" if fitting else ""
        raise ModelLoadError(
            f"{source}: the weights do not fit the expected architecture {options.architecture!r}: "
            f"{len(fit.mismatches)} keys differ, e.g. {fit.mismatches[:_SHOWN_MISMATCHES]}{hint}"
        )
    fits = []
    for name in ARCHITECTURES:
        fit = _fit(state, name, options.num_classes)
        if not fit.mismatches:
            return fit
        fits.append(fit)
    report = "; ".join(f"{f.architecture}: {len(f.mismatches)} keys differ, e.g. {f.mismatches[:3]}" for f in fits)
    raise ModelLoadError(f"{source}: the weights fit no registered architecture ({report})")


def _emotions_of_head(num_classes: int, source: Path) -> tuple[str, ...]:
    order = HSEMOTION_CLASS_ORDERS.get(num_classes)
    if order is None:
        raise ModelLoadError(
            f"{source}: a {num_classes}-way classifier has no known class order; "
            f"expected {sorted(HSEMOTION_CLASS_ORDERS)} outputs (HSEmotion's orders)"
        )
    return order


def _build(fit: _Fit) -> torch.nn.Module:
    """A fresh network with ``fit.state`` loaded strictly (a zero, chance-level head if it had none)."""
    module = create_model(fit.architecture, fit.num_classes)
    state = fit.state
    if not fit.head_trained:
        head = classifier_name(fit.architecture)
        state = {**state, **{f"{head}.{k}": v for k, v in module.get_classifier().state_dict().items()}}
    module.load_state_dict(state, strict=True)
    return module


def _model_from_state(state: dict[str, torch.Tensor], options: LoadOptions, source: Path,
                      provenance: dict[str, Any]) -> tuple[FerModel, _Fit]:
    fit = _resolve_fit(state, options, source)
    emotions = _emotions_of_head(fit.num_classes, source)
    model = FerModel(
        _build(fit), fit.architecture, emotions, architecture_spec(fit.architecture).input_size,
        provenance={**provenance, "source": str(source), "head_trained": fit.head_trained},
    )
    return model, fit


# --- the formats -----------------------------------------------------------------------------

def _sidecar_pair(path: Path) -> tuple[Path, Path]:
    weights, sidecar = path.with_suffix(".safetensors"), path.with_suffix(".json")
    for part in (weights, sidecar):
        if not part.is_file():
            raise ModelLoadError(
                f"{path}: a fer_core checkpoint is the pair {weights.name} + {sidecar.name}, and {part} is missing"
            )
    return weights, sidecar


def _file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_metadata(sidecar: Path) -> dict[str, Any]:
    """The sidecar's metadata, every key checked."""
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{sidecar}: not valid JSON ({exc})") from exc

    def fail(key: str, expected: str) -> ModelLoadError:
        found = meta.get(key, "<missing>") if isinstance(meta, dict) else meta
        return ModelLoadError(f"{sidecar}: key {key!r} must be {expected}, got {found!r}")

    if not isinstance(meta, dict):
        raise fail("<top level>", "a JSON object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise fail("format_version", f"{FORMAT_VERSION} (this fer_core reads version {FORMAT_VERSION})")
    if meta.get("architecture") not in ARCHITECTURES:
        raise fail("architecture", f"one of {sorted(ARCHITECTURES)}")
    emotions = meta.get("emotions")
    if (not isinstance(emotions, list) or not emotions or len(set(emotions)) != len(emotions)
            or any(e not in EMOTION_INDEX for e in emotions)):
        raise fail("emotions", f"a list of distinct names from {list(EMOTIONS)}")
    size = meta.get("input_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise fail("input_size", "an integer >= 8")
    for key in ("mean", "std"):
        values = meta.get(key)
        if (not isinstance(values, list) or len(values) != 3
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
                or (key == "std" and min(values) <= 0)):
            raise fail(key, "3 finite numbers (RGB)" + (", all > 0" if key == "std" else ""))
    if not isinstance(meta.get("grayscale", False), bool):
        raise fail("grayscale", "true or false (optional; default false)")
    if not isinstance(meta.get("provenance"), dict):
        raise fail("provenance", "an object")
    if not isinstance(meta.get("weights_sha256"), str):
        raise fail("weights_sha256", "the sha256 of the .safetensors file")
    return meta


def _load_fer_checkpoint(path: Path, probe: FileProbe, options: LoadOptions) -> FerModel:
    weights, sidecar = _sidecar_pair(path)
    meta = _read_metadata(sidecar)
    if _file_sha256(weights) != meta["weights_sha256"]:
        raise ModelLoadError(f"{sidecar} describes other weights than {weights} (sha256 differs): save the pair again")
    if options.architecture not in (None, meta["architecture"]):
        raise ModelLoadError(
            f"{weights}: a {meta['architecture']!r} checkpoint, but architecture {options.architecture!r} was expected"
        )
    try:
        state = safetensors.torch.load_file(weights)
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise ModelLoadError(f"{weights}: not a readable safetensors file ({exc})") from exc
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    fit = _resolve_fit(state, LoadOptions(meta["architecture"], False, len(meta["emotions"])), weights)
    if not fit.head_trained or fit.num_classes != len(meta["emotions"]):
        raise ModelLoadError(f"{weights}: the classifier does not have the {len(meta['emotions'])} outputs "
                             f"{sidecar.name} lists")
    return FerModel(
        _build(fit), meta["architecture"], tuple(meta["emotions"]), meta["input_size"],
        tuple(meta["mean"]), tuple(meta["std"]),
        provenance={**meta["provenance"], "format": "fer_core", "source": str(weights),
                    "saved_dtype": meta.get("dtype", "float32")},
        grayscale=meta.get("grayscale", False),
    )


def _load_state_dict(path: Path, probe: FileProbe, options: LoadOptions) -> FerModel:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged archives
        raise ModelLoadError(f"{path}: cannot read the state dict ({exc})") from exc
    if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ModelLoadError(f"{path}: expected a state dict (a mapping of names to tensors), "
                             f"got {type(state).__name__}")
    model, _ = _model_from_state(dict(state), options, path, {"format": "state-dict"})
    return model


def _load_pickled_model(path: Path, probe: FileProbe, options: LoadOptions) -> FerModel:
    named = ", ".join(sorted(probe.torch_globals, key=lambda name: (name.startswith("torch."), name))[:4])
    if not options.trust_pickle:
        raise UntrustedPickleError(
            f"{path} is a pickled model (it names {named}, ...). Loading a pickle runs code stored in the "
            "file, and a malicious file can do anything your account can. If you trust where this file "
            "came from, allow it with `model.trust_pickle: true` in the config, `--trust-pickle` on the "
            "command line or trust_pickle=True; then save it with save_model to get a safe .safetensors copy."
        )
    warnings.warn(f"loading the pickled model {path}: this runs code from the file (trust_pickle=True)",
                  UserWarning, stacklevel=3)
    try:
        old, report = legacy.unpickle_module(path)
    except Exception as exc:  # anything the pickle's own code raises
        raise ModelLoadError(f"{path}: cannot unpickle the model ({type(exc).__name__}: {exc})") from exc
    if not isinstance(old, torch.nn.Module):
        raise ModelLoadError(f"{path}: expected a pickled torch.nn.Module, got {type(old).__name__}")
    model, fit = _model_from_state(legacy.module_state(old), options, path, {
        "format": "pickled-model", "moved_classes": report.moved, "stand_ins": report.stand_ins,
    })
    old_settings, new_settings = legacy.layer_settings(old), legacy.layer_settings(model.module)
    differing = [k for k in old_settings if k in new_settings and old_settings[k] != new_settings[k]]
    if differing:
        key = differing[0]
        raise ModelLoadError(
            f"{path}: the weights fit {fit.architecture!r} in shape, but {len(differing)} layer settings differ "
            f"(e.g. {key}: file {old_settings[key]} vs {new_settings[key]}), so its outputs would differ"
        )
    return model


#: Every format :func:`load_model` reads, tried in this order.
FORMATS: tuple[CheckpointFormat, ...] = (
    CheckpointFormat("fer_core", "<stem>.safetensors + <stem>.json written by save_model",
                     lambda probe: probe.is_safetensors or probe.is_json, _load_fer_checkpoint),
    CheckpointFormat("state-dict", "torch.save(model.state_dict()) archive (.pt/.pth)",
                     lambda probe: probe.torch_globals == [], _load_state_dict),
    CheckpointFormat("pickled-model", "torch.save(model) archive, needs trust_pickle (e.g. HSEmotion .pt)",
                     lambda probe: bool(probe.torch_globals), _load_pickled_model),
)


def _accepted_formats() -> str:
    return "; ".join(f"{f.name}: {f.description}" for f in FORMATS)


def load_model(path: str | os.PathLike[str], architecture: str | None = None, trust_pickle: bool = False,
               num_classes: int = 8) -> FerModel:
    """Load weights in any format of :data:`FORMATS`, recognised by content.

    ``architecture`` (a name from :data:`ARCHITECTURES`) is checked against the weights;
    when None it is inferred from their shapes. ``trust_pickle`` allows pickled models,
    which run code from the file. ``num_classes`` sizes the fresh chance-level head of a
    backbone-only file; files with a classifier keep theirs.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"no weights file at {path}; accepted formats: {_accepted_formats()}")
    probe = FileProbe(path)
    options = LoadOptions(architecture, trust_pickle, num_classes)
    for fmt in FORMATS:
        if fmt.matches(probe):
            return fmt.load(path, probe, options)
    raise ModelLoadError(f"{path} is not a weights file in a known format; accepted formats: {_accepted_formats()}")


@validate_params({"dtype": [Options(torch.dtype, SAVE_DTYPES)]})
def save_model(model: FerModel, path: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> Path:
    """Write ``<stem>.safetensors`` and ``<stem>.json`` and return the first. Both are written in
    full to temporary names before either replaces the old pair, so a failed save (a full disk)
    leaves the previous pair intact.

    ``path`` may name either file or the bare stem. ``dtype=torch.float16`` halves the file;
    floating tensors are stored in ``dtype`` and read back as float32.
    """
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    weights, sidecar = stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")
    state = {k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).cpu().contiguous()
             for k, v in model.module.state_dict().items()}
    weights.parent.mkdir(parents=True, exist_ok=True)
    staged = {final: final.with_name(f".{final.name}.{os.getpid()}.tmp") for final in (weights, sidecar)}
    try:
        safetensors.torch.save_file(state, str(staged[weights]), metadata={"format": "pt"})
        _write_sidecar(model, dtype, _file_sha256(staged[weights]), staged[sidecar])
        for final, tmp in staged.items():
            os.replace(tmp, final)
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
    return weights


def _write_sidecar(model: FerModel, dtype: torch.dtype, weights_sha256: str, path: Path) -> None:
    """Write the JSON metadata of ``model`` whose weights file has the sha256 ``weights_sha256``."""
    provenance = {"data": None, "recipe": None, "metrics": None, **model.provenance,
                  "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "fer_core_version": __version__}
    meta = {
        "format_version": FORMAT_VERSION,
        "architecture": model.architecture,
        "emotions": list(model.emotions),
        "input_size": model.input_size,
        "mean": list(model.mean),
        "std": list(model.std),
        "grayscale": model.grayscale,
        "dtype": str(dtype).removeprefix("torch."),
        "weights_sha256": weights_sha256,
        "provenance": provenance,
    }
    path.write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
