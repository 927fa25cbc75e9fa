"""Reading images safely: any file Pillow knows -> an RGB ``uint8`` array, or a clear error.

EXIF orientation is applied; grayscale, RGBA/LA (composited on white), palette (with
transparency), CMYK and 16-bit images are converted; an animated image gives its first frame.
Images over :data:`MAX_PIXELS` are refused before decoding (decompression-bomb guard).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fer_core.errors import ImageDecodeError

#: Largest image (in pixels) that is decoded: 64 megapixels.
MAX_PIXELS = 64_000_000
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})

ImageSource = str | Path | bytes | BinaryIO


def _name(source: ImageSource) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    return getattr(source, "name", "<in-memory image>")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def load_rgb(source: ImageSource) -> np.ndarray:
    """Decode ``source`` (a path, bytes or a binary file) to an ``(H, W, 3)`` RGB uint8 array.

    Raises :class:`ImageDecodeError` naming the file when it is missing, empty, not an image,
    truncated or too large.
    """
    name = _name(source)
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise ImageDecodeError(f"image not found: {name}")
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ImageDecodeError(
                        f"image too large: {name} is {width}x{height} pixels; the limit is {MAX_PIXELS:,} pixels")
                image.seek(0)
                image = ImageOps.exif_transpose(image)
                array = np.asarray(_to_rgb(image), dtype=np.uint8)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"image too large (decompression-bomb guard): {name}: {exc}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"not an image, or a format Pillow cannot read: {name}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(f"corrupt or truncated image: {name}: {exc}") from None
    if array.ndim != 3 or array.shape[2] != 3 or min(array.shape[:2]) < 1:
        raise ImageDecodeError(f"image has no pixels: {name}")
    return np.ascontiguousarray(array)


def is_image_file(path: Path) -> bool:
    """Whether ``path`` has an image file suffix (by name only)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def save_rgb(array: np.ndarray, path: Path | str, quality: int = 95) -> None:
    """Write an RGB uint8 array atomically (to a temporary name, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(tmp, format=Image.registered_extensions()[path.suffix.lower()],
                                                            quality=quality)
    tmp.replace(path)
