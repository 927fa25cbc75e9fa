"""Faults: kill -9 in the middle of every long command, writes that fail midway (a full disk),
and dashboard sessions reading and writing the result cache while a CLI writer fills it.

After a kill, the same command run again gives what an uninterrupted run gives, and the result
cache passes SQLite's integrity check with every entry decoding to its shape. A write that
fails leaves the previous state intact. The table is in docs/hardening.md.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from fer_core.cache import ResultCache
from fer_core.cli import main
from fer_core.config import load_config
from fer_core.data import FerPlusDataset, install_archive
from fer_core.errors import DataError
from fer_core.inference import FORWARD_KINDS, FacePreparer, cached_forward
from fer_core.models import load_model, save_model
from fer_core.precompute import select
from fer_core.runs import Run, write_json_atomic
from tests.conftest import torch_threads

REPO = Path(__file__).resolve().parent.parent
SPLIT_COUNTS = {"FER2013Train": 320, "FER2013Valid": 160, "FER2013Test": 600}  # csv rows; ties are dropped
USAGE_OF = {"FER2013Train": "Training", "FER2013Valid": "PublicTest", "FER2013Test": "PrivateTest"}


def mini_ferplus(source: Path, target: Path) -> None:
    """FER+ with the first faces of each split (symlinks to the real images) and their csv rows."""
    lines = (source / "fer2013new.csv").read_text(encoding="utf-8").splitlines()
    kept = [lines[0]]
    for folder, count in SPLIT_COUNTS.items():
        (target / folder).mkdir(parents=True)
        rows = [line for line in lines[1:] if line.startswith(USAGE_OF[folder] + ",") and line.split(",")[1]]
        rows = [line for line in rows if (source / folder / line.split(",")[1]).is_file()][:count]
        for line in rows:
            (target / folder / line.split(",")[1]).symlink_to(source / folder / line.split(",")[1])
        kept += rows
    (target / "fer2013new.csv").write_text("\n".join(kept) + "\n", encoding="utf-8")


def make_project(root: Path, ferplus_root: Path, tiny_model: Path, face_model_path: Path) -> Path:
    """A project whose data root holds a small FER+ and whose config uses the tiny model."""
    (root / "configs").mkdir(parents=True)
    mini_ferplus(ferplus_root, root / "data" / "real" / "ferplus")
    text = (REPO / "configs" / "config.yaml").read_text()
    text = (text.replace("  weights_path: null", f"  weights_path: {tiny_model}")
            .replace("  mediapipe_model: null", f"  mediapipe_model: {face_model_path}")
            .replace("  device: auto", "  device: cpu"))
    (root / "configs" / "config.yaml").write_text(text)
    return root


@pytest.fixture(scope="module")
def projects(tmp_path_factory, ferplus_root, tiny_model, face_model_path) -> tuple[Path, Path]:
    """Two identical projects: one for interrupted commands, one for the uninterrupted reference."""
    base = tmp_path_factory.mktemp("faults")
    return tuple(make_project(base / name, ferplus_root, tiny_model, face_model_path)
                 for name in ("interrupted", "reference"))


def faces_of(project: Path, split: str) -> int:
    """Faces of the project's FER+ split (rows whose votes tie are not faces of the dataset)."""
    return len(FerPlusDataset(project / "data" / "real" / "ferplus", split))


def distinct_faces(project: Path, *splits: str) -> int:
    """Different images among those splits: the cache is addressed by content, and FER+ holds a
    few byte-identical images."""
    return len({hashlib.sha256(Path(sample.source).read_bytes()).hexdigest()
                for split in splits for sample in FerPlusDataset(project / "data" / "real" / "ferplus", split)})


def cli(project: Path, *args: str) -> int:
    """The command in this process, on one thread like :func:`cli_process` (another thread count
    changes float rounding, and these tests compare runs exactly)."""
    with torch_threads(1):
        return main(["--config", str(project / "configs" / "config.yaml"), *args])


def cli_process(project: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    log = tempfile.TemporaryFile("w+")  # not a pipe: a full pipe would stall the command
    process = subprocess.Popen([sys.executable, "-m", "fer_core", "--config", str(project / "configs" / "config.yaml"),
                                *args], env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    process.log = log
    return process


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], what: str, timeout_s: float = 300) -> None:
    """SIGKILL ``process`` as soon as ``ready()`` holds; fail if it ends first."""
    deadline = time.monotonic() + timeout_s
    try:
        while not ready():
            if process.poll() is not None:
                process.log.seek(0)
                pytest.fail(f"the command ended ({process.returncode}) before {what}: {process.log.read()[-2000:]}")
            assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL, f"the command finished before the kill ({what})"


