"""Shared fixtures: the real faces in ../shared, unpacked once into the ignored .testdata/.

Tests that need ../shared skip with a reason when it is absent, and fail under CI=true.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FER_CORE_SHARED", REPO.parent / "shared"))
TESTDATA = REPO / ".testdata"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_shared(path: Path) -> Path:
    """``path`` if it exists; otherwise skip (or fail under CI=true) with the reason."""
    if path.exists():
        return path
    message = f"needs {path} (the shared data beside the project); not present"
    if IN_CI:
        pytest.fail(message + " - required under CI=true")
    pytest.skip(message)


def unpack(archive: str) -> Path:
    """Unzip ``../shared/data/<archive>`` once into ``.testdata/<stem>/`` and return that folder."""
    source = require_shared(SHARED / "data" / archive)
    target = TESTDATA / Path(archive).stem
    if (target / ".complete").exists():
        return target
    TESTDATA.mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=TESTDATA, prefix=f".{target.name}-"))
    with zipfile.ZipFile(source) as zf:
        zf.extractall(staging)
    (staging / ".complete").touch()
    try:
        staging.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target


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


@pytest.fixture(scope="session")
def tiny_model(project) -> Path:
    """A small network trained on 8,000 real FER+ faces (a few minutes, once per code version:
    the run is kept in ``.testdata/tiny-<recipe>/``): ``runs/tiny/best.safetensors`` of ``project``."""
    import numpy as np

    from fer_core.config import load_config
    from fer_core.data import open_dataset, stratified_split
    from fer_core.models import TINY_ARCHITECTURE
    from fer_core.training import Stage, Trainer, TrainSettings

    run_dir = project / "runs" / "tiny"
    kept = TESTDATA / f"tiny-{_tiny_model_recipe()}"
    if (kept / "best.safetensors").is_file():
        shutil.copytree(kept, run_dir)
        return run_dir / "best.safetensors"
    config = load_config(project / "configs" / "config.yaml")
    data_root = config.resolve(config.data.root)
    train = open_dataset("ferplus:train", data_root)
    val = open_dataset("ferplus:valid", data_root)
    pick = stratified_split(train.labels, {"use": 8000 / len(train), "rest": 1 - 8000 / len(train)}, seed=0)["use"]
    val_pick = stratified_split(val.labels, {"use": 600 / len(val), "rest": 1 - 600 / len(val)}, seed=0)["use"]
    settings = TrainSettings(architecture=TINY_ARCHITECTURE, input_size=48, stages=(Stage(6, 3e-3, "all"),),
                             batch_size=64, soft_targets=False, augment=None, seed=0)
    Trainer(run_dir, settings, train.subset(np.sort(pick)), val.subset(np.sort(val_pick))).fit(progress=False)
    staging = Path(tempfile.mkdtemp(dir=TESTDATA, prefix=".tiny-"))
    shutil.copytree(run_dir, staging, dirs_exist_ok=True)
    try:
        staging.rename(kept)
    except OSError:  # another session kept it first
        shutil.rmtree(staging, ignore_errors=True)
    return run_dir / "best.safetensors"
