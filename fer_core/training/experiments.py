"""Real + synthetic experiments: training sets that mix the two domains in a chosen share,
the synthetic-fraction sweep (the cross-domain matrix's source) and k-fold cross-validation.

Every run goes through :class:`~fer_core.training.Trainer` (best epoch chosen on the
validation set) and every score through :func:`fer_core.workflows.evaluate_model`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from fer_core.config import Config
from fer_core.data import FaceDataset, Sample, stratified_kfold, stratified_split
from fer_core.errors import ConfigError, DataError
from fer_core.faces import FacePipeline
from fer_core.models import load_model
from fer_core.runs import provenance_record, write_json_atomic
from fer_core.training.trainer import Trainer, TrainSettings

#: The synthetic shares of the plan's sweep.
DEFAULT_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
SUMMARY = "summary"
#: A dataset spec (``fer2013:train``, a folder) or an opened dataset.
DatasetSpec = str | FaceDataset


class MixedDataset(FaceDataset):
    """Several datasets in one index, in order; every sample keeps its part and domain.

    ``domains`` gives each sample's domain; keys are ``<tag>:<key of the part>`` with a
    tag per part, so keys stay unique. ``domain`` is the domain most samples have.
    ``pre_cropped`` holds only when every part is pre-cropped (so crop synthetic images once,
    e.g. into ``synthetic:train``, rather than running face detection on the real crops too).
    """

    def __init__(self, parts: Sequence[FaceDataset], name: str) -> None:
        parts = [p for p in parts if len(p)]
        if not parts:
            raise DataError(f"{name}: nothing to mix (every part is empty)")
        self.parts = tuple(parts)
        self.tags = tuple(f"{i}-{p.domain}-{p.name}".replace(":", "_") for i, p in enumerate(parts))
        self._part_of = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)])
        self._offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])[:-1]])
        self._labels = np.concatenate([p.labels for p in parts])
        self._labels.flags.writeable = False
        self.domains = np.array([p.domain for p in parts])[self._part_of]
        values, counts = np.unique(self.domains, return_counts=True)
        super().__init__(name, sorted({e for p in parts for e in p.emotions}),
                         pre_cropped=all(p.pre_cropped for p in parts), domain=str(values[counts.argmax()]))

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def _sample(self, index: int) -> Sample:
        part = int(self._part_of[index])
        sample = self.parts[part][index - int(self._offsets[part])]
        return dataclasses.replace(sample, key=f"{self.tags[part]}:{sample.key}")

    def read(self, sample: Sample) -> np.ndarray:
        tag, _, key = sample.key.partition(":")
        if tag not in self.tags:
            raise DataError(f"sample {sample.key!r} is not from {self.name} (parts {list(self.tags)})")
        return self.parts[self.tags.index(tag)].read(dataclasses.replace(sample, key=key))

    def domain_counts(self) -> dict[str, int]:
        """Number of samples of each domain."""
        values, counts = np.unique(self.domains, return_counts=True)
        return {str(v): int(c) for v, c in zip(values, counts)}


def _stratified_pick(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` sorted positions keeping the class shares of ``labels`` (uniform when a
    class is too rare to stratify)."""
    if count >= len(labels):
        return np.arange(len(labels))
    if count == 0:
        return np.arange(0)
    positions = np.arange(len(labels))
    try:
        picked = train_test_split(positions, train_size=count, random_state=seed, stratify=labels)[0]
    except ValueError:
        picked = np.random.default_rng(seed).choice(positions, size=count, replace=False)
    return np.sort(picked)


def _check_fraction(synthetic_fraction: float) -> float:
    if not 0.0 <= float(synthetic_fraction) <= 1.0:
        raise ConfigError(f"synthetic_fraction must lie in [0, 1], got {synthetic_fraction}")
    return float(synthetic_fraction)


def largest_mix(real_size: int, synthetic_size: int, synthetic_fraction: float) -> int:
    """The most faces a mix with ``synthetic_fraction`` can hold without repeating a face."""
    fraction = _check_fraction(synthetic_fraction)
    limits = [real_size / (1 - fraction) if fraction < 1 else np.inf,
              synthetic_size / fraction if fraction > 0 else np.inf]
    return int(np.floor(min(limits) + 1e-9))


