"""Real + synthetic experiments (RQ2): training sets that mix the two domains, the sweep over
mixes (the cross-domain matrix's source) with repeated seeds and a paired test across mixes,
and k-fold cross-validation that keeps every generated grid inside one fold.

Two designs of the sweep (:data:`DESIGNS`): ``share`` keeps the number of training faces fixed
and varies the synthetic share; ``added`` keeps the real faces fixed and adds N synthetic ones.
Every run goes through :class:`~fer_core.training.Trainer` (best epoch chosen on the validation
set), from scratch or from ``init`` weights (fine-tuning, the plan's design), and every score
through :func:`fer_core.workflows.evaluate_model`.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from fer_core.config import Config
from fer_core.data import FaceDataset, Sample, grid_groups, stratified_group_kfold, stratified_group_split
from fer_core.errors import ConfigError, DataError
from fer_core.evaluation import cochran_q, holm, mcnemar, seed_spread
from fer_core.faces import FacePipeline
from fer_core.inference import find_face
from fer_core.models import FerModel, load_model
from fer_core.runs import Run, provenance_record, write_json_atomic
from fer_core.training.trainer import Trainer, TrainSettings

#: The synthetic shares of the plan's sweep.
DEFAULT_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
SUMMARY = "summary"
#: A dataset spec (``fer2013:train``, a folder) or an opened dataset.
DatasetSpec = str | FaceDataset
#: Face crops kept in memory by :class:`FaceCrops` (a 224 px crop is 147 KiB).
CROP_CACHE_BYTES = 512 << 20


class MixedDataset(FaceDataset):
    """Several datasets in one index, in order; every sample keeps its part and domain.

    ``domains`` gives each sample's domain; keys are ``<tag>:<key of the part>`` with a
    tag per part, so keys stay unique. ``domain`` is the domain most samples have.
    ``pre_cropped`` holds only when every part is pre-cropped (so crop synthetic images once,
    e.g. into ``synthetic:train``, or wrap photos in :class:`FaceCrops`, rather than running face
    detection on the real crops too).
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


class FaceCrops(FaceDataset):
    """``dataset`` (photos) as face crops: each image read is the largest face ``pipeline`` finds in
    it (the whole image when none; :func:`fer_core.inference.find_face`, as training and evaluation
    crop), so photos mix with pre-cropped faces. Crops are kept in memory (up to ``max_bytes``),
    so the detector runs once per face across epochs and runs."""

    def __init__(self, dataset: FaceDataset, pipeline: FacePipeline, max_bytes: int = CROP_CACHE_BYTES) -> None:
        super().__init__(dataset.name, dataset.emotions, pre_cropped=True, domain=dataset.domain)
        self.dataset, self.pipeline, self.max_bytes = dataset, pipeline, max_bytes
        self._crops: dict[str, np.ndarray] = {}
        self._bytes = 0

    @property
    def labels(self) -> np.ndarray:
        return self.dataset.labels

    def _sample(self, index: int) -> Sample:
        return self.dataset[index]

    def read(self, sample: Sample) -> np.ndarray:
        crop = self._crops.get(sample.key)
        if crop is None:
            crop = find_face(self.dataset.read(sample), False, self.pipeline)[0].image
            if self._bytes + crop.nbytes <= self.max_bytes:
                self._crops[sample.key] = crop
                self._bytes += crop.nbytes
        return crop.copy()  # the caller may change it in place


def as_face_crops(dataset: FaceDataset, pipeline: FacePipeline | None) -> FaceDataset:
    """``dataset`` itself when it is pre-cropped (or there is no pipeline), else its :class:`FaceCrops`."""
    return dataset if dataset.pre_cropped or pipeline is None else FaceCrops(dataset, pipeline)


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


def _stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """Positions in an order whose every prefix keeps the class shares of ``labels`` (each class
    within one face of its share): each class shuffled (seeded), then the classes interleaved by
    rank within class over class size. Prefixes are nested: the first 100 are among the first 200."""
    rng = np.random.default_rng(seed)
    order, keys = [], []
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        order.append(members)
        keys.append((np.arange(members.size) + 0.5) / members.size)
    positions, ranks = np.concatenate(order), np.concatenate(keys)
    return positions[np.argsort(ranks, kind="stable")]


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


