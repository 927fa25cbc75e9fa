"""End-to-end jobs over config, data and models: what the CLI and the dashboard call (the old
path :mod:`fer_core.workflows` re-exports them)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fer_core import __version__
from fer_core.backends import on_device, set_inference_threads
from fer_core.config import Config
from fer_core.data import FaceDataset, FerPlusDataset, open_dataset
from fer_core.errors import DataError, InvalidArgument
from fer_core.evaluation import classification_report, mcnemar
from fer_core.faces import FacePipeline
from fer_core.inference import predict_dataset
from fer_core.jobs.options import JobOptions
from fer_core.labels import EMOTIONS
from fer_core.models import FerModel, load_model
from fer_core.precompute import select
from fer_core.sampling import base_label, sampling_of
from fer_core.scoring import DEFAULT_PROTOCOL, ScoringWarning, scored_rows, scoring_for
from fer_core.runs import (METRICS_FILE, RUN_FILE, Run, provenance_record, run_id, run_path, utc_now,
                           write_json_atomic)
from fer_core.training import AugmentSettings, Stage, Trainer, TrainSettings, distributed
from fer_core.training.experiments import MixedDataset, as_face_crops, mixed_training_set
from fer_core.training.recipes import recipe_stages
from fer_core.weights import SHIPPED_WEIGHTS, resolve_weights  # noqa: F401 (SHIPPED_WEIGHTS: re-exported)

#: The model shipped with the project (trained by ``fer-core train``; see weights/MODEL_CARD.md).
def load_configured_model(config: Config, weights: Path | str | None = None) -> FerModel:
    """The model the config (or ``weights``) names, on the configured device (``model.device``,
    resolved once here: the library runs a model where it is, so the CLI and the dashboard
    both run on it), with ``inference.threads`` applied to torch and to the ONNX Runtime
    sessions built for it (:func:`fer_core.backends.set_inference_threads`)."""
    set_inference_threads(config.inference.threads)
    model = load_model(resolve_weights(config, weights), architecture=None, trust_pickle=config.model.trust_pickle)
    return on_device(model, config.model.device)


def face_pipeline_for(config: Config, model: FerModel) -> FacePipeline | None:
    """The configured face pipeline, cropping at the model's input size."""
    return JobOptions.from_config(config).face_pipeline(model.input_size)


#: Joins dataset specs into one set: ``ferplus:train+fer2013:train``.
SPEC_JOIN = "+"


def spec_parts(spec: str) -> list[str]:
    """The dataset specs ``spec`` joins with ``+`` (an existing folder is one spec)."""
    if SPEC_JOIN not in spec or Path(spec).exists():
        return [spec]
    parts = [part.strip() for part in spec.split(SPEC_JOIN)]
    if not all(parts):
        raise InvalidArgument(f"dataset spec {spec!r} has an empty part (join specs as a:split+b:split)")
    return parts


def joined(parts: list[FaceDataset]) -> FaceDataset:
    """One dataset, or several as one index (:class:`MixedDataset`, named ``a+b``)."""
    if len(parts) == 1:
        return parts[0]
    return MixedDataset(parts, name=SPEC_JOIN.join(part.name for part in parts))


def dataset_for(config: Config, spec: str, **overrides) -> FaceDataset:
    """A dataset by name (``fer2013:test``) or folder, under ``data.root``, or several joined with
    ``+`` (``ferplus:train+fer2013:train``); ``overrides``: ``pre_cropped``, ``domain`` (see
    :func:`~fer_core.data.open_dataset`)."""
    return joined([open_dataset(part, config.resolve(config.data.root), **overrides) for part in spec_parts(spec)])