def mixed_training_set(real: FaceDataset | None, synthetic: FaceDataset | None, synthetic_fraction: float,
                       size: int | None = None, seed: int = 0) -> MixedDataset:
    """A training set of ``size`` faces of which ``synthetic_fraction`` are synthetic.

    Each domain's faces are drawn without repetition, stratified by class where the classes
    allow it, the same for the same ``seed``. Fraction 0 is real only, 1 synthetic only.
    ``size=None`` takes the largest mix the data allows.
    """
    fraction = _check_fraction(synthetic_fraction)
    real_size = len(real) if real is not None else 0
    synthetic_size = len(synthetic) if synthetic is not None else 0
    if fraction > 0 and synthetic_size == 0:
        raise DataError(f"a synthetic fraction of {fraction} needs synthetic faces, but none were given; "
                        "pass a synthetic dataset (e.g. synthetic:train) or use fraction 0")
    if fraction < 1 and real_size == 0:
        raise DataError(f"a synthetic fraction of {fraction} needs real faces, but none were given; "
                        "pass a real dataset or use fraction 1")
    most = largest_mix(real_size, synthetic_size, fraction)
    size = most if size is None else size
    if not 0 < size <= most:
        raise DataError(f"a mix of {size} faces with synthetic fraction {fraction} needs "
                        f"{round(size * fraction)} synthetic and {size - round(size * fraction)} real faces; "
                        f"there are {synthetic_size} and {real_size} (at most {most} faces at this fraction)")
    synthetic_count = round(size * fraction)
    parts = []
    if size - synthetic_count:
        parts.append(real.subset(_stratified_pick(real.labels, size - synthetic_count, seed)))
    if synthetic_count:
        parts.append(synthetic.subset(_stratified_pick(synthetic.labels, synthetic_count, seed)))
    names = [d.name for d in (real, synthetic) if d is not None]
    return MixedDataset(parts, f"mix({'+'.join(names)}, synthetic={fraction:g})")


def _evaluation_config(config: Config, out_dir: Path) -> Config:
    """``config`` with evaluation runs written under ``out_dir``."""
    return dataclasses.replace(config, paths=dataclasses.replace(config.paths, runs_dir=out_dir))


def _face_pipeline(config: Config, settings: TrainSettings, *datasets: FaceDataset) -> FacePipeline | None:
    if all(d.pre_cropped for d in datasets):
        return None
    return FacePipeline.from_config(config, settings.input_size)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _score_row(metrics: dict[str, Any]) -> dict[str, Any]:
    (acc_low, acc_high), (f1_low, f1_high) = metrics["ci95"]["accuracy"], metrics["ci95"]["macro_f1"]
    return {"n": metrics["n"], "accuracy": metrics["accuracy"], "accuracy_ci_low": acc_low,
            "accuracy_ci_high": acc_high, "macro_f1": metrics["macro_f1"], "macro_f1_ci_low": f1_low,
            "macro_f1_ci_high": f1_high}