def added_training_set(real: FaceDataset, synthetic: FaceDataset | None, n_synthetic: int,
                       real_size: int | None = None, seed: int = 0) -> MixedDataset:
    """``real_size`` real faces (default all; stratified, the same for the same ``seed``) plus
    ``n_synthetic`` synthetic faces: the first ``n_synthetic`` of a seeded order whose prefixes
    keep the class shares, so the 100 added faces are among the 200 added ones."""
    if isinstance(n_synthetic, bool) or int(n_synthetic) != n_synthetic or n_synthetic < 0:
        raise ConfigError(f"the number of synthetic faces to add must be a whole number >= 0, got {n_synthetic}")
    n_synthetic = int(n_synthetic)
    synthetic_size = len(synthetic) if synthetic is not None else 0
    if n_synthetic > synthetic_size:
        raise DataError(f"cannot add {n_synthetic} synthetic faces: there are {synthetic_size}"
                        + ("" if synthetic is not None else " (no synthetic dataset given)"))
    real_size = len(real) if real_size is None else real_size
    if not 0 < real_size <= len(real):
        raise DataError(f"the fixed real set needs {real_size} faces; {real.name} has {len(real)}")
    parts = [real.subset(_stratified_pick(real.labels, real_size, seed))]
    if n_synthetic:
        parts.append(synthetic.subset(np.sort(_stratified_order(synthetic.labels, seed)[:n_synthetic])))
    added = f"+{n_synthetic} {synthetic.name}" if synthetic is not None else "+0"
    return MixedDataset(parts, f"mix({real.name}{added})")


@dataclass(frozen=True)
class MixDesign:
    """How the runs of a sweep differ. ``level``: the column of the varied quantity; ``check``
    validates a level; ``default_size`` gives ``size`` when none is given from (real faces,
    synthetic faces, levels); ``mix`` builds a training set from (real, synthetic, level, size,
    seed); ``run_name`` names the run of a level."""

    name: str
    level: str
    size_meaning: str
    check: Callable[[float], float]
    default_size: Callable[[int, int, Sequence[float]], int]
    mix: Callable[[FaceDataset, FaceDataset | None, float, int, int], MixedDataset]
    run_name: Callable[[float], str]


def _check_count(count: float) -> int:
    if int(count) != count or count < 0:
        raise ConfigError(f"synthetic faces to add must be whole numbers >= 0, got {count:g}")
    return int(count)


#: The sweep designs: ``share`` (the training set's size fixed, the synthetic share varied) and
#: ``added`` (the real faces fixed, N synthetic faces added).
DESIGNS: dict[str, MixDesign] = {design.name: design for design in (
    MixDesign("share", "fraction", "training faces in every run (default: the most every fraction allows)",
              _check_fraction,
              lambda n_real, n_synthetic, levels: min(largest_mix(n_real, n_synthetic, f) for f in levels),
              lambda real, synthetic, level, size, seed: mixed_training_set(real, synthetic, level, size, seed),
              lambda level: f"synthetic-{round(level * 100):03d}"),
    MixDesign("added", "n_added", "real faces in every run (default: all)", _check_count,
              lambda n_real, n_synthetic, levels: n_real,
              lambda real, synthetic, level, size, seed: added_training_set(real, synthetic, int(level), size, seed),
              lambda level: f"added-{int(level):05d}"),
)}


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


def _limited(dataset: FaceDataset, limit: int | None) -> FaceDataset:
    """A seeded (seed 0) class-stratified sample of ``limit`` faces, labelled so (quick trials)."""
    from fer_core.precompute import select
    return select(dataset, limit, seed=0)


def _start_model(init: FerModel | None) -> FerModel | None:
    """A fresh copy of ``init`` for one run (training changes the module in place)."""
    return None if init is None else copy.deepcopy(init)


def _run_info(experiment: str, recipe: str | None, init: FerModel | None) -> dict[str, Any]:
    return {"experiment": experiment, "recipe": recipe,
            "init": None if init is None else {"fingerprint": init.fingerprint, "architecture": init.architecture}}