def cache_rows(path: Path, kind: str | None = None) -> int:
    """Entries (of ``kind``) committed so far; 0 while the database does not exist yet."""
    if not path.is_file():
        return 0
    query, values = ("SELECT COUNT(*) FROM results", ()) if kind is None else \
        ("SELECT COUNT(*) FROM results WHERE kind = ?", (kind,))
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute(query, values).fetchone()[0]
    except sqlite3.OperationalError:  # the table is not created yet
        return 0


def cache_entries(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """Every entry of a result cache decoded straight from SQLite (digest -> kind, array), after
    ``PRAGMA integrity_check``; an entry whose bytes do not fit its dtype and shape fails."""
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = db.execute("SELECT digest, kind, dtype, shape, data FROM results").fetchall()
    entries = {}
    for digest, kind, dtype, shape, data in rows:
        shape = tuple(json.loads(shape))
        assert len(data) == np.dtype(dtype).itemsize * int(np.prod(shape)), f"{kind} entry {digest} is cut short"
        array = np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)
        assert np.isfinite(array.astype(np.float64)).all() or kind in ("face", "keypoints"), f"{kind} {digest}"
        entries[digest] = (kind, array)
    return entries


def assert_same_entries(resumed: Path, reference: Path, atol: float = 1e-5) -> dict[str, int]:
    a, b = cache_entries(resumed), cache_entries(reference)
    assert a.keys() == b.keys(), f"{len(a.keys() - b.keys())} extra, {len(b.keys() - a.keys())} missing entries"
    for digest, (kind, array) in a.items():
        if kind == "diagnostics":  # JSON text: compare the numbers, not their digits
            first, second = (json.loads(bytes(x.astype(np.uint8))) for x in (array, b[digest][1]))
            assert first.keys() == second.keys()
            np.testing.assert_allclose([first[k] for k in first], [second[k] for k in first], rtol=1e-4)
            continue
        np.testing.assert_allclose(array.astype(np.float32), b[digest][1].astype(np.float32), atol=atol,
                                   equal_nan=True, err_msg=kind)
    return {kind: sum(k == kind for k, _ in a.values()) for kind in {k for k, _ in a.values()}}


def assert_same_predictions(resumed: Path, reference: Path) -> None:
    a, b = pd.read_parquet(resumed), pd.read_parquet(reference)
    assert a["key"].tolist() == b["key"].tolist() and a["pred"].tolist() == b["pred"].tolist()
    probs = [c for c in a.columns if c.startswith("prob_")]
    np.testing.assert_allclose(a[probs].to_numpy(), b[probs].to_numpy(), atol=1e-5)


# -- kill -9, then the same command again -------------------------------------------------------

@pytest.mark.slow
def test_predict_killed_then_rerun_equals_an_uninterrupted_run(projects):
    interrupted, reference = projects
    args = ("predict", "--dataset", "ferplus:test", "--cache", "--out")
    cache = interrupted / "cache" / "results.sqlite"
    process = cli_process(interrupted, *args, str(interrupted / "runs" / "predict"))
    kill_when(process, lambda: cache_rows(cache) > 0, "the first cached batch")
    stored_at_kill = cache_rows(cache)
    assert 0 < stored_at_kill < len(FORWARD_KINDS) * faces_of(interrupted, "test")
    assert cli(interrupted, *args, str(interrupted / "runs" / "predict")) == 0
    assert cli(reference, *args, str(reference / "runs" / "predict")) == 0
    assert_same_predictions(interrupted / "runs" / "predict" / "predictions.parquet",
                            reference / "runs" / "predict" / "predictions.parquet")
    counts = assert_same_entries(cache, reference / "cache" / "results.sqlite")
    assert counts["logits"] == counts["embedding"] == distinct_faces(interrupted, "test")


@pytest.mark.slow
def test_embed_killed_then_rerun_equals_an_uninterrupted_run(projects):
    interrupted, reference = projects
    for project in projects:  # a cache of its own, so that embed computes every face
        (project / "configs" / "config.yaml").write_text(
            (project / "configs" / "config.yaml").read_text().replace("cache_dir: cache", "cache_dir: cache-embed"))
    args = ("embed", "--dataset", "ferplus:test", "--dataset", "ferplus:train", "--projection", "pca")
    cache = interrupted / "cache-embed" / "results.sqlite"
    kill_when(cli_process(interrupted, *args), lambda: cache_rows(cache) > 0, "the first cached batch")
    assert cli(interrupted, *args) == 0
    assert cli(reference, *args) == 0
    counts = assert_same_entries(cache, reference / "cache-embed" / "results.sqlite", atol=1e-4)
    assert counts["embedding"] == distinct_faces(interrupted, "test", "train")
    assert counts["projection"] >= 1