def _write_csv(rows: list[dict[str, Any]], path: Path) -> pd.DataFrame:
    """``rows`` as a table, written atomically to ``path``."""
    table = pd.DataFrame(rows)
    tmp = path.with_name(f".{path.name}.tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(path)
    return table


def _open(config: Config, spec: DatasetSpec) -> FaceDataset:
    from fer_core.workflows import dataset_for
    return spec if isinstance(spec, FaceDataset) else dataset_for(config, spec)


def _spec_name(spec: DatasetSpec) -> str:
    return spec.name if isinstance(spec, FaceDataset) else spec


def sweep(config: Config, real_train_spec: DatasetSpec, synthetic_train_spec: DatasetSpec | None,
          val_spec: DatasetSpec, test_specs: Sequence[DatasetSpec], settings: TrainSettings, out_dir: Path | str,
          fractions: Sequence[float] = DEFAULT_FRACTIONS, size: int | None = None, n_bootstrap: int = 1000,
          progress: bool = True) -> pd.DataFrame:
    """Train one run per synthetic fraction and score each best model on every test set.

    All runs train on the same number of faces (``size``, default the largest that every
    fraction allows). Writes ``out_dir/<run>/`` (training), ``out_dir/eval-<run>-<test>/``
    (evaluations) and ONE table ``out_dir/summary.csv`` + ``summary.json``: fraction, run,
    test set, accuracy and macro-F1 with 95% CIs. Re-running resumes finished work.
    """
    from fer_core.workflows import evaluate_model

    fractions = sorted({_check_fraction(f) for f in fractions})
    test_names = [_spec_name(spec) for spec in test_specs]
    if not fractions or not test_specs:
        raise ConfigError("a sweep needs at least one synthetic fraction and one test set")
    if len(set(test_names)) != len(test_names):
        raise ConfigError(f"the test sets need distinct names, got {test_names}")
    out_dir = config.resolve(out_dir)
    real = _open(config, real_train_spec)
    synthetic = _open(config, synthetic_train_spec) if synthetic_train_spec is not None else None
    val = _open(config, val_spec)
    tests = {name: _open(config, spec) for name, spec in zip(test_names, test_specs)}
    if size is None:
        synthetic_size = len(synthetic) if synthetic is not None else 0
        size = min(largest_mix(len(real), synthetic_size, f) for f in fractions)
    eval_config = _evaluation_config(config, out_dir)
    rows: list[dict[str, Any]] = []
    for fraction in fractions:
        train = mixed_training_set(real, synthetic, fraction, size, settings.seed)
        run = f"synthetic-{round(fraction * 100):03d}"
        info = {"experiment": "sweep", "synthetic_fraction": fraction, "composition": train.domain_counts(),
                "real_train": real.name, "synthetic_train": synthetic.name if synthetic else None, "val": val.name}
        pipeline = _face_pipeline(config, settings, train, val)
        result = Trainer(out_dir / run, settings, train, val, face_pipeline=pipeline, extra_info=info).fit(progress)
        weights = out_dir / run / "best.safetensors"
        model = load_model(weights)
        for spec, test in tests.items():
            evaluation = evaluate_model(eval_config, model, test, weights_path=weights,
                                        name=f"eval-{run}-{_slug(spec)}", n_bootstrap=n_bootstrap, progress=progress)
            rows.append({"fraction": fraction, "run": run, "train_size": len(train),
                         "n_real": train.domain_counts().get("real", 0),
                         "n_synthetic": train.domain_counts().get("synthetic", 0),
                         "test_set": spec, "test_domain": test.domain, "best_epoch": result["best"]["epoch"],
                         "val_accuracy": result["best"]["val_accuracy"], **_score_row(evaluation.metrics),
                         "evaluation": evaluation.path.name})
    write_json_atomic(out_dir / f"{SUMMARY}.json", {
        "experiment": "sweep", "real_train": _spec_name(real_train_spec), "val": _spec_name(val_spec),
        "synthetic_train": None if synthetic_train_spec is None else _spec_name(synthetic_train_spec),
        "tests": test_names, "fractions": fractions, "train_size": size,
        "settings": dataclasses.asdict(settings), "rows": rows,
        "provenance": provenance_record(config.root, {role: data for role, data in (
            ("real_train", real), ("synthetic_train", synthetic), ("val", val),
            *((f"test {name}", test) for name, test in tests.items())) if data is not None})})
    return _write_csv(rows, out_dir / f"{SUMMARY}.csv")


def cross_validate(config: Config, spec: DatasetSpec, k: int, settings: TrainSettings, out_dir: Path | str,
                   n_bootstrap: int = 1000, progress: bool = True) -> dict[str, Any]:
    """Stratified ``k``-fold cross-validation of ``settings`` on the dataset ``spec``.

    In each fold a stratified ``config.data.val_fraction`` of the training folds selects the
    best epoch, and the held-out fold only scores it. Writes ``out_dir/fold-<i>/``,
    ``out_dir/folds.csv`` and ``out_dir/crossval.json`` (per-fold metrics, mean and std).
    """
    from fer_core.workflows import evaluate_model

    out_dir = config.resolve(out_dir)
    dataset = _open(config, spec)
    known = np.flatnonzero(dataset.labels >= 0)
    labels = dataset.labels[known]
    eval_config = _evaluation_config(config, out_dir)
    val_fraction = config.data.val_fraction
    rows: list[dict[str, Any]] = []
    for fold, (train_pos, held_pos) in enumerate(stratified_kfold(labels, k, settings.seed)):
        parts = stratified_split(labels[train_pos], {"train": 1 - val_fraction, "val": val_fraction},
                                 seed=settings.seed)
        train = dataset.subset(known[train_pos[parts["train"]]])
        val = dataset.subset(known[train_pos[parts["val"]]])
        held_out = dataset.subset(known[np.sort(held_pos)])
        run = f"fold-{fold}"
        result = Trainer(out_dir / run, settings, train, val,
                         face_pipeline=_face_pipeline(config, settings, dataset),
                         extra_info={"experiment": "crossval", "spec": _spec_name(spec), "k": k,
                                     "fold": fold}).fit(progress)
        weights = out_dir / run / "best.safetensors"
        evaluation = evaluate_model(eval_config, load_model(weights), held_out, weights_path=weights,
                                    name=f"eval-{run}", n_bootstrap=n_bootstrap, progress=progress)
        rows.append({"fold": fold, "train_size": len(train), "val_size": len(val),
                     "best_epoch": result["best"]["epoch"], "val_accuracy": result["best"]["val_accuracy"], **_score_row(evaluation.metrics)})
    scores = pd.DataFrame(rows)
    aggregate = {metric: {"mean": float(scores[metric].mean()), "std": float(scores[metric].std(ddof=1))}
                 for metric in ("accuracy", "macro_f1")}
    _write_csv(rows, out_dir / "folds.csv")
    summary = {"experiment": "crossval", "spec": _spec_name(spec), "k": k, "val_fraction": val_fraction,
               "settings": dataclasses.asdict(settings), "folds": rows, **aggregate,
               "provenance": provenance_record(config.root, {"data": dataset})}
    write_json_atomic(out_dir / "crossval.json", summary)
    return summary
