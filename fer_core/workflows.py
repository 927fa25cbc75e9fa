"""End-to-end jobs over config, data and models: what the CLI and the dashboard call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fer_core import __version__
from fer_core.config import Config
from fer_core.data import FaceDataset, open_dataset
from fer_core.errors import DataError, ModelLoadError
from fer_core.evaluation import classification_report, mcnemar
from fer_core.faces import FacePipeline
from fer_core.inference import predict_dataset
from fer_core.labels import EMOTIONS
from fer_core.models import FerModel, load_model
from fer_core.runs import METRICS_FILE, RUN_FILE, Run, run_id, utc_now, write_json_atomic

#: The model shipped with the project (trained by ``fer-core train``; see weights/MODEL_CARD.md).
SHIPPED_WEIGHTS = Path("weights") / "fer_b0_ferplus.safetensors"


def resolve_weights(config: Config, weights: Path | str | None = None) -> Path:
    """Which weights file to use: the argument, else ``model.weights_path``, else the shipped model."""
    if weights is not None:
        path = config.resolve(weights)
        if not path.is_file():
            raise ModelLoadError(f"weights file not found: {path}")
        return path
    if config.model.weights_path is not None:
        return config.resolve(config.model.weights_path)
    shipped = config.resolve(SHIPPED_WEIGHTS)
    if shipped.is_file():
        return shipped
    raise ModelLoadError(
        f"no model: set model.weights_path in the config, pass --model PATH, or train the default "
        f"model into {shipped} (fer-core train); HSEmotion .pt files load with --trust-pickle")


def load_configured_model(config: Config, weights: Path | str | None = None) -> FerModel:
    """The model the config (or ``weights``) names."""
    return load_model(resolve_weights(config, weights), architecture=None,
                      trust_pickle=config.model.trust_pickle)


def face_pipeline_for(config: Config, model: FerModel) -> FacePipeline | None:
    """The configured face pipeline, cropping at the model's input size."""
    return FacePipeline.from_config(config, crop_size=model.input_size)


def dataset_for(config: Config, spec: str) -> FaceDataset:
    """A dataset by name (``fer2013:test``) or folder, under ``data.root``."""
    return open_dataset(spec, config.resolve(config.data.root))


def evaluate_model(config: Config, model: FerModel, dataset: FaceDataset, weights_path: Path | None = None,
                   name: str | None = None, limit: int | None = None, n_bootstrap: int = 1000,
                   progress: bool = True) -> Run:
    """Predict ``dataset`` with ``model`` and write a complete evaluation run directory.

    Re-running with the same ``name`` resumes an interrupted prediction pass.
    """
    runs_dir = config.resolve(config.paths.runs_dir)
    path = runs_dir / (name or run_id("eval", model.architecture, dataset.name))
    info: dict[str, Any] = {
        "kind": "evaluation", "created": utc_now(), "fer_core_version": __version__,
        "model": {"path": str(weights_path) if weights_path else None, "architecture": model.architecture,
                  "fingerprint": model.fingerprint, "input_size": model.input_size,
                  "emotions": list(model.emotions), "provenance": model.provenance},
        "dataset": {"name": dataset.name, "domain": dataset.domain, "emotions": list(dataset.emotions),
                    "size": len(dataset), "limit": limit},
        "scoring": "argmax over the dataset's classes (other logits dropped, HSEmotion protocol)",
        "config": config.to_dict(),
    }
    if (path / RUN_FILE).is_file():
        info["created"] = Run.load(path).info.get("created", info["created"])
    write_json_atomic(path / RUN_FILE, info)
    table = predict_dataset(model, dataset, path, face_pipeline=face_pipeline_for(config, model),
                            batch_size=config.inference.batch_size, limit=limit,
                            device=device_for(config), progress=progress)
    scored = table[(table["label"] >= 0) & table["error"].isna()]
    if scored.empty:
        raise DataError(f"{dataset.name}: no readable labelled faces to evaluate")
    metrics = classification_report(scored["label"].to_numpy(), scored["pred"].to_numpy(), dataset.emotions,
                                     n_resamples=n_bootstrap)
    metrics["unreadable"] = int(table["error"].notna().sum())
    metrics["faces_found_rate"] = float(table["face_found"].mean())
    write_json_atomic(path / METRICS_FILE, metrics)
    return Run.load(path)


def compare_runs(a: Run, b: Run) -> dict[str, Any]:
    """McNemar's test and per-class F1 deltas between two evaluations of the same faces."""
    pa, pb = a.predictions, b.predictions
    merged = pa.merge(pb, on="key", suffixes=("_a", "_b"))
    merged = merged[(merged["label_a"] >= 0) & merged["error_a"].isna() & merged["error_b"].isna()]
    if len(merged) == 0:
        raise DataError(f"runs {a.id} and {b.id} share no evaluated faces")
    test = mcnemar(merged["pred_a"] == merged["label_a"], merged["pred_b"] == merged["label_a"])
    deltas = {e: b.metrics["per_class"][e]["f1"] - a.metrics["per_class"][e]["f1"]
              for e in a.metrics["per_class"] if e in b.metrics["per_class"]}
    return {"a": a.id, "b": b.id, "mcnemar": test, "f1_delta_b_minus_a": deltas}


def device_for(config: Config) -> str:
    """``model.device`` with ``auto`` resolved to cuda when available."""
    import torch
    if config.model.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return config.model.device


def probabilities_table(probabilities: np.ndarray) -> dict[str, float]:
    """``{emotion: probability}`` for one face."""
    return {e: float(p) for e, p in zip(EMOTIONS, probabilities)}
