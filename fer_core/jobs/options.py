"""What a job resolves from the config once and hands to everything below it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fer_core.backends import resolve_device
from fer_core.config import Config, FacesConfig
from fer_core.faces import FacePipeline


@dataclass(frozen=True)
class JobOptions:
    """The settings every job threads through the library, resolved once from the config:
    ``device`` (``model.device`` with ``auto`` resolved), inference ``backend`` and
    ``batch_size``, ``progress`` bars, and the face pipeline's settings (``faces``, with its
    detector model file resolved from the project root)."""

    device: str
    backend: str
    batch_size: int
    faces: FacesConfig
    progress: bool = True

    @classmethod
    def from_config(cls, config: Config, progress: bool = True) -> JobOptions:
        return cls(device=str(resolve_device(config.model.device)), backend=config.inference.backend,
                   batch_size=config.inference.batch_size,
                   faces=dataclasses.replace(config.faces, mediapipe_model=config.face_model()), progress=progress)

    def face_pipeline(self, crop_size: int) -> FacePipeline:
        """The configured face pipeline, cropping at ``crop_size``."""
        return FacePipeline.from_faces(self.faces, crop_size)

    def inference(self) -> dict[str, object]:
        """The keyword arguments of the library's dataset passes
        (:func:`fer_core.inference.predict_dataset` and its kin)."""
        return {"batch_size": self.batch_size, "device": self.device, "backend": self.backend,
                "progress": self.progress}
