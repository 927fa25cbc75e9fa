"""Shared fixtures: the real faces in ../shared, unpacked once into the ignored .testdata/.

Tests that need ../shared skip with a reason when it is absent, and fail under CI=true.
"""

from __future__ import annotations

import contextlib
import os

# One compute thread for torch, ONNX Runtime and OpenMP in tests and the processes they start:
# on a 2-core machine that other jobs keep busy, two threads spin-wait for each other and run
# tens of times slower (measured here, B0 training step of 64 faces: 0.5 s quiet with 2 threads; at
# load 5-12, 47-55 s with 2 threads and 4-7 s with 1).
# Set before anything imports torch; tests that measure threads set their own.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# numba (UMAP, pynndescent) too: with its default of one thread per core, the UMAP test waited
# 59 s for 25 s of work on a quiet machine; on one thread it took 24 s.
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FER_CORE_SHARED", REPO.parent / "shared"))
TESTDATA = REPO / ".testdata"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch threads, then restore the previous count: a test that
    compares a computation with one in a subprocess must use the subprocess's thread count
    (another count changes float rounding), whatever an earlier test left set."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Every test starts on one torch thread, whatever the test before it set (a configured model
    applies ``inference.threads``; benchmarks set their own): two threads on a loaded 2-core machine
    spin-wait for each other (see above), and float rounding depends on the count."""
    with torch_threads(1):
        yield


def require_shared(path: Path) -> Path:
    """``path`` if it exists; otherwise skip (or fail under CI=true) with the reason."""
    if path.exists():
        return path
    message = f"needs {path} (the shared data beside the project); not present"
    if IN_CI:
        pytest.fail(message + " - required under CI=true")
    pytest.skip(message)


@contextlib.contextmanager
def testdata_lock(name: str) -> Iterator[None]:
    """Hold ``.testdata/.<name>.lock`` for the block: parallel test workers (pytest-xdist) that need
    the same unpacked archive or trained model wait for the one preparing it instead of doing the
    work twice on the same cores."""
    import fcntl
    TESTDATA.mkdir(exist_ok=True)
    with open(TESTDATA / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def unpack(archive: str) -> Path:
    """Unzip ``../shared/data/<archive>`` once into ``.testdata/<stem>/`` and return that folder."""
    source = require_shared(SHARED / "data" / archive)
    target = TESTDATA / Path(archive).stem
    if (target / ".complete").exists():
        return target
    with testdata_lock(target.name):
        if not (target / ".complete").exists():
            _unzip(source, target)
    return target


def _unzip(source: Path, target: Path) -> None:
    """Extract ``source`` into a staging folder and rename it to ``target`` when complete."""
    staging = Path(tempfile.mkdtemp(dir=TESTDATA, prefix=f".{target.name}-"))
    with zipfile.ZipFile(source) as zf:
        zf.extractall(staging)
    (staging / ".complete").touch()
    staging.rename(target)


@pytest.fixture(scope="session")
def fer2013_root() -> Path:
    """FER2013 image folders: ``train/<class>/`` and ``test/<class>/``."""
    return unpack("fer2013.zip")


@pytest.fixture(scope="session")
def ferplus_root() -> Path:
    """FER+: ``FER2013Train/ FER2013Valid/ FER2013Test/`` and ``fer2013new.csv``."""
    return unpack("ferplus.zip")


@pytest.fixture(scope="session")
def synthetic_root() -> Path:
    """Stable Diffusion faces: ``synthetic_sd_faces/<class>/*.jpg`` (476 images, 5 classes)."""
    return unpack("synthetic_sd_faces.zip") / "synthetic_sd_faces"


@pytest.fixture(scope="session")
def face_model_path() -> Path:
    """MediaPipe BlazeFace short-range detector."""
    return require_shared(SHARED / "models" / "face_detection_short_range.tflite")


@pytest.fixture(scope="session")
def project(tmp_path_factory, ferplus_root, fer2013_root, synthetic_root) -> Path:
    """A project folder whose data/ links the unpacked real datasets (plan layout) and whose
    configs/config.yaml uses them; runs/ and cache/ are its own."""
    root = tmp_path_factory.mktemp("project")
    (root / "configs").mkdir()
    (root / "data" / "real").mkdir(parents=True)
    (root / "data" / "synthetic").mkdir()
    (root / "data" / "real" / "ferplus").symlink_to(ferplus_root, target_is_directory=True)
    (root / "data" / "real" / "fer2013").symlink_to(fer2013_root, target_is_directory=True)
    (root / "data" / "synthetic" / "sd_faces").symlink_to(synthetic_root, target_is_directory=True)
    (root / "configs" / "config.yaml").write_text((REPO / "configs" / "config.yaml").read_text())
    return root


def _tiny_model_recipe() -> str:
    """A digest of everything the tiny model depends on: this fixture and fer_core's training,
    model and data code (so a change to any of them trains it again)."""
    import hashlib
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for folder in ("training", "models", "data"):
        for source in sorted((REPO / "fer_core" / folder).glob("*.py")):
            digest.update(source.read_bytes())
    for source in ("preprocess.py", "labels.py", "images.py"):
        digest.update((REPO / "fer_core" / source).read_bytes())
    return digest.hexdigest()[:16]


def kept_tiny_model_path() -> Path:
    """Where :func:`kept_tiny_model` keeps the model of this code version."""
    return TESTDATA / f"tiny-{_tiny_model_recipe()}"


def kept_tiny_model() -> Path:
    """``.testdata/tiny-<recipe>/``: a small network trained on 8,000 real FER+ faces, trained
    here when it is missing (a few minutes, once per code version)."""
    kept = kept_tiny_model_path()
    if (kept / "best.safetensors").is_file():
        return kept
    with testdata_lock(kept.name):
        if not (kept / "best.safetensors").is_file():
            _train_tiny_model(kept)
    return kept


def _train_tiny_model(kept: Path) -> None:
    """Train the tiny model into a staging folder and rename it to ``kept`` when complete."""
    import numpy as np

    from fer_core.data import FerPlusDataset, stratified_split
    from fer_core.models import TINY_ARCHITECTURE
    from fer_core.training import Stage, Trainer, TrainSettings

    ferplus = unpack("ferplus.zip")
    train, val = FerPlusDataset(ferplus, "train"), FerPlusDataset(ferplus, "valid")
    pick = stratified_split(train.labels, {"use": 8000 / len(train), "rest": 1 - 8000 / len(train)}, seed=0)["use"]
    val_pick = stratified_split(val.labels, {"use": 600 / len(val), "rest": 1 - 600 / len(val)}, seed=0)["use"]
    settings = TrainSettings(architecture=TINY_ARCHITECTURE, input_size=48, stages=(Stage(6, 3e-3, "all"),),
                             batch_size=64, soft_targets=False, augment=None, seed=0)
    staging = Path(tempfile.mkdtemp(dir=TESTDATA, prefix=".tiny-"))
    Trainer(staging / "tiny", settings, train.subset(np.sort(pick)), val.subset(np.sort(val_pick))).fit(progress=False)
    (staging / "tiny").rename(kept)
    shutil.rmtree(staging, ignore_errors=True)


#: The heaviest test files, heaviest first (seconds on one quiet core, serial run): the workers take
#: files in this order (``--no-loadscope-reorder``), the long ones first and the short ones last, so
#: no worker is left alone with a long file at the end. Files not named follow in name order.
HEAVY_FILES = ("test_distributed",     # 60 s
               "test_faults",          # 57
               "test_browser",         # 55
               "test_training",        # 38
               "test_domain_gap",      # 38
               "test_precompute",      # 33
               "test_dashboard",       # 23
               "test_explain",         # 22
               "test_benchmarks_smoke",  # 19
               "test_workflow",        # 16
               "test_hostile",         # 15
               "test_cache",           # 15
               "test_lrp",             # 12
               "test_backends",        # 12
               "test_faces",           # 11
               "test_synthetic")       # 11

#: The background process training the tiny model (started by this process, or None).
_tiny_model_training: subprocess.Popen | None = None


def _needs_tiny_model(item: pytest.Item) -> bool:
    return "tiny_model" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the files, and start training the tiny model in the background when a collected test
    needs it and it is not kept yet: the files that do not need it run first, while it trains
    (outside every test's time bound; on a busy machine it takes minutes)."""
    needs = {item.path.stem for item in items if _needs_tiny_model(item)}
    training = bool(needs) and (SHARED / "data").is_dir() and not (kept_tiny_model_path() / "best.safetensors").is_file()

    def rank(item: pytest.Item) -> tuple[int, int, str]:
        stem = item.path.stem
        weight = HEAVY_FILES.index(stem) if stem in HEAVY_FILES else len(HEAVY_FILES)
        return (training and stem in needs, weight, stem)
    items.sort(key=rank)   # stable: the tests of a file keep their order
    global _tiny_model_training
    if training and _tiny_model_training is None:
        TESTDATA.mkdir(exist_ok=True)
        with open(TESTDATA / "tiny-training.log", "ab") as log:
            _tiny_model_training = subprocess.Popen(
                [sys.executable, "-c", "from tests.conftest import kept_tiny_model; kept_tiny_model()"],
                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=log, stderr=subprocess.STDOUT)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Let a background training finish (its model is kept for the next run) rather than leave
    it running or cut it off half-way."""
    if _tiny_model_training is not None:
        _tiny_model_training.wait(timeout=1800)


@pytest.fixture(scope="session")
def tiny_model(project) -> Path:
    """:func:`kept_tiny_model`, copied into ``project``: ``runs/tiny/best.safetensors``."""
    run_dir = project / "runs" / "tiny"
    shutil.copytree(kept_tiny_model(), run_dir)
    return run_dir / "best.safetensors"