def _correct_by_face(run_dir: Path) -> pd.Series:
    """Whether each labelled, readable face of an evaluation run was predicted right, by key."""
    table = Run.load(run_dir).predictions
    scored = table[(table["label"] >= 0) & table["error"].isna()]
    return pd.Series((scored["pred"] == scored["label"]).to_numpy(), index=scored["key"].to_numpy())


#: What the sweep's test compares, printed beside its figures.
TEST_PROTOCOL = ("Cochran's Q over the mixes, paired by seed and test face (a block is one face under one seed, "
                 "correct or not in each mix), its p from shuffling each block's outcomes over the mixes (the "
                 "chi-square p beside it is poor with few differing blocks); pairwise McNemar exact tests on the "
                 "same blocks, Holm-adjusted over "
                 "the pairs. The same face under two seeds counts as two blocks although they are not independent, "
                 "so the p-values lean optimistic; the control gives the McNemar test between two seeds of the same "
                 "mix, the differences chance alone makes.")


def paired_tests(correct: dict[tuple[float, int], pd.Series], level: str) -> dict[str, Any]:
    """The test across levels for one test set, from each run's per-face correctness keyed by
    ``(level, seed)``: Cochran's Q (blocks = seed x face), pairwise McNemar with Holm, and the
    between-seed control (McNemar of the first two seeds within each level)."""
    levels = sorted({lv for lv, _ in correct})
    seeds = sorted({sd for _, sd in correct})
    faces = sorted(set.intersection(*(set(series.index) for series in correct.values())))
    if len(levels) < 2 or not faces:
        return {"protocol": TEST_PROTOCOL, "note": "needs two or more mixes scored on the same faces"}
    outcome = {key: series.reindex(faces).to_numpy(dtype=bool) for key, series in correct.items()}
    blocks = {lv: np.concatenate([outcome[(lv, sd)] for sd in seeds]) for lv in levels}
    q = cochran_q(np.column_stack([blocks[lv] for lv in levels]))
    pairs = [{f"{level}_a": a, f"{level}_b": b, **mcnemar(blocks[a], blocks[b])}
             for a, b in itertools.combinations(levels, 2)]
    for pair, adjusted in zip(pairs, holm([pair["p_value"] for pair in pairs])):
        pair["p_holm"] = adjusted
    control = [{level: lv, "seed_a": seeds[0], "seed_b": seeds[1],
                **mcnemar(outcome[(lv, seeds[0])], outcome[(lv, seeds[1])])} for lv in levels if len(seeds) > 1]
    return {"protocol": TEST_PROTOCOL, "faces": len(faces), "seeds": seeds, "cochran_q": q,
            "pairwise_mcnemar": pairs, "control_between_seeds": control}


def _level_rows(rows: list[dict[str, Any]], level: str) -> list[dict[str, Any]]:
    """Mean, sd and 95% t-interval over seeds of accuracy and macro-F1 (clipped to [0, 1], where
    both live), per test set and level."""
    table = pd.DataFrame(rows)
    out = []
    for (test_set, value), group in table.groupby(["test_set", level], sort=True):
        row = {"test_set": test_set, level: value, "fraction": float(group["fraction"].iloc[0]),
               "seeds": len(group), "n": int(group["n"].iloc[0])}
        for metric in ("accuracy", "macro_f1"):
            spread = seed_spread(group[metric].to_list())
            row.update({f"{metric}_mean": spread["mean"], f"{metric}_sd": spread["sd"],
                        f"{metric}_ci_low": float(np.clip(spread["ci_low"], 0, 1)),
                        f"{metric}_ci_high": float(np.clip(spread["ci_high"], 0, 1))})
        out.append(row)
    return out


