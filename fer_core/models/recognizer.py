"""HSEmotion-style inference on face crops: ``EmotionRecognizer(model).predict_emotions(face)``."""

from __future__ import annotations

from numbers import Integral
from typing import Callable, Sequence

import numpy as np
import torch

from fer_core.backends import BACKEND_NAME, DEFAULT_BACKEND, InferenceBackend, load_backend, resolve_device
from fer_core.errors import DataError, InvalidArgument
from fer_core.labels import EMOTIONS
from fer_core.models.factory import FerModel
from fer_core.scoring import DEFAULT_PROTOCOL, scoring_for
from fer_core.validation import Interval, validate_params


class EmotionRecognizer:
    """Emotions and features of RGB uint8 face crops, batched, under ``torch.inference_mode``.

    Mirrors HSEmotion's ``HSEmotionRecognizer``: one face gives one label and a score per
    emotion; a list of faces gives a list of labels and an ``(N, C)`` array. The network runs
    through ``backend`` (a name from :data:`fer_core.backends.INFERENCE_BACKENDS`, built on
    first use) on the device the model is on: the recognizer never moves the model (it may be
    shared, e.g. the dashboard's cached one). ``device``, when given, must be that device
    (``auto`` resolved as :func:`fer_core.backends.resolve_device` does).
    """

    @validate_params({"batch_size": [Interval(Integral, 1, None)], "backend": BACKEND_NAME})
    def __init__(self, model: FerModel, device: str | torch.device | None = None, batch_size: int = 32,
                 backend: str = DEFAULT_BACKEND, score_over: str = DEFAULT_PROTOCOL) -> None:
        if device is not None and not _same_device(resolve_device(device), model.device):
            raise InvalidArgument(f"device: the model is on {model.device}, not {device}; move it first "
                                  f"(fer_core.backends.on_device(model, {str(device)!r})) or leave device out")
        self.model = model
        self.batch_size = int(batch_size)
        self.backend_name = backend
        self.scoring = scoring_for(score_over, model.emotions, ())

    @property
    def backend(self) -> InferenceBackend:
        """The loaded inference backend."""
        return load_backend(self.model, self.backend_name)

    @property
    def emotions(self) -> tuple[str, ...]:
        """Class names, in the order of the score columns."""
        return self.model.emotions

    def predict_emotions(self, face_img: np.ndarray | Sequence[np.ndarray],
                         logits: bool = False) -> tuple[str | list[str], np.ndarray]:
        """The most likely emotion (under the ``score_over`` protocol, :mod:`fer_core.scoring`) and
        the scores (softmax, or raw logits if ``logits``; columns in :attr:`emotions` order) of a
        face ``(H, W, 3)`` or of a list of faces."""
        single = isinstance(face_img, np.ndarray) and face_img.ndim == 3
        faces = [face_img] if single else list(face_img)
        scores = self._run(faces, self.backend.logits, len(self.emotions))
        labels = [EMOTIONS[i] for i in self.scoring.predict(scores)]
        if not logits:
            scores = torch.from_numpy(scores).softmax(dim=1).numpy()
        return (labels[0], scores[0]) if single else (labels, scores)

    def extract_features(self, faces: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """``(N, feature_dim)`` pooled penultimate features of a face or a list of faces."""
        single = isinstance(faces, np.ndarray) and faces.ndim == 3
        return self._run([faces] if single else list(faces), self.backend.features, self.model.feature_dim)

    def _run(self, faces: list[np.ndarray], forward: Callable[[torch.Tensor], torch.Tensor], width: int) -> np.ndarray:
        for i, face in enumerate(faces):
            if not (isinstance(face, np.ndarray) and face.ndim == 3 and face.shape[2] == 3
                    and face.dtype == np.uint8 and min(face.shape[:2]) > 0):
                described = f"{face.shape} {face.dtype}" if isinstance(face, np.ndarray) else type(face).__name__
                raise DataError(f"face {i}: expected an (H, W, 3) uint8 RGB array, got {described}")
        preprocessing = self.model.preprocessing
        outputs = [np.empty((0, width), np.float32)]
        for start in range(0, len(faces), self.batch_size):
            outputs.append(forward(preprocessing.batch(faces[start:start + self.batch_size])).numpy())
        return np.concatenate(outputs)


def _same_device(wanted: torch.device, actual: torch.device) -> bool:
    """Whether ``wanted`` names ``actual`` (``cuda`` names the current CUDA device)."""
    if wanted.type != actual.type:
        return False
    return wanted.index is None or actual.index is None or wanted.index == actual.index
