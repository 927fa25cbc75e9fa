"""The one image -> tensor chain from a face crop to a model input, in timm's style: a model's
data config (:class:`Preprocessing`, which ``FerModel.preprocessing`` resolves from the weights)
and the transform :func:`create_transform` makes from it for evaluation or for training.

The evaluation transform resizes the RGB uint8 crop to the input size and normalises it
(:meth:`Preprocessing.to_tensor`, :meth:`Preprocessing.batch`); the training transform adds
:class:`AugmentSettings`' augmentation around the normalisation. Training, prediction,
embedding, explanation and upload all go through it (finding the face comes first:
:mod:`fer_core.extraction`)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch
from torchvision.transforms import v2

from fer_core.errors import InvalidArgument

_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}


@dataclass(frozen=True)
class Preprocessing:
    """A model's data config: resize a square RGB face to ``input_size`` (``interpolation``;
    shrinking bilinearly uses area averaging) and normalise with ``mean``/``std``. A model
    trained on grey faces only (FER2013, FER+) declares ``grayscale``: every face it sees,
    colour photos included, is first turned into grey levels (ITU-R 601 luma) repeated over the
    three channels, as its training faces were. A model's own is ``FerModel.preprocessing``
    (from its weights file); :meth:`fingerprint` is part of every cache key."""

    input_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    grayscale: bool = False

    def fingerprint(self) -> str:
        """A short stable hash of every setting; part of every cache key (``grayscale`` enters
        only when set, so colour models keep the keys they had before it existed)."""
        settings = asdict(self)
        if not self.grayscale:
            del settings["grayscale"]
        text = json.dumps(settings, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def resize(self, face: np.ndarray) -> np.ndarray:
        """An RGB uint8 face resized to ``input_size`` x ``input_size`` (in grey levels when
        ``grayscale``)."""
        if face.ndim != 3 or face.shape[2] != 3 or face.dtype != np.uint8:
            raise InvalidArgument(f"expected an (H, W, 3) uint8 RGB face, got {face.shape} {face.dtype}")
        if self.grayscale:
            face = np.repeat(cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
        size = self.input_size
        if face.shape[:2] == (size, size):
            return face
        shrinking = face.shape[0] > size or face.shape[1] > size
        interp = cv2.INTER_AREA if shrinking and self.interpolation == "bilinear" else _INTERPOLATION[self.interpolation]
        return cv2.resize(face, (size, size), interpolation=interp)

    def to_tensor(self, face: np.ndarray) -> torch.Tensor:
        """A ``(3, S, S)`` float32 tensor from an RGB uint8 face: the evaluation transform."""
        return self.normalize(channels_first(self.resize(face)))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(..., 3, S, S)`` uint8 pixels -> normalized float32 (training augments in between)."""
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (pixels.float() / 255.0 - mean) / std

    def batch(self, faces: list[np.ndarray]) -> torch.Tensor:
        """A ``(N, 3, S, S)`` batch: the same values as stacking :meth:`to_tensor` of each face,
        normalized in one pass over the whole batch."""
        pixels = np.stack([self.resize(f) for f in faces]).transpose(0, 3, 1, 2)
        return self.normalize(torch.from_numpy(np.ascontiguousarray(pixels)))

    def to_image(self, tensor: torch.Tensor) -> np.ndarray:
        """Undo normalization: ``(3, S, S)`` tensor -> RGB uint8 array (for overlays)."""
        array = tensor.detach().cpu().float().numpy().transpose(1, 2, 0)
        array = array * np.asarray(self.std, np.float32) + np.asarray(self.mean, np.float32)
        return np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)


def channels_first(pixels: np.ndarray) -> torch.Tensor:
    """``(S, S, 3)`` uint8 pixels as a contiguous ``(3, S, S)`` uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


@dataclass(frozen=True)
class AugmentSettings:
    """Training augmentation: flip, a small affine, colour jitter (on the uint8 pixels, before
    normalising) and random erasing (on the normalised tensor)."""

    flip: float = 0.5
    rotate_degrees: float = 10.0
    translate: float = 0.08
    scale: tuple[float, float] = (0.9, 1.1)
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.2
    erase: float = 0.25


def pixel_augmentation(settings: AugmentSettings) -> v2.Transform:
    """The geometric and colour part, applied to uint8 pixels."""
    return v2.Compose([
        v2.RandomHorizontalFlip(settings.flip),
        v2.RandomAffine(degrees=settings.rotate_degrees, translate=(settings.translate, settings.translate),
                        scale=settings.scale),
        v2.ColorJitter(brightness=settings.brightness, contrast=settings.contrast, saturation=settings.saturation),
    ])


def tensor_augmentation(settings: AugmentSettings) -> v2.Transform:
    """The part applied after normalization (random erasing)."""
    return v2.RandomErasing(p=settings.erase, scale=(0.02, 0.15), value=0)


class CropTransform:
    """An RGB uint8 face crop -> a ``(3, S, S)`` float32 model input: resize, then (training
    only) the pixel augmentation, normalise, then (training only) random erasing. Made by
    :func:`create_transform`."""

    def __init__(self, preprocessing: Preprocessing, augment: AugmentSettings | None = None) -> None:
        self.preprocessing = preprocessing
        self.augment = augment
        self.pixel_aug = pixel_augmentation(augment) if augment else None
        self.tensor_aug = tensor_augmentation(augment) if augment else None

    def pixels(self, crop: np.ndarray) -> np.ndarray:
        """The crop at the model's input size (RGB uint8): what the model sees, before any
        augmentation and normalisation."""
        return self.preprocessing.resize(crop)

    def __call__(self, crop: np.ndarray) -> torch.Tensor:
        if self.augment is None:
            return self.preprocessing.to_tensor(crop)
        tensor = self.preprocessing.normalize(self.pixel_aug(channels_first(self.pixels(crop))))
        return self.tensor_aug(tensor)

    def batch(self, crops: list[np.ndarray]) -> torch.Tensor:
        """An ``(N, 3, S, S)`` evaluation batch (:meth:`Preprocessing.batch`); a training
        transform augments face by face (call it on each)."""
        if self.augment is not None:
            raise InvalidArgument("batch: a training transform augments each face on its own; call it per face")
        return self.preprocessing.batch(crops)

    def __repr__(self) -> str:
        return f"CropTransform({self.preprocessing}, augment={self.augment})"


def create_transform(preprocessing: Preprocessing, is_training: bool = False,
                     augment: AugmentSettings | None = None) -> CropTransform:
    """The crop -> tensor transform of a data config, as ``timm.data.create_transform(**config,
    is_training=...)``: for evaluation the resize and normalisation alone (exactly
    :meth:`Preprocessing.to_tensor`); for training with ``augment`` (default
    :class:`AugmentSettings`)."""
    if not isinstance(preprocessing, Preprocessing):
        raise InvalidArgument(f"preprocessing: expected a Preprocessing (FerModel.preprocessing), "
                              f"got {type(preprocessing).__name__}")
    if augment is not None and not is_training:
        raise InvalidArgument("augment: an evaluation transform (is_training=False) takes no augmentation")
    return CropTransform(preprocessing, (augment or AugmentSettings()) if is_training else None)