def sweep(config: Config, real_train_spec: DatasetSpec, synthetic_train_spec: DatasetSpec | None,
          val_spec: DatasetSpec, test_specs: Sequence[DatasetSpec], settings: TrainSettings, out_dir: Path | str,
          fractions: Sequence[float] = DEFAULT_FRACTIONS, size: int | None = None, n_bootstrap: int = 1000,
          progress: bool = True, *, design: str = "share", added: Sequence[int] = (), seeds: Sequence[int] = (),
          init: FerModel | None = None, recipe: str | None = None, limit: int | None = None) -> pd.DataFrame:
    """Train one run per mix and seed, score each best model on every test set, and test the
    differences between mixes.

    ``design="share"``: every run trains on ``size`` faces (default the most every fraction
    allows) of which ``fractions`` are synthetic. ``design="added"``: every run trains on the same
    ``size`` real faces (default all) plus ``added`` synthetic faces (nested: the 100 added faces
    are among the 200). ``seeds`` (default ``settings.seed``) repeat every mix; a seed draws the
    mix and seeds the training. ``init`` starts every run from these weights (fine-tuning;
    ``recipe`` names the stages in ``settings`` for the records). ``limit`` scores and selects
    on a seeded stratified sample of that many faces of the validation and each test set.

    Writes ``out_dir/<run>/`` (training; a run is named by its mix, e.g. ``synthetic-025``, with
    ``-seed<S>`` when there are several seeds), ``out_dir/eval-<run>-<test>/`` (evaluations),
    ``summary.csv`` (one row per run and test set: level, seed, accuracy and macro-F1 with
    bootstrap 95% CIs), ``levels.csv`` (per test set and level: mean, sd and t-based 95% CI over
    seeds), ``pairwise.csv`` and ``summary.json`` with all of it plus the tests
    (:func:`paired_tests`) and provenance. Re-running resumes finished work.
    """
    from fer_core.workflows import evaluate_model

    if design not in DESIGNS:
        raise ConfigError(f"unknown sweep design {design!r}; one of {list(DESIGNS)}")
    mix_design = DESIGNS[design]
    levels = sorted({mix_design.check(level) for level in (fractions if design == "share" else added)})
    seeds = sorted(set(seeds)) or [settings.seed]
    test_names = [_spec_name(spec) for spec in test_specs]
    if not levels or not test_specs:
        raise ConfigError(f"a sweep needs at least one {mix_design.level} and one test set")
    if len(set(test_names)) != len(test_names):
        raise ConfigError(f"the test sets need distinct names, got {test_names}")
    out_dir = config.resolve(out_dir)
    real_data = _open(config, real_train_spec)
    synthetic_data = _open(config, synthetic_train_spec) if synthetic_train_spec is not None else None
    crops = _face_pipeline(config, settings, *(d for d in (real_data, synthetic_data) if d is not None))
    real = as_face_crops(real_data, crops)
    synthetic = as_face_crops(synthetic_data, crops) if synthetic_data is not None else None
    val = _limited(_open(config, val_spec), limit)
    tests = {name: _open(config, spec) for name, spec in zip(test_names, test_specs)}
    if size is None:
        size = mix_design.default_size(len(real), len(synthetic) if synthetic is not None else 0, levels)
    plan = [(seed, level, mix_design.mix(real, synthetic, level, size, seed)) for seed in seeds for level in levels]
    eval_config = _evaluation_config(config, out_dir)
    rows: list[dict[str, Any]] = []
    correct: dict[str, dict[tuple[float, int], pd.Series]] = {name: {} for name in tests}
    for seed, level, train in plan:
        run = mix_design.run_name(level) + (f"-seed{seed}" if len(seeds) > 1 else "")
        counts = train.domain_counts()
        share = counts.get("synthetic", 0) / len(train)
        fraction = level if design == "share" else share
        info = {**_run_info("sweep", recipe, init), "design": design, mix_design.level: level,
                "synthetic_fraction": fraction, "synthetic_share": share, "seed": seed, "composition": counts,
                "real_train": real.name,
                "synthetic_train": synthetic.name if synthetic is not None else None, "val": val.label}
        run_settings = dataclasses.replace(settings, seed=seed)
        result = Trainer(out_dir / run, run_settings, train, val, init=_start_model(init),
                         face_pipeline=_face_pipeline(config, settings, val), extra_info=info).fit(progress)
        weights = out_dir / run / "best.safetensors"
        model = load_model(weights)
        for name, test in tests.items():
            evaluation = evaluate_model(eval_config, model, test, weights_path=weights, limit=limit,
                                        name=f"eval-{run}-{_slug(name)}", n_bootstrap=n_bootstrap, progress=progress)
            correct[name][(level, seed)] = _correct_by_face(evaluation.path)
            rows.append({"design": design, mix_design.level: level, "fraction": fraction, "synthetic_share": share,
                         "seed": seed, "run": run,
                         "train_size": len(train), "n_real": counts.get("real", 0),
                         "n_synthetic": counts.get("synthetic", 0), "test_set": name, "test_domain": test.domain,
                         "best_epoch": result["best"]["epoch"], "val_accuracy": result["best"]["val_accuracy"],
                         **_score_row(evaluation.metrics), "evaluation": evaluation.path.name})
    tests_by_set = {name: paired_tests(by_run, mix_design.level) for name, by_run in correct.items()}
    level_rows = _level_rows(rows, mix_design.level)
    pairwise = [{"test_set": name, **pair} for name, result in tests_by_set.items()
                for pair in result.get("pairwise_mcnemar", [])]
    write_json_atomic(out_dir / f"{SUMMARY}.json", {
        "experiment": "sweep", "design": design, "level": mix_design.level, "levels": levels, "seeds": seeds,
        "train_size": size if design == "share" else None, "real_size": size if design == "added" else None,
        "size_means": mix_design.size_meaning, "real_train": _spec_name(real_train_spec),
        "synthetic_train": None if synthetic_train_spec is None else _spec_name(synthetic_train_spec),
        "val": val.label, "tests": test_names, "limit": limit, "recipe": recipe,
        "init": _run_info("sweep", recipe, init)["init"], "settings": dataclasses.asdict(settings), "rows": rows,
        "by_level": level_rows, "statistics": tests_by_set,
        "provenance": provenance_record(config.root, {role: data for role, data in (
            ("real_train", real_data), ("synthetic_train", synthetic_data), ("val", val),
            *((f"test {name}", test) for name, test in tests.items())) if data is not None})})
    _write_csv(level_rows, out_dir / "levels.csv")
    _write_csv(pairwise, out_dir / "pairwise.csv")
    return _write_csv(rows, out_dir / f"{SUMMARY}.csv")


