"""Every record a run leaves names how it was made: the command line (or the library call),
the project's git commit, the package versions and a fingerprint of its data; domain-gap
reports are kept under runs/ with names that tell their limits and seeds apart."""

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from fer_core import __version__
from fer_core.cli import main
from fer_core.config import load_config
from fer_core.data import FerPlusDataset, open_dataset
from fer_core.models import load_model
from fer_core.precompute import gap_report_folders
from fer_core.runs import NOT_A_REPO, Run, data_fingerprint, git_state, provenance_record
from fer_core.views import dataset_spec, rows_for_keys, stored_gap_report
from fer_core.workflows import SHIPPED_WEIGHTS, evaluate_model

#: Faces of the stratified FER+ test sample the evaluations score (``limit``).
LIMIT = 12
#: The model the records are made with (its 64 px network scores a few faces in a second).
MODEL = Path(__file__).resolve().parent.parent / SHIPPED_WEIGHTS


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), "-c", "user.name=test", "-c", "user.email=test@example.org",
                           *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def ferplus_test(ferplus_root):
    return FerPlusDataset(ferplus_root, "test")


@pytest.fixture
def plain_project(project, tmp_path) -> Path:
    """A project folder outside any git checkout (its config only; its data the shared project's)."""
    root = tmp_path / "plain"
    (root / "configs").mkdir(parents=True)
    shutil.copy(project / "configs" / "config.yaml", root / "configs" / "config.yaml")
    return root


@pytest.fixture
def repo_project(plain_project) -> Path:
    """:func:`plain_project` under git, with one commit of its config."""
    root = plain_project
    git(root, "init", "-q")
    git(root, "add", "configs")
    git(root, "commit", "-q", "-m", "config")
    return root


def evaluate(root: Path, project: Path, dataset, name: str) -> Run:
    config = load_config(root / "configs" / "config.yaml", {"data.root": str(project / "data")})
    run = evaluate_model(config, load_model(MODEL), dataset, weights_path=MODEL, name=name, limit=LIMIT,
                         n_bootstrap=50, progress=False)
    assert run.path.parent == root / "runs" and run.metrics["n"] == LIMIT
    return run


def test_evaluation_records_command_commit_versions_and_data(repo_project, project, ferplus_test):
    run = evaluate(repo_project, project, ferplus_test, "in-repo")
    record = run.info["provenance"]
    assert record["command"]["via"] == "library"
    call = record["command"]["call"]
    assert call.startswith("fer_core.jobs.workflows.evaluate_model(config=<Config>, model=<FerModel>, "
                           "dataset=<SampledDataset>")   # the argument as the function holds it by then
    assert f"limit={LIMIT}" in call and "name='in-repo'" in call
    assert record["git"] == {"commit": git(repo_project, "rev-parse", "HEAD"), "dirty": False,
                             "root": str(repo_project.resolve())}   # runs/ is untracked: not dirty
    versions = record["versions"]
    assert versions["fer_core"] == __version__ and versions["numpy"] == np.__version__
    assert versions["torch"] == torch.__version__ and versions["timm"] == timm.__version__
    data = record["data"]["test"]   # the faces scored: the stratified sample the limit drew
    assert data["label"] == f"ferplus:test[stratified {LIMIT}, seed 0]" and data["size"] == LIMIT
    assert data["limit"] == LIMIT
    # the spec opens the whole dataset the sample came from, and every scored key is found in it
    # (the Confusion page opened the sample's label, "ferplus:test[stratified 12, seed 0]", and failed)
    assert dataset_spec(run) == run.info["dataset"]["spec"] == "ferplus:test"
    whole = open_dataset(dataset_spec(run), project / "data")
    assert len(whole) == len(ferplus_test) and len(rows_for_keys(whole, list(run.predictions["key"]))) == LIMIT
    scored = run.predictions
    lines = sorted(f"{key}\t{label}" for key, label in zip(scored["key"], scored["label"]))
    assert data["sha256"] == hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
    # the digest names the faces and their labels, not their order; another face changes it
    first = ferplus_test.subset(np.arange(LIMIT))
    assert data_fingerprint(first.subset(np.arange(LIMIT)[::-1]))["sha256"] == data_fingerprint(first)["sha256"]
    assert data_fingerprint(ferplus_test.subset(np.arange(1, LIMIT + 1)))["sha256"] != data_fingerprint(first)["sha256"]
    # a changed tracked file makes the checkout dirty
    (repo_project / "configs" / "config.yaml").write_text(
        (repo_project / "configs" / "config.yaml").read_text() + "\n# changed\n")
    assert git_state(repo_project / "runs" / "not-made-yet")["dirty"] is True


