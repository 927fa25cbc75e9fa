"""Download official third-party weights for users (HSEmotion, MediaPipe) into ``weights/``.

Nothing in fer_core downloads on its own: this runs only when a user asks
(``fer-core weights download NAME``). Offline, it fails at once with a message that says
where to get the file by hand and where to put it. Files are written atomically.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from tqdm.auto import tqdm

from fer_core.config import Config
from fer_core.errors import ModelLoadError

_HSEMOTION = "https://github.com/av-savchenko/face-emotion-recognition/raw/main/models"


@dataclass(frozen=True)
class WeightsSource:
    """A published weights file: where it comes from and what it is."""

    name: str
    url: str
    filename: str
    description: str
    needs_trust: bool


#: Weights users can download (URLs as published by their projects).
SOURCES: Mapping[str, WeightsSource] = MappingProxyType({s.name: s for s in (
    WeightsSource("hsemotion-b0-8", f"{_HSEMOTION}/affectnet_emotions/enet_b0_8_best_vgaf.pt", "enet_b0_8_best_vgaf.pt",
                  "HSEmotion EfficientNet-B0, 8 classes, AffectNet (pickled model)", True),
    WeightsSource("hsemotion-b0-8-afew", f"{_HSEMOTION}/affectnet_emotions/enet_b0_8_best_afew.pt",
                  "enet_b0_8_best_afew.pt", "HSEmotion EfficientNet-B0, 8 classes, AffectNet (pickled model)", True),
    WeightsSource("hsemotion-b2-8", f"{_HSEMOTION}/affectnet_emotions/enet_b2_8.pt", "enet_b2_8.pt",
                  "HSEmotion EfficientNet-B2, 8 classes, AffectNet (pickled model)", True),
    WeightsSource("vggface2-b0", f"{_HSEMOTION}/pretrained_faces/state_vggface2_enet0_new.pt",
                  "state_vggface2_enet0_new.pt", "HSEmotion's VGGFace2 EfficientNet-B0 backbone (state dict)", False),
    WeightsSource("blazeface-short-range",
                  "https://storage.googleapis.com/mediapipe-models/face_detector/blaze_face_short_range/float16/1/"
                  "blaze_face_short_range.tflite", "face_detection_short_range.tflite",
                  "MediaPipe BlazeFace short-range face detector", False),
)})


def download(source: WeightsSource | str, directory: Path, timeout: float = 30.0, progress: bool = True) -> Path:
    """Fetch ``source`` into ``directory`` (kept if already there) and return its path."""
    if isinstance(source, str):
        if source not in SOURCES:
            raise ModelLoadError(f"unknown weights {source!r}; available: {sorted(SOURCES)}")
        source = SOURCES[source]
    target = Path(directory) / source.filename
    if target.is_file() and target.stat().st_size > 0:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(source.url, timeout=timeout) as response, open(tmp, "wb") as handle:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=source.filename, disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    handle.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if tmp.stat().st_size == 0:
            raise ModelLoadError(f"{source.url} sent an empty file")
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise ModelLoadError(
            f"could not download {source.name} from {source.url} ({exc}). If this machine is offline, fetch the "
            f"file elsewhere and put it at {target}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


SHIPPED_WEIGHTS = Path("weights") / "fer_b0_ferplus.safetensors"


def resolve_weights(config: Config, weights: Path | str | None = None) -> Path:
    """Which weights file to use: the argument, else ``model.weights_path``, else the shipped model."""
    if weights is not None:
        path = config.resolve(weights)
        if not path.is_file():
            raise ModelLoadError(f"weights file not found: {path}")
        return path
    if config.model.weights_path is not None:
        return config.resolve(config.model.weights_path)
    shipped = config.resolve(SHIPPED_WEIGHTS)
    if shipped.is_file():
        return shipped
    raise ModelLoadError(
        f"no model: set model.weights_path in the config, pass --model PATH, or train the default "
        f"model into {shipped} (fer-core train); HSEmotion .pt files load with --trust-pickle")
