"""RQ2 end to end at toy scale, on the shared faces: the sweep fine-tuned from ``--init`` with
repeated seeds (mean, sd and CI over seeds, Cochran's Q and pairwise McNemar with Holm, the
between-seed control), the ``added`` design, recipes and their flags, mixes in ``train``, the
documented ``sd_faces:train`` / ``sd_faces:test`` split, the grid-level split of generated faces
and cross-validation that keeps each grid in one fold.

Training is the tiny model (``tiny_model``) at 48 px, one step per epoch on a handful of faces;
faces are classified whole (``faces.detector=none``: the detector is not what these tests check).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from fer_core.cli import main
from fer_core.data import (FolderDataset, SplitWarning, grid_groups, open_dataset, per_class_split,
                           sequential_group_splits, stratified_group_kfold, stratified_group_split)
from fer_core.data.splits import warn_empty_sides
from fer_core.errors import DataError, InvalidArgument
from fer_core.evaluation import cochran_q, holm, mcnemar, seed_spread
from fer_core.jobs.experiments import sweep
from fer_core.labels import EMOTIONS
from fer_core.models import load_model
from fer_core.runs import Run
from fer_core.training.experiments import added_training_set
from fer_core.training.recipes import parse_stages, recipe_stages
from fer_core.training.trainer import GRADUAL_UNFREEZING_STAGES, Stage

#: Faces per generated grid in the toy grid folder, grids per emotion.
GRID_FACES, GRIDS_PER_EMOTION = 4, 3
#: Flags of every toy training run: one step of 8 faces per epoch, small bootstrap, faces whole.
TOY = ["--batch-size", "8", "--max-steps", "1", "--bootstrap", "100"]
WHOLE_FACES = ["--set", "faces.detector=none"]


def grid_name(emotion: str, grid: int, cell: int) -> str:
    """How ``fer-core synth extract`` names a face: ``<grid file stem>_r<row>_c<column>``."""
    return f"{emotion}-grid{grid}_r{cell // 2}_c{cell % 2}"


@pytest.fixture(scope="module")
def rq2_project(project, synthetic_root, fer2013_root, tmp_path_factory) -> Path:
    """A project with the shared real data and SD faces, ``synthetic:train`` made of SD faces
    shrunk to 64 px crops and named as cut from generated grids (3 grids of 4 faces per emotion),
    its config, and ``val/``: 16 FER2013 public test faces (a small validation folder)."""
    root = tmp_path_factory.mktemp("rq2")
    (root / "configs").mkdir()
    (root / "configs" / "config.yaml").write_text((project / "configs" / "config.yaml").read_text())
    (root / "data").mkdir()
    for part in ("real", "synthetic/sd_faces"):
        (root / "data" / part).parent.mkdir(parents=True, exist_ok=True)
        (root / "data" / part).symlink_to((project / "data" / part).resolve(), target_is_directory=True)
    for file in [f for emotion in ("angry", "happy", "neutral", "sad") for f in
                 sorted((fer2013_root / "test" / emotion).glob("PublicTest_*"))[:4]]:
        (root / "val" / file.parent.name).mkdir(parents=True, exist_ok=True)
        (root / "val" / file.parent.name / file.name).symlink_to(file)
    for class_dir in sorted(p for p in synthetic_root.iterdir() if p.is_dir()):
        folder = root / "data" / "synthetic" / "processed" / "train" / class_dir.name
        folder.mkdir(parents=True)
        for index, file in enumerate(sorted(class_dir.glob("*.jpg"))[:GRID_FACES * GRIDS_PER_EMOTION]):
            name = grid_name(class_dir.name, index // GRID_FACES, index % GRID_FACES)
            Image.open(file).resize((64, 64), Image.BILINEAR).save(folder / f"{name}.png")
    return root


def cli(root: Path, *args: str) -> list[str]:
    return ["--config", str(root / "configs" / "config.yaml"), *WHOLE_FACES, *args]


# -- statistics --------------------------------------------------------------------------------

def test_cochran_q_holm_and_seed_spread_match_references():
    outcomes = (np.random.default_rng(7).random((40, 3)) < np.array([0.4, 0.55, 0.75])).astype(int)
    q = cochran_q(outcomes)
    # statsmodels 0.15.0 cochrans_q on this array (installed apart, once): Q 1.5625, p 0.45783336177161427
    assert q["q"] == pytest.approx(1.5625, abs=1e-12) and q["df"] == 2
    assert q["p_value"] == pytest.approx(0.45783336177161427, rel=1e-12)
    assert q["informative_blocks"] == int(((outcomes.sum(1) > 0) & (outcomes.sum(1) < 3)).sum())
    two = outcomes[:, :2].astype(bool)  # k = 2: McNemar's chi-square (b - c)^2 / (b + c), uncorrected
    b, c = int((two[:, 0] & ~two[:, 1]).sum()), int((~two[:, 0] & two[:, 1]).sum())
    assert cochran_q(two)["q"] == pytest.approx((b - c) ** 2 / (b + c), rel=1e-12)
    assert cochran_q(np.ones((5, 3)))["p_value"] == 1.0  # every block agrees: nothing to test
    for seed in range(3):  # k = 2: the permutation test is McNemar's exact test
        pair = np.random.default_rng(seed).random((60, 2)) < np.array([0.4, 0.6])
        exact = mcnemar(pair[:, 0], pair[:, 1])["p_value"]
        # 9999 seeded draws: within 4 Monte Carlo standard errors (+ the 1/(n+1) of the estimator)
        assert abs(cochran_q(pair)["p_permutation"] - exact) <= 4 * np.sqrt(exact * (1 - exact) / 9999) + 1e-4
    with pytest.raises(DataError, match="0/1"):
        cochran_q(np.full((3, 2), 2))
    # statsmodels multipletests(method="holm") on these p-values: [0.04, 0.09, 0.09, 0.2]
    assert holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2], abs=1e-12)
    spread = seed_spread([0.5, 0.6, 0.7])
    low, high = stats.t.interval(0.95, 2, loc=0.6, scale=0.1 / np.sqrt(3))
    assert (spread["mean"], spread["sd"]) == pytest.approx((0.6, 0.1)) and (spread["ci_low"], spread["ci_high"]) == \
        pytest.approx((low, high))
    assert np.isnan(seed_spread([0.5])["sd"]) and np.isnan(seed_spread([0.5])["ci_low"])


# -- recipes -----------------------------------------------------------------------------------

def test_recipe_flags_are_an_error_unless_they_set_the_scratch_stage():
    assert recipe_stages(None, None, None, False, default_epochs=30, default_lr=2e-3) == \
        ("scratch", (Stage(30, 2e-3, "all"),))
    assert recipe_stages("scratch", 4, 1e-3, True, default_epochs=30, default_lr=2e-3)[1] == (Stage(4, 1e-3, "all"),)
    assert recipe_stages("gradual", None, None, True, default_epochs=30, default_lr=2e-3) == \
        ("gradual", GRADUAL_UNFREEZING_STAGES)
    with pytest.raises(InvalidArgument, match=r"--epochs sets the scratch recipe only; recipe gradual trains head 2"):
        recipe_stages("gradual", 3, None, True, default_epochs=30, default_lr=2e-3)
    with pytest.raises(InvalidArgument, match=r"--lr sets .* recipe hsemotion \(the default with --init\)"):
        recipe_stages(None, None, 1e-3, True, default_epochs=30, default_lr=2e-3)
    assert parse_stages("head:1:1e-3, top:2:3:3e-4,all:2:1e-4") == (Stage(1, 1e-3, "head"), Stage(3, 3e-4, "top:2"),
                                                                  Stage(2, 1e-4, "all"))
    with pytest.raises(InvalidArgument, match="is neither"):
        parse_stages("fast")
    with pytest.raises(InvalidArgument, match=r"Stage\(\) argument 'epochs': expected an integer >= 1, got 0"):
        parse_stages("head:0:1e-3")


def test_train_refuses_ignored_flags_and_trains_a_mix_printing_its_settings(rq2_project, tiny_model, capsys):
    init = str(tiny_model)
    base = cli(rq2_project, "train", "--train", "fer2013:test", "--val", str(rq2_project / "val"), "--init", init,
               "--name")
    assert main(base + ["refused", "--recipe", "gradual", "--epochs", "3"]) == 2
    assert "--epochs sets the scratch recipe only" in capsys.readouterr().err
    assert main(base + ["refused", "--architecture", "resnet18"]) == 2
    assert "--architecture resnet18 contradicts the --init model (mobilenetv3_small_050)" in capsys.readouterr().err
    assert main(base + ["refused", "--synthetic-fraction", "0.5"]) == 2
    assert "give the synthetic faces with --synthetic" in capsys.readouterr().err
    assert not (rq2_project / "runs" / "refused").exists()
    code = main(base + ["mix", "--synthetic", "sd_faces:train", "--synthetic-fraction", "0.5", "--size", "16",
                        "--recipe", "all:1:1e-4", "--batch-size", "8", "--max-steps", "1", "--input-size", "64"])
    out = capsys.readouterr().out
    assert code == 0
    fingerprint = load_model(tiny_model).fingerprint
    assert (f"training mix (recipe all:1:1e-4, from {fingerprint}): mobilenetv3_small_050 at 64 px; all 1 epoch at lr "
            "0.0001; batch 8") in out
    tuned, init = load_model(rq2_project / "runs" / "mix" / "best.safetensors"), load_model(tiny_model)
    assert (tuned.input_size, init.input_size) == (64, 48)  # fine-tuned at a new size, the rest of its input kept
    assert dataclasses.replace(tuned.preprocessing, input_size=48) == init.preprocessing
    run = json.loads((rq2_project / "runs" / "mix" / "run.json").read_text())
    assert run["composition"] == {"real": 8, "synthetic": 8} and run["synthetic_train"] == "sd_faces:train"
    assert run["init"]["fingerprint"] == fingerprint
    assert run["settings"]["stages"] == [{"epochs": 1, "lr": 1e-4, "trainable": "all"}]


# -- the sweep ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sweep_dir(rq2_project, tiny_model) -> tuple[Path, str]:
    """A share-design sweep (FER2013 test faces as the real pool, fractions 0 and 0.5, 16 faces
    per run, seeds 0 and 1) fine-tuned from the tiny model, selected on 12 FER+ validation faces
    and scored on 12 SD test faces (``--limit 12``); and what it printed."""
    import contextlib
    import io
    out = rq2_project / "runs" / "sweep"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(cli(rq2_project, "sweep", "--real", "fer2013:test", "--synthetic", "sd_faces:train",
                        "--val", "ferplus:valid", "--test", "sd_faces:test", "--init", str(tiny_model),
                        "--recipe", "all:1:1e-4", "--seeds", "0,1", "--fractions", "0,0.5", "--size", "16",
                        "--limit", "12", "--out", str(out), *TOY))
    assert code == 0
    return out, printed.getvalue()


def test_sweep_from_init_with_two_seeds_writes_spread_and_paired_test(sweep_dir, tiny_model):
    out, printed = sweep_dir
    rows = pd.read_csv(out / "summary.csv")
    assert sorted(rows["run"]) == ["synthetic-000-seed0", "synthetic-000-seed1", "synthetic-050-seed0",
                                   "synthetic-050-seed1"]
    assert set(rows["n"]) == {12} and set(rows["train_size"]) == {16}
    assert rows.set_index("run")["n_synthetic"].to_dict()["synthetic-050-seed1"] == 8
    init = load_model(tiny_model)
    for run in rows["run"]:  # fine-tuned from the tiny model, not trained from scratch
        info = json.loads((out / run / "run.json").read_text())
        assert info["init"]["fingerprint"] == init.fingerprint and info["recipe"] == "all:1:1e-4"
        assert info["seed"] == int(run[-1]) and info["settings"]["seed"] == int(run[-1])
        tuned = load_model(out / run / "best.safetensors").module.state_dict()
        start = init.module.state_dict()
        change = sum(float((tuned[k].float() - start[k].float()).norm()) for k in start if start[k].is_floating_point())
        size = sum(float(start[k].float().norm()) for k in start if start[k].is_floating_point())
        assert change < 0.05 * size  # one step at lr 1e-4 moves the weights by far less than 5% (scratch: ~100%)
    assert "training synthetic-050-seed1 (recipe all:1:1e-4, from" in printed
    # mean, sd and t interval over the two seeds, per fraction
    levels = pd.read_csv(out / "levels.csv").set_index("fraction")
    for fraction, runs in rows.groupby("fraction"):
        accuracy = runs["accuracy"].to_numpy()
        level = levels.loc[fraction]
        assert level["seeds"] == 2 and level["accuracy_mean"] == pytest.approx(accuracy.mean())
        assert level["accuracy_sd"] == pytest.approx(accuracy.std(ddof=1))
        if accuracy.std() > 0:
            low, high = stats.t.interval(0.95, 1, loc=accuracy.mean(), scale=accuracy.std(ddof=1) / np.sqrt(2))
            assert (level["accuracy_ci_low"], level["accuracy_ci_high"]) == pytest.approx(
                (max(low, 0.0), min(high, 1.0)))
    # the test across fractions, recomputed from the evaluations' own predictions
    summary = json.loads((out / "summary.json").read_text())
    result = summary["statistics"]["sd_faces:test"]
    correct = {}
    for row in rows.itertuples():
        table = Run.load(out / row.evaluation).predictions
        correct[(row.fraction, row.seed)] = (table["pred"] == table["label"]).to_numpy()
    blocks = np.column_stack([np.concatenate([correct[(f, 0)], correct[(f, 1)]]) for f in (0.0, 0.5)])
    assert result["faces"] == 12 and result["cochran_q"]["blocks"] == 24
    b, c = int((blocks[:, 0] & ~blocks[:, 1]).sum()), int((~blocks[:, 0] & blocks[:, 1]).sum())
    assert result["cochran_q"]["q"] == pytest.approx(0.0 if b + c == 0 else (b - c) ** 2 / (b + c))
    pair = result["pairwise_mcnemar"][0]
    assert (pair["a_only_correct"], pair["b_only_correct"]) == (b, c) and pair["p_holm"] == pair["p_value"]
    control = {row["fraction"]: row for row in result["control_between_seeds"]}
    assert control[0.5]["p_value"] == mcnemar(correct[(0.5, 0)], correct[(0.5, 1)])["p_value"]
    assert "Cochran's Q" in printed and "control, seed 0 vs 1" in printed and "protocol:" in printed
    assert pd.read_csv(out / "pairwise.csv")["test_set"].tolist() == ["sd_faces:test"]


def test_added_design_keeps_the_real_faces_and_nests_the_synthetic_ones(rq2_project):
    real = open_dataset("fer2013:test", rq2_project / "data")
    synthetic = open_dataset("sd_faces:train", rq2_project / "data")
    mixes = {n: added_training_set(real, synthetic, n, real_size=70, seed=3) for n in (0, 40, 80)}
    keys = {n: [s.key for s in mix] for n, mix in mixes.items()}
    real_keys = {n: [k for k in keys[n] if k.startswith("0-real")] for n in keys}
    assert real_keys[0] == real_keys[40] == real_keys[80] and len(real_keys[0]) == 70  # the fixed real set
    added = {n: set(keys[n]) - set(real_keys[n]) for n in keys}
    assert len(added[40]) == 40 and added[40] < added[80]  # nested: the 40 are among the 80
    shares = np.bincount(synthetic.labels, minlength=len(EMOTIONS)) / len(synthetic)
    counts = np.bincount(mixes[40].labels[mixes[40].domains == "synthetic"], minlength=len(EMOTIONS))
    assert np.abs(counts - 40 * shares).max() <= 1  # every emotion within one face of its share
    with pytest.raises(DataError, match="cannot add 1000 synthetic faces"):
        added_training_set(real, synthetic, 1000)


def test_sweep_refuses_bad_arguments_before_opening_any_data(tmp_path):
    # nothing is read before these checks, so no config or dataset is needed
    with pytest.raises(InvalidArgument, match=r"sweep\(\) argument 'design': expected one of \['added', 'share'\], "
                                              r"got 'nested'"):
        sweep(None, None, None, None, ("fer2013:test",), None, tmp_path, design="nested")
    with pytest.raises(InvalidArgument, match="a sweep needs at least one fraction and one test set"):
        sweep(None, None, None, None, (), None, tmp_path, seeds=(0,))
    with pytest.raises(InvalidArgument, match=r"distinct names, got \['sd_faces', 'sd_faces'\]"):
        sweep(None, None, None, None, ("sd_faces", "sd_faces"), None, tmp_path, seeds=(0,))


def test_cli_added_design_names_its_runs_by_count(rq2_project, tiny_model, capsys):
    out = rq2_project / "runs" / "added"
    code = main(cli(rq2_project, "sweep", "--real", "fer2013:test", "--synthetic", "synthetic:train",
                    "--val", str(rq2_project / "val"), "--test", "sd_faces:test", "--init", str(tiny_model), "--recipe",
                    "head:1:1e-3", "--added", "0,8", "--size", "8", "--limit", "10", "--out", str(out), *TOY))
    assert code == 0, capsys.readouterr().err
    rows = pd.read_csv(out / "summary.csv")
    assert rows[["run", "n_added", "n_real", "n_synthetic"]].values.tolist() == [["added-00000", 0, 8, 0],
                                                                                  ["added-00008", 8, 8, 8]]
    assert rows["fraction"].tolist() == [0.0, 0.5]  # the synthetic share each run ended up with
    assert json.loads((out / "summary.json").read_text())["real_size"] == 8
    assert "n_added 0 vs 8" in capsys.readouterr().out


# -- splits ------------------------------------------------------------------------------------

def test_sd_faces_split_is_stratified_seeded_disjoint_and_complete(rq2_project):
    data = rq2_project / "data"
    every, train, test = (open_dataset(spec, data) for spec in ("sd_faces", "sd_faces:train", "sd_faces:test"))
    assert (len(every), len(train), len(test)) == (476, 381, 95)  # sd_faces alone: all 476 (the shipped model's test)
    assert (every.label, train.label, test.label) == ("sd_faces", "sd_faces:train", "sd_faces:test")
    train_keys, test_keys = {s.key for s in train}, {s.key for s in test}
    assert not train_keys & test_keys and train_keys | test_keys == {s.key for s in every}
    counts = every.class_counts()
    assert test.class_counts() == {e: round(0.2 * n) for e, n in counts.items()}  # 20% of every emotion
    assert [s.key for s in open_dataset("sd_faces:test", data)] == [s.key for s in test]  # seeded: the same again
    kept, held = per_class_split(every.labels, 0.2, seed=1)
    assert {every[int(i)].key for i in held} != test_keys  # another seed, another draw
    no_anger = every.labels != EMOTIONS.index("Anger")  # a class's draw does not depend on the other classes
    _, held_without = per_class_split(every.labels[no_anger], 0.2, seed=0)
    assert {every[int(i)].key for i in np.flatnonzero(no_anger)[held_without]} == \
        {s.key for s in test if s.label != EMOTIONS.index("Anger")}


def test_grid_split_puts_every_emotion_on_both_sides_and_is_prefix_stable(synthetic_root):
    faces = FolderDataset(synthetic_root, None, pre_cropped=False)
    by_emotion = [[(EMOTIONS[label], chunk) for chunk in np.array_split(members, -(-len(members) // 6))]
                  for label in np.unique(faces.labels) for members in [np.flatnonzero(faces.labels == label)]]
    arrival = [grid for turn in itertools.zip_longest(*by_emotion) for grid in turn if grid is not None]
    assert len(arrival) == 81  # the 476 SD faces as grids of about 6 faces of one emotion, emotions taking turns
    splits = sequential_group_splits([emotion for emotion, _ in arrival], 0.2, seed=0)
    for emotion in {e for e, _ in arrival}:
        sides = [split for (e, _), split in zip(arrival, splits) if e == emotion]
        assert abs(sides.count("test") - 0.2 * len(sides)) <= 1  # a fifth of its grids, within one grid
        test_faces = sum(len(chunk) for (e, chunk), split in zip(arrival, splits) if e == emotion and split == "test")
        assert 0 < test_faces < sum(len(chunk) for e, chunk in arrival if e == emotion)  # faces on both sides
    for n in range(1, len(arrival)):  # adding grids never moves an earlier one
        assert sequential_group_splits([e for e, _ in arrival[:n]], 0.2, seed=0) == splits[:n]
    # the case: 9 grids, one emotion with a single grid: every emotion with two grids on
    # both sides, and a warning naming the one left without test faces
    nine = ["Anger", "Happiness", "Neutral", "Sadness", "Surprise", "Anger", "Happiness", "Neutral", "Sadness"]
    split = sequential_group_splits(nine, 0.2, seed=0)
    for emotion in set(nine) - {"Surprise"}:
        assert {s for e, s in zip(nine, split) if e == emotion} == {"train", "test"}
    with pytest.warns(SplitWarning, match="Surprise: 6 training and 0 test faces"):
        warn_empty_sides({e: {s: 6 * sum(1 for e2, s2 in zip(nine, split) if (e2, s2) == (e, s))
                              for s in ("train", "test")} for e in set(nine)}, "synthetic train/test split")


def test_group_folds_keep_every_grid_in_one_fold(rq2_project):
    dataset = open_dataset("synthetic:train", rq2_project / "data")
    groups = grid_groups([s.key for s in dataset])
    assert len(set(groups)) == 5 * GRIDS_PER_EMOTION
    folds = stratified_group_kfold(dataset.labels, groups, 3, seed=0)
    held = [set(groups[held_out]) for _, held_out in folds]
    assert sorted(g for fold in held for g in fold) == sorted(set(groups))  # each grid held out exactly once
    assert all(set(dataset.labels[h]) == set(dataset.labels) for _, h in folds)  # every emotion in every fold
    kept, val = stratified_group_split(dataset.labels, groups, 0.2, seed=0)
    assert not set(groups[kept]) & set(groups[val]) and len(kept) + len(val) == len(dataset)
    assert len(set(groups[val])) == 5 and set(dataset.labels[val]) == set(dataset.labels)  # one grid per emotion
    with pytest.raises(DataError, match="only 3 grid"):
        stratified_group_kfold(dataset.labels, groups, 4, seed=0)
    singles = grid_groups([s.key for s in open_dataset("sd_faces", rq2_project / "data")])
    assert len(set(singles)) == 476  # faces not cut from a grid are each their own group


def test_crossval_from_init_never_shares_a_grid_between_folds(rq2_project, tiny_model, capsys):
    out = rq2_project / "runs" / "cv"
    code = main(cli(rq2_project, "crossval", "--dataset", "synthetic:train", "--k", "2", "--init", str(tiny_model),
                    "--recipe", "all:1:1e-4", "--out", str(out), *TOY))
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "crossval.json").read_text())
    assert summary["grouped_by"] == "grid" and summary["recipe"] == "all:1:1e-4"
    held = [{grid_groups([key])[0] for key in Run.load(out / f"eval-fold-{fold}").predictions["key"]}
            for fold in range(2)]
    assert sum(len(fold) for fold in held) == len(set().union(*held)) == 5 * GRIDS_PER_EMOTION
    assert [row["held_out_groups"] for row in summary["folds"]] == [len(fold) for fold in held]
    assert json.loads((out / "fold-0" / "run.json").read_text())["init"]["fingerprint"] == \
        load_model(tiny_model).fingerprint