@pytest.mark.slow
def test_explain_killed_then_rerun_equals_an_uninterrupted_run(projects):
    interrupted, reference = projects
    args = ("--set", "paths.cache_dir=cache-explain", "explain", "--dataset", "ferplus:test", "--limit", "240",
            "--method", "saliency", "--map-size", "24", "--batch-size", "8")
    cache = interrupted / "cache-explain" / "results.sqlite"
    kill_when(cli_process(interrupted, *args), lambda: cache_rows(cache, "attribution") > 0, "the first stored maps")
    assert 0 < cache_rows(cache, "attribution") < 240
    assert cli(interrupted, *args) == 0
    assert cli(reference, *args) == 0
    counts = assert_same_entries(cache, reference / "cache-explain" / "results.sqlite", atol=2e-3)
    # --limit is a stratified sample, which may hold two of FER+'s byte-identical images: one entry each
    sampled = select(FerPlusDataset(interrupted / "data" / "real" / "ferplus", "test"), 240)
    assert counts["attribution"] == len({hashlib.sha256(Path(s.source).read_bytes()).hexdigest() for s in sampled})


def history_epochs(run_dir: Path) -> int:
    try:
        return len(json.loads((run_dir / "history.json").read_text())["history"])
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


@pytest.mark.slow
def test_train_killed_then_resumed_equals_an_uninterrupted_run(projects):
    """With augmentation on (its random state is in the checkpoint), as a user trains."""
    interrupted, reference = projects
    args = ("train", "--train", "ferplus:train", "--val", "ferplus:valid", "--architecture", "mobilenetv3_small_050",
            "--input-size", "48", "--epochs", "4", "--batch-size", "32", "--max-steps", "4", "--name", "killed")
    run_dir = interrupted / "runs" / "killed"
    kill_when(cli_process(interrupted, *args), lambda: history_epochs(run_dir) >= 1, "the first epoch's checkpoint")
    killed_at = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert 1 <= len(killed_at["history"]) < 4
    assert cli(interrupted, *args, "--resume") == 0
    assert cli(reference, *args) == 0
    resumed, uninterrupted = (torch.load(p / "runs" / "killed" / "checkpoint.pt", weights_only=True) for p in projects)
    assert resumed["history"] == uninterrupted["history"] and len(resumed["history"]) == 4
    assert (run_dir / "best.safetensors").read_bytes() == \
        (reference / "runs" / "killed" / "best.safetensors").read_bytes()


def grid_image(faces: list[np.ndarray], cell: int = 170, gutter: int = 6) -> np.ndarray:
    side = 4 * cell + 5 * gutter
    image = np.full((side, side, 3), 235, np.uint8)
    for k, face in enumerate(faces[:16]):
        y, x = gutter + (k // 4) * (cell + gutter), gutter + (k % 4) * (cell + gutter)
        image[y:y + cell, x:x + cell] = cv2.resize(face, (cell, cell), interpolation=cv2.INTER_AREA)
    return image


@pytest.mark.slow
def test_synthetic_extraction_killed_then_rerun_equals_an_uninterrupted_run(projects, synthetic_root,
                                                                            face_model_path, tmp_path):
    interrupted, reference = projects
    files = []
    for k, emotion in enumerate(("happy", "sad", "surprise")):
        faces = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
                 for p in sorted((synthetic_root / emotion).glob("*.jpg"))[:16]]
        files.append(tmp_path / f"grid-{emotion}.png")
        cv2.imwrite(str(files[-1]), cv2.cvtColor(grid_image(faces), cv2.COLOR_RGB2BGR))
    for file, emotion in zip(files, ("Happiness", "Sadness", "Surprise")):
        assert cli(interrupted, "synth", "import", str(file), "--emotion", emotion, "--budget", "10") == 0
    synthetic = interrupted / "data" / "synthetic"
    shutil.copytree(synthetic, reference / "data" / "synthetic")  # the same ledger and grids
    args = ("synth", "extract", "--face-model", str(face_model_path))
    staging = synthetic / ".processed.staging"
    kill_when(cli_process(interrupted, *args), lambda: staging.is_dir() and any(staging.rglob("*.png")),
              "the first extracted face")
    assert not (synthetic / "manifest.parquet").exists() and not (synthetic / "processed").exists()
    assert cli(interrupted, *args) == 0
    assert cli(reference, *args) == 0
    manifests = [pd.read_parquet(p / "data" / "synthetic" / "manifest.parquet") for p in projects]
    pd.testing.assert_frame_equal(*manifests)
    assert manifests[0]["accepted"].sum() >= 24
    faces = [{p.relative_to(root): p.read_bytes() for p in root.rglob("*.png")}
             for root in (p / "data" / "synthetic" / "processed" for p in projects)]
    assert faces[0] == faces[1] and len(faces[0]) == manifests[0]["accepted"].sum()
    assert not staging.exists()