def evaluate_model(config: Config, model: FerModel, dataset: FaceDataset, weights_path: Path | None = None,
                   name: str | None = None, limit: int | None = None, n_bootstrap: int = 1000,
                   progress: bool = True, per_class: int | None = None, sample_seed: int = 0,
                   score_over: str = DEFAULT_PROTOCOL) -> Run:
    """Predict ``dataset`` with ``model`` and write a complete evaluation run directory.

    ``limit`` / ``per_class`` evaluate a stratified sample (seeded by ``sample_seed``;
    :func:`fer_core.precompute.select`), named as such in the run id and its dataset label.
    ``score_over`` picks the classes a prediction may be (:data:`fer_core.scoring.PROTOCOLS`;
    default: all of the model's); run.json records it with any warning (fewer than 3 classes,
    true classes that cannot be predicted). Re-running with the same ``name`` resumes an
    interrupted prediction pass.
    """
    runs_dir = config.resolve(config.paths.runs_dir)
    options = JobOptions.from_config(config, progress)
    whole = len(dataset)
    dataset = select(dataset, limit, per_class=per_class, seed=sample_seed)
    sampling = sampling_of(dataset)
    scoring = scoring_for(score_over, model.emotions, dataset.emotions, dataset.labels)
    pipeline = options.face_pipeline(model.input_size)
    detects = not dataset.pre_cropped and pipeline is not None and pipeline.detector is not None
    path = run_path(runs_dir, name or run_id("eval", model.architecture, base_label(dataset),
                                             *(sampling.id_parts() if sampling else ()),
                                             pipeline.detector.name if detects else ""))
    info: dict[str, Any] = {
        "kind": "evaluation", "created": utc_now(), "fer_core_version": __version__,
        "model": {"path": str(weights_path) if weights_path else None, "architecture": model.architecture,
                  "fingerprint": model.fingerprint, "input_size": model.input_size, "grayscale": model.grayscale,
                  "test_time_flip": model.test_time_flip, "emotions": list(model.emotions),
                  "provenance": model.provenance},
        "dataset": {"name": dataset.name, "label": dataset.label, "spec": base_label(dataset),
                    "domain": dataset.domain, "emotions": list(dataset.emotions), "size": whole,
                    "faces": len(dataset), "limit": limit, "per_class": per_class,
                    "sampling": sampling.record() if sampling else None},
        "scoring": scoring.record(),
        "faces": {"detector": pipeline.detector.fingerprint() if detects else "none: pre-cropped, each image is one face",
                  "pipeline": pipeline.fingerprint() if detects else None,
                  "margin": pipeline.margin if detects else None, "align": pipeline.align if detects else None},
        "config": config.to_dict(), "provenance": provenance_record(config.root, {"test": dataset}, limit),
    }
    if (path / RUN_FILE).is_file():
        info["created"] = Run.load(path).info.get("created", info["created"])
    write_json_atomic(path / RUN_FILE, info)
    for warning in scoring.warnings:
        warnings.warn(f"{dataset.label}: {warning}", ScoringWarning, stacklevel=2)
    table = predict_dataset(model, dataset, path, face_pipeline=pipeline, score_over=score_over,
                            options=options.inference)
    scored = scored_rows(table)
    if scored.empty:
        raise DataError(f"{dataset.name}: no readable labelled faces to evaluate")
    true_classes = [e for e in dataset.emotions if EMOTIONS.index(e) in set(scored["label"])]
    metrics = classification_report(scored["label"].to_numpy(), scored["pred"].to_numpy(), true_classes,
                                     n_resamples=n_bootstrap, predicted=scoring.classes)
    metrics["scoring"] = scoring.record()
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


def training_dataset(config: Config, spec: str, soft_labels: bool) -> FaceDataset:
    """A dataset for training (``+`` joins several); ``soft_labels`` asks for FER+ vote
    distributions, which the FER+ parts give (the others train on their one-hot labels)."""
    if not soft_labels:
        return dataset_for(config, spec)
    parts = spec_parts(spec)
    if not any(part.partition(":")[0] == "ferplus" for part in parts):
        raise DataError(f"soft labels exist only for FER+ (ferplus:<split>), not {spec!r}")
    return joined([_soft_or_plain(config, part) for part in parts])


def _soft_or_plain(config: Config, spec: str) -> FaceDataset:
    name, _, split = spec.partition(":")
    dataset = dataset_for(config, spec)  # validates the split and that the data is present
    if name != "ferplus":
        return dataset
    return FerPlusDataset(config.resolve(config.data.root) / "real" / "ferplus", split, label_mode="soft")


@dataclass(frozen=True)
class StartRequest:
    """Where training should start, as asked (``--init``, ``--recipe``, ``--epochs``, ``--lr``,
    ``--architecture``, ``--input-size``; None: not given)."""

    init: Path | None = None
    recipe: str | None = None
    epochs: int | None = None
    lr: float | None = None
    architecture: str | None = None
    input_size: int | None = None


@dataclass(frozen=True)
class TrainingStart:
    """Where training starts and how it proceeds: the ``init`` model (None: from scratch), the
    recipe's name and stages, the architecture (the init model's, if any) and the input size (the
    init model's unless another was asked)."""

    init: FerModel | None
    recipe: str
    stages: tuple[Stage, ...]
    architecture: str
    input_size: int