def test_outside_a_repo_and_through_the_cli(plain_project, project, ferplus_test, tmp_path, capsys):
    record = evaluate(plain_project, project, ferplus_test, "no-repo").info["provenance"]
    assert record["git"] == {"commit": NOT_A_REPO, "dirty": None, "root": None}
    settings = ["--config", str(project / "configs" / "config.yaml"), "--set", f"paths.runs_dir={tmp_path / 'runs'}"]
    command = [*settings, "evaluate", "--model", str(MODEL), "--dataset", "ferplus:test", "--limit", "6",
               "--name", "cli-eval", "--bootstrap", "50"]
    assert main(command) == 0
    capsys.readouterr()
    recorded = Run.load(tmp_path / "runs" / "cli-eval").info["provenance"]
    assert recorded["command"]["via"] == "cli" and recorded["command"]["argv"] == ["fer-core", *command]
    assert recorded["data"]["test"]["size"] == 6 and recorded["data"]["test"]["limit"] == 6
    assert provenance_record(tmp_path)["command"]["via"] == "library"   # outside the command again


def test_gap_reports_are_kept_per_limit_and_seed_under_runs(project, face_model_path, tmp_path, capsys):
    settings = ["--config", str(project / "configs" / "config.yaml"), "--set", f"paths.runs_dir={tmp_path / 'runs'}",
                "--set", f"paths.cache_dir={tmp_path / 'cache'}",
                "--set", f"faces.mediapipe_model={face_model_path}"]
    pair = ["gap", "--model", str(MODEL), "--real", "ferplus:test", "--synthetic", "sd_faces"]
    reports = []
    for limit, seed in ((12, 0), (16, 1)):
        assert main([*settings, *pair, "--limit", str(limit), "--seed", str(seed)]) == 0
        reports.append(Path(json.loads(capsys.readouterr().out)["path"]))
    first, second = reports
    assert first != second and first.is_file() and second.is_file()
    assert {first.parent, second.parent} == {tmp_path / "runs" / "gap"}
    assert first.name.endswith("-ferplus_test-sd_faces-limit12-sample2000-seed0.json")
    saved = [json.loads(path.read_text()) for path in reports]
    assert [(r["limit"], r["seed"], r["real"]["faces"]) for r in saved] == [(12, 0, 12), (16, 1, 16)]
    assert saved[1]["provenance"]["data"]["synthetic"]["limit"] == 16
    assert saved[1]["provenance"]["data"]["real"]["label"] == "ferplus:test"
    assert saved[1]["provenance"]["command"]["argv"][-4:] == ["--limit", "16", "--seed", "1"]
    # a report written where they used to go (the prunable cache) is still found
    config = load_config(project / "configs" / "config.yaml", {"paths.runs_dir": str(tmp_path / "runs"),
                                                              "paths.cache_dir": str(tmp_path / "cache")})
    written, legacy = gap_report_folders(config)
    fingerprint = load_model(MODEL).fingerprint
    legacy.mkdir(parents=True)
    old = {**saved[0], "limit": 40, "created": "2020-01-01T00:00:00"}
    (legacy / f"{fingerprint}-ferplus_test-sd_faces.json").write_text(json.dumps(old))
    found = stored_gap_report((written, legacy), fingerprint, "ferplus:test", "sd_faces", 40)
    assert found is not None and Path(found["path"]).parent == legacy
    assert stored_gap_report((written, legacy), fingerprint, "ferplus:test", "sd_faces", 16)["seed"] == 1