# -- writes that fail midway (a full disk) -----------------------------------------------------

def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_predict_with_a_full_disk_keeps_finished_parts_and_resumes(projects, monkeypatch, capsys):
    interrupted, reference = projects
    out = interrupted / "runs" / "predict-full-disk"
    real_to_parquet = pd.DataFrame.to_parquet
    writes = []

    def fill_the_disk_on_the_second_part(frame, path, *args, **kwargs):
        writes.append(path)
        if len(writes) == 2:
            Path(path).write_bytes(b"PAR1 half a file")
            disk_full()
        return real_to_parquet(frame, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", fill_the_disk_on_the_second_part)
    command = ("--set", "inference.batch_size=64", "predict", "--dataset", "ferplus:test", "--out", str(out))
    code = main(["--config", str(interrupted / "configs" / "config.yaml"), *command])
    err = capsys.readouterr().err
    assert code == 1 and "No space left on device" in err and "run the same command again" in err
    # the one part was written; the table of all parts was not, and no temporary file is left
    assert sorted(p.name for p in out.rglob("*")) == ["part-00000.parquet", "parts", "progress.json"]
    monkeypatch.setattr(pd.DataFrame, "to_parquet", real_to_parquet)
    assert main(["--config", str(interrupted / "configs" / "config.yaml"), *command]) == 0
    assert_same_predictions(out / "predictions.parquet", reference / "runs" / "predict" / "predictions.parquet")


def test_a_full_cache_rolls_back_the_batch_and_keeps_earlier_ones(projects, tmp_path, tiny_model):
    interrupted, _ = projects
    model = load_model(tiny_model)
    faces = FerPlusDataset(interrupted / "data" / "real" / "ferplus", "test")
    assert len(faces) >= 400
    path = tmp_path / "full.sqlite"
    cache = ResultCache(path)
    pages = cache._db.execute("PRAGMA page_count").fetchone()[0]
    cache._db.execute(f"PRAGMA max_page_count = {pages + 40}")  # SQLite's own "database or disk is full"
    with pytest.raises(DataError, match="database or disk is full.*intact"):
        cached_forward(model, faces, FacePreparer(model, None), range(400), cache, batch_size=16)
    kept = cache_entries(path)
    kinds = len(FORWARD_KINDS)
    assert 0 < len(kept) < kinds * 400 and len(kept) % (kinds * 16) == 0  # whole batches only
    cache.close()
    with ResultCache(path) as cache:
        results = cached_forward(model, faces, FacePreparer(model, None), range(400), cache, batch_size=16)
    assert results.computed == 400 - len(kept) // kinds
    direct = cached_forward(model, faces, FacePreparer(model, None), range(400), None, batch_size=16)
    np.testing.assert_allclose(results.logits, direct.logits, atol=1e-5)


def test_a_failed_model_save_keeps_the_previous_pair(tmp_path, tiny_model, monkeypatch):
    model = load_model(tiny_model)
    path = save_model(model, tmp_path / "model")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    torch.nn.init.normal_(model.module.get_classifier().weight)
    monkeypatch.setattr(Path, "write_text", disk_full)  # the JSON sidecar cannot be written
    with pytest.raises(OSError, match="No space left"):
        save_model(model, path)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temporary file either
    assert load_model(path).fingerprint == load_model(tiny_model).fingerprint


def test_a_failed_json_write_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "run" / "run.json"
    write_json_atomic(target, {"kind": "evaluation", "created": "then"})
    real_dump = json.dump

    def dump_half_then_fail(value, handle, **kwargs):
        handle.write('{"kind": "evalu')
        disk_full()

    monkeypatch.setattr(json, "dump", dump_half_then_fail)
    with pytest.raises(OSError):
        write_json_atomic(target, {"kind": "evaluation", "created": "now"})
    monkeypatch.setattr(json, "dump", real_dump)
    assert Run.load(target.parent).info["created"] == "then"
    assert [p.name for p in target.parent.iterdir()] == ["run.json"]


def test_a_failed_archive_install_leaves_no_half_dataset(tmp_path, synthetic_root, monkeypatch):
    archive = tmp_path / "synthetic_sd_faces.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(synthetic_root.glob("*/*.jpg"))[::20]:
            zf.write(path, f"synthetic_sd_faces/{path.parent.name}/{path.name}")
    real_copy = shutil.copyfileobj
    copies = []

    def copy_then_fill_the_disk(source, sink, *args):
        copies.append(1)
        if len(copies) == 10:
            disk_full()
        return real_copy(source, sink, *args)

    data_root = tmp_path / "data"
    monkeypatch.setattr(shutil, "copyfileobj", copy_then_fill_the_disk)
    with pytest.raises(OSError, match="No space left"):
        install_archive(archive, None, data_root)
    assert [p for p in data_root.rglob("*") if p.is_file()] == []  # no half dataset, no staging left
    monkeypatch.setattr(shutil, "copyfileobj", real_copy)
    target = install_archive(archive, None, data_root)
    assert len(list(target.rglob("*.jpg"))) == len(sorted(synthetic_root.glob("*/*.jpg"))[::20])


# -- two dashboard sessions and a CLI writer on one cache --------------------------------------

SESSION = textwrap.dedent("""
    import sys
    import numpy as np
    from fer_core.backends import InferenceOptions
    from fer_core.cache import ResultCache
    from fer_core.data import FerPlusDataset
    from fer_core.inference import embed_dataset
    from fer_core.models import load_model
    root, model_path, cache_path, start, stop = sys.argv[1:]
    model = load_model(model_path)
    faces = FerPlusDataset(root, "test").subset(np.arange(int(start), int(stop)))
    for _ in range(2):  # a session asks twice: the second time everything is read back
        with ResultCache(cache_path) as cache:  # one connection per request, as the dashboard does
            keys, features = embed_dataset(model, faces, cache, options=InferenceOptions(batch_size=16, progress=False))
    assert len(keys) == len(faces) and np.isfinite(features).all()
    print("ok", len(keys))
""")


@pytest.mark.slow
def test_two_sessions_and_a_cli_writer_share_the_cache(projects, tiny_model, tmp_path):
    interrupted, _ = projects
    config = load_config(interrupted / "configs" / "config.yaml")
    root = config.resolve(config.data.root) / "real" / "ferplus"
    cache_path = tmp_path / "shared" / "results.sqlite"
    script = tmp_path / "session.py"
    script.write_text(SESSION)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    n = faces_of(interrupted, "test")
    counts, stop = [], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            counts.append(cache_rows(cache_path))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    sessions = [subprocess.Popen([sys.executable, str(script), str(root), str(tiny_model), str(cache_path), *span],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for span in (("0", str(2 * n // 3)), (str(n // 3), str(n)))]
    writer = subprocess.Popen([sys.executable, "-m", "fer_core", "--config", str(interrupted / "configs" / "config.yaml"),
                               "--set", f"paths.cache_dir={cache_path.parent}", "predict", "--dataset", "ferplus:test",
                               "--cache", "--out", str(tmp_path / "predict")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        outputs = [(p.communicate(timeout=600), p.returncode) for p in (*sessions, writer)]
    finally:
        stop.set()
        watcher.join()
    for (out, err), code in outputs:
        assert code == 0 and "Traceback" not in err, err[-3000:]
    assert all(b >= a for a, b in zip(counts, counts[1:])), "entries disappeared while others wrote"
    entries = cache_entries(cache_path)
    kinds = {kind for kind, _ in entries.values()}
    per_kind = {kind: sum(k == kind for k, _ in entries.values()) for kind in kinds}
    assert per_kind["logits"] == per_kind["embedding"] == distinct_faces(interrupted, "test")  # none lost
    model = load_model(tiny_model)
    direct = cached_forward(model, FerPlusDataset(root, "test"), FacePreparer(model, None), range(n), None)
    with ResultCache(cache_path) as cache:
        stored = cached_forward(model, FerPlusDataset(root, "test"), FacePreparer(model, None), range(n), cache)
    assert stored.computed == 0
    np.testing.assert_allclose(stored.features, direct.features, atol=1e-5)
    predictions = pd.read_parquet(tmp_path / "predict" / "predictions.parquet")
    assert len(predictions) == n and predictions["error"].isna().all()
