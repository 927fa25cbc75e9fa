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