def sweep_report(out_dir: Path | str) -> str:
    """A sweep's figures as text, from ``out_dir/summary.json``: per test set and level the mean,
    sd and 95% CI over seeds, then the test across levels with its control and protocol."""
    summary = json.loads((Path(out_dir) / f"{SUMMARY}.json").read_text(encoding="utf-8"))
    level = summary["level"]
    columns = list(dict.fromkeys(["test_set", level, "fraction", "seeds", "n", "accuracy_mean", "accuracy_sd",
                                  "accuracy_ci_low", "accuracy_ci_high", "macro_f1_mean"]))
    lines = [f"sweep ({summary['design']} design, seeds {summary['seeds']}, recipe {summary['recipe']}, "
             f"init {(summary['init'] or {}).get('fingerprint', 'none: from scratch')}); mean over seeds with sd and "
             "95% t interval clipped to [0, 1] (NaN with one seed; each run's bootstrap CI over faces is in "
             "summary.csv):",
             pd.DataFrame(summary["by_level"])[columns].to_string(index=False, float_format=lambda v: f"{v:.4f}")]
    for test_set, result in summary["statistics"].items():
        if "cochran_q" not in result:
            lines.append(f"{test_set}: no test ({result['note']})")
            continue
        q = result["cochran_q"]
        lines.append(f"{test_set}: Cochran's Q = {q['q']:.3f}, df {q['df']}, p = {q['p_permutation']:.4g} "
                     f"(permutation, {q['permutations']} draws; chi-square p = {q['p_value']:.4g}) over "
                     f"{q['blocks']} blocks = {len(result['seeds'])} seed(s) x {result['faces']} faces, "
                     f"{q['informative_blocks']} of which differ between mixes")
        for pair in result["pairwise_mcnemar"]:
            lines.append(f"  {level} {pair[level + '_a']:g} vs {pair[level + '_b']:g}: accuracy "
                         f"{pair['accuracy_a']:.4f} vs {pair['accuracy_b']:.4f}, McNemar p = {pair['p_value']:.4g}, Holm p = "
                         f"{pair['p_holm']:.4g}")
        for row in result["control_between_seeds"]:
            lines.append(f"  control, seed {row['seed_a']} vs {row['seed_b']} at {level} {row[level]:g}: "
                         f"{row['a_only_correct']} vs {row['b_only_correct']} faces right only in one, "
                         f"McNemar p = {row['p_value']:.4g}")
    lines.append(f"protocol: {TEST_PROTOCOL}")
    lines.append(f"-> {Path(out_dir) / (SUMMARY + '.csv')}, levels.csv, pairwise.csv, {SUMMARY}.json")
    return "\n".join(lines)


