"""Training augmentation on uint8 ``(3, S, S)`` tensors, between resize and normalize."""

from __future__ import annotations

from dataclasses import dataclass

from torchvision.transforms import v2


@dataclass(frozen=True)
class AugmentSettings:
    """Flip, a small affine, colour jitter (on the pixels) and random erasing (on the tensor)."""

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

