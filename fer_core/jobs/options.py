"""What a job resolves from the config once and hands to everything below it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fer_core.backends import InferenceOptions, resolve_device
from fer_core.config import Config, FacesConfig
from fer_core.faces import FacePipeline


@dataclass(frozen=True)
class JobOptions:
    """The settings every job threads through the library, resolved once from the config: how
    the library's dataset passes run the model (``inference``: ``inference.batch_size``,
    ``model.device`` with ``auto`` resolved, ``inference.backend``, ``progress`` bars) and the
    face pipeline's settings (``faces``, with its detector model file resolved from the project
    root)."""

    inference: InferenceOptions
    faces: FacesConfig

    @classmethod
    def from_config(cls, config: Config, progress: bool = True) -> JobOptions:
        inference = InferenceOptions(batch_size=config.inference.batch_size,
                                     device=str(resolve_device(config.model.device)),
                                     backend=config.inference.backend, progress=progress)
        return cls(inference, dataclasses.replace(config.faces, mediapipe_model=config.face_model()))

    @property
    def device(self) -> str:
        """The resolved device, where jobs also train."""
        return str(self.inference.device)

    def face_pipeline(self, crop_size: int) -> FacePipeline:
        """The configured face pipeline, cropping at ``crop_size``."""
        return FacePipeline.from_faces(self.faces, crop_size)