def cross_validate(config: Config, spec: DatasetSpec, k: int, settings: TrainSettings, out_dir: Path | str,
                   n_bootstrap: int = 1000, progress: bool = True, *, init: FerModel | None = None,
                   recipe: str | None = None) -> dict[str, Any]:
    """Stratified ``k``-fold cross-validation of ``settings`` on the dataset ``spec``, every run
    from ``init`` weights when given (``recipe`` names the stages, for the records).

    Faces cut from one generated grid (:func:`fer_core.data.grid_groups`) stay in one fold and,
    inside the training folds, on one side of the validation split (a stratified
    ``config.data.val_fraction`` that selects the best epoch); the held-out fold only scores it.
    Writes ``out_dir/fold-<i>/``, ``out_dir/folds.csv`` and ``out_dir/crossval.json`` (per-fold
    metrics, mean and std).
    """
    from fer_core.workflows import evaluate_model

    out_dir = config.resolve(out_dir)
    dataset = _open(config, spec)
    faces = as_face_crops(dataset, _face_pipeline(config, settings, dataset))
    known = np.flatnonzero(dataset.labels >= 0)
    labels = dataset.labels[known]
    groups = grid_groups([dataset[int(i)].key for i in known])
    grouped_by = "face" if len(set(groups)) == len(groups) else "grid"
    eval_config = _evaluation_config(config, out_dir)
    val_fraction = config.data.val_fraction
    rows: list[dict[str, Any]] = []
    for fold, (train_pos, held_pos) in enumerate(stratified_group_kfold(labels, groups, k, settings.seed)):
        kept, held_for_val = stratified_group_split(labels[train_pos], groups[train_pos], val_fraction, settings.seed)
        train = faces.subset(known[train_pos[kept]])
        val = faces.subset(known[train_pos[held_for_val]])
        held_out = dataset.subset(known[np.sort(held_pos)])
        run = f"fold-{fold}"
        result = Trainer(out_dir / run, settings, train, val, init=_start_model(init),
                         extra_info={**_run_info("crossval", recipe, init), "spec": _spec_name(spec), "k": k,
                                     "fold": fold, "grouped_by": grouped_by}).fit(progress)
        weights = out_dir / run / "best.safetensors"
        evaluation = evaluate_model(eval_config, load_model(weights), held_out, weights_path=weights,
                                    name=f"eval-{run}", n_bootstrap=n_bootstrap, progress=progress)
        rows.append({"fold": fold, "train_size": len(train), "val_size": len(val),
                     "held_out_groups": len(set(groups[held_pos])), "best_epoch": result["best"]["epoch"],
                     "val_accuracy": result["best"]["val_accuracy"], **_score_row(evaluation.metrics)})
    scores = pd.DataFrame(rows)
    aggregate = {metric: {"mean": float(scores[metric].mean()), "std": float(scores[metric].std(ddof=1))}
                 for metric in ("accuracy", "macro_f1")}
    _write_csv(rows, out_dir / "folds.csv")
    summary = {"experiment": "crossval", "spec": _spec_name(spec), "k": k, "val_fraction": val_fraction,
               "grouped_by": grouped_by, "recipe": recipe, "init": _run_info("crossval", recipe, init)["init"],
               "settings": dataclasses.asdict(settings), "folds": rows, **aggregate,
               "provenance": provenance_record(config.root, {"data": dataset})}
    write_json_atomic(out_dir / "crossval.json", summary)
    return summary
