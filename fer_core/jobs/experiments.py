"""RQ2 experiments as jobs: the sweep over real + synthetic mixes (the cross-domain matrix's
source) with repeated seeds and a paired test across mixes, and k-fold cross-validation that
keeps every generated grid inside one fold.

Two designs of the sweep (:data:`~fer_core.training.experiments.DESIGNS`): ``share`` keeps the
number of training faces fixed and varies the synthetic share; ``added`` keeps the real faces
fixed and adds N synthetic ones. Every run goes through :class:`~fer_core.training.Trainer`
(best epoch chosen on the validation set), from scratch or from ``init`` weights (fine-tuning,
the plan's design), and every score through :func:`fer_core.jobs.workflows.evaluate_model`.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fer_core.config import Config
from fer_core.data import FaceDataset, grid_groups, stratified_group_kfold, stratified_group_split
from fer_core.errors import InvalidArgument
from fer_core.evaluation import cochran_q, holm, mcnemar, seed_spread
from fer_core.faces import FacePipeline
from fer_core.jobs.options import JobOptions
from fer_core.jobs.workflows import dataset_for, evaluate_model
from fer_core.models import FerModel, load_model
from fer_core.precompute import select
from fer_core.runs import Run, provenance_record, write_json_atomic
from fer_core.scoring import scored_rows
from fer_core.training.experiments import DEFAULT_FRACTIONS, DESIGNS, SUMMARY, DatasetSpec, as_face_crops
from fer_core.training.trainer import Trainer, TrainSettings
from fer_core.validation import StrOptions, validate_params


def _evaluation_config(config: Config, out_dir: Path) -> Config:
    """``config`` with evaluation runs written under ``out_dir``."""
    return dataclasses.replace(config, paths=dataclasses.replace(config.paths, runs_dir=out_dir))


def _face_pipeline(options: JobOptions, settings: TrainSettings, *datasets: FaceDataset) -> FacePipeline | None:
    """The configured face pipeline at the training input size; None when every dataset is crops."""
    if all(d.pre_cropped for d in datasets):
        return None
    return options.face_pipeline(settings.input_size)


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
    return spec if isinstance(spec, FaceDataset) else dataset_for(config, spec)


def _spec_name(spec: DatasetSpec) -> str:
    return spec.name if isinstance(spec, FaceDataset) else spec


def _limited(dataset: FaceDataset, limit: int | None) -> FaceDataset:
    """A seeded (seed 0) class-stratified sample of ``limit`` faces, labelled so (quick trials)."""
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
    scored = scored_rows(table)
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


@validate_params({"design": [StrOptions(DESIGNS)]})
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
    mix_design = DESIGNS[design]
    levels = sorted({mix_design.check(level) for level in (fractions if design == "share" else added)})
    seeds = sorted(set(seeds)) or [settings.seed]
    test_names = [_spec_name(spec) for spec in test_specs]
    if not levels or not test_specs:
        raise InvalidArgument(f"a sweep needs at least one {mix_design.level} and one test set")
    if len(set(test_names)) != len(test_names):
        raise InvalidArgument(f"the test sets need distinct names, got {test_names}")
    out_dir, options = config.resolve(out_dir), JobOptions.from_config(config, progress)
    real_data = _open(config, real_train_spec)
    synthetic_data = _open(config, synthetic_train_spec) if synthetic_train_spec is not None else None
    crops = _face_pipeline(options, settings, *(d for d in (real_data, synthetic_data) if d is not None))
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
                         face_pipeline=_face_pipeline(options, settings, val), extra_info=info).fit(progress)
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
    out_dir, options = config.resolve(out_dir), JobOptions.from_config(config, progress)
    dataset = _open(config, spec)
    faces = as_face_crops(dataset, _face_pipeline(options, settings, dataset))
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