def training_start(config: Config, asked: StartRequest, default_epochs: int,
                   default_lr: float = 2e-3) -> TrainingStart:
    """The :class:`TrainingStart` of what was ``asked`` (see :mod:`fer_core.training.recipes`
    for the rule on ``epochs`` / ``lr``); an ``architecture`` that contradicts the ``init`` model
    is an error, an ``input_size`` fine-tunes it at that size (its other preprocessing kept)."""
    init = load_model(config.resolve(asked.init), trust_pickle=config.model.trust_pickle) if asked.init else None
    recipe, stages = recipe_stages(asked.recipe, asked.epochs, asked.lr, init is not None,
                                   default_epochs=default_epochs, default_lr=default_lr)
    if init is None:
        return TrainingStart(None, recipe, stages, asked.architecture or config.model.architecture,
                             asked.input_size or config.model.input_size)
    if asked.architecture is not None and asked.architecture != init.architecture:
        raise InvalidArgument(f"--architecture {asked.architecture} contradicts the --init model "
                              f"({init.architecture}); leave --architecture out")
    return TrainingStart(init, recipe, stages, init.architecture, asked.input_size or init.input_size)


def training_settings(options: JobOptions, start: TrainingStart, augment: bool = True,
                      **hyperparameters: Any) -> TrainSettings:
    """The one place training settings are built: the ``start``'s architecture, input size and
    stages on the options' device, default augmentation unless ``augment`` is False, and the
    remaining :class:`~fer_core.training.TrainSettings` fields as given."""
    return TrainSettings(architecture=start.architecture, input_size=start.input_size, stages=start.stages,
                         augment=AugmentSettings() if augment else None, device=options.device, **hyperparameters)


@dataclass(frozen=True)
class TrainingData:
    """What a training run trains and selects on: ``train`` alone, or mixed with ``synthetic``
    faces at ``synthetic_fraction`` (``size`` faces, drawn with the settings' seed)."""

    train: str
    val: str
    synthetic: str | None = None
    synthetic_fraction: float | None = None
    size: int | None = None


def _mixed_training_data(config: Config, options: JobOptions, data: TrainingData,
                         settings: TrainSettings) -> tuple[FaceDataset, dict[str, Any]]:
    """``data.train`` alone, or mixed with ``data.synthetic``; and what the run record says
    about the mix."""
    if data.synthetic is None:
        if data.synthetic_fraction is not None or data.size is not None:
            raise InvalidArgument("--synthetic-fraction and --size make a mix: give the synthetic faces with "
                                  "--synthetic")
        return training_dataset(config, data.train, settings.soft_targets), {}
    if data.synthetic_fraction is None:
        raise InvalidArgument("--synthetic needs --synthetic-fraction F (the synthetic share of the training set, 0-1)")
    if settings.soft_targets:
        raise InvalidArgument("--soft-labels needs FER+ vote distributions for every face; synthetic faces have none")
    real, synthetic = dataset_for(config, data.train), dataset_for(config, data.synthetic)
    crops = options.face_pipeline(settings.input_size) if not (real.pre_cropped and synthetic.pre_cropped) else None
    mix = mixed_training_set(as_face_crops(real, crops), as_face_crops(synthetic, crops), data.synthetic_fraction,
                             data.size, settings.seed)
    return mix, {"synthetic_fraction": data.synthetic_fraction, "composition": mix.domain_counts(),
                 "real_train": real.label, "synthetic_train": synthetic.label}


def train_model(config: Config, settings: TrainSettings, data: TrainingData, start: TrainingStart,
                name: str | None = None, resume: bool = False) -> dict[str, Any]:
    """``fer-core train``: train ``settings`` (built by :func:`training_settings`) on ``data``
    from ``start`` into the run ``name`` under ``paths.runs_dir`` (default: generated);
    ``resume`` continues it from its last checkpoint."""
    options = JobOptions.from_config(config)
    with distributed.process_group(settings.device):  # data-parallel under torchrun
        name = distributed.broadcast_object(name or run_id("train", settings.architecture, data.train))  # one run dir
        run_dir = run_path(config.resolve(config.paths.runs_dir), name)
        if (run_dir / "checkpoint.pt").is_file() and not resume:
            raise InvalidArgument(f"{run_dir} already holds a training run: pass --resume to continue it, "
                                  f"or another --name")
        if resume and not (run_dir / "checkpoint.pt").is_file():
            raise InvalidArgument(f"nothing to resume: {run_dir / 'checkpoint.pt'} does not exist")
        train, mix = _mixed_training_data(config, options, data, settings)
        val = dataset_for(config, data.val)
        pipeline = None if train.pre_cropped and val.pre_cropped else options.face_pipeline(settings.input_size)
        trainer = Trainer(run_dir, settings, train, val, init=start.init, face_pipeline=pipeline,
                          extra_info={"recipe": start.recipe, "command": "fer-core train", **mix})
        return {"run_dir": run_dir, **trainer.fit()}
