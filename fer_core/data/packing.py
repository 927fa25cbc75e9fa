"""FER+ splits packed into one compressed file, and back, losslessly.

A GPU machine receives the working tree and at most 64 MiB with it: FER+ train + valid as PNG
files (~62 MB) do not fit beside the project, as one array they do. The 48x48 grey pixels are
stored as residuals of the median edge predictor (LOCO-I / JPEG-LS, mod 256, zigzag-coded) and
compressed with xz: 1,556 bytes a face against PNG's 1,736 (measured on 2,000 FER+ valid faces).
:func:`unpack_ferplus` writes the FER+ folder layout back (``fer2013new.csv`` + one PNG per face)
with the very same pixels, so ``ferplus:train`` opens there as it does here.
"""

from __future__ import annotations

import io
import lzma
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from fer_core.data.datasets import FERPLUS_CSV, FERPLUS_SPLITS
from fer_core.errors import DataError, InvalidArgument

#: What :func:`pack_ferplus` writes and :func:`unpack_ferplus` checks first.
PACK_FORMAT = "fer_core.ferplus-pack.v1"


def _median_edge(west: np.ndarray, north: np.ndarray, north_west: np.ndarray) -> np.ndarray:
    """The median edge predictor of a pixel from its west, north and north-west neighbours (int16)."""
    high, low = np.maximum(west, north), np.minimum(west, north)
    return np.where(north_west >= high, low, np.where(north_west <= low, high, west + north - north_west))


def _prediction(pixels: np.ndarray) -> np.ndarray:
    """:func:`_median_edge` of every pixel of an ``(N, H, W)`` int16 array (0 outside the image)."""
    padded = np.pad(pixels, ((0, 0), (1, 0), (1, 0)))
    return _median_edge(padded[:, 1:, :-1], padded[:, :-1, 1:], padded[:, :-1, :-1])


def encode_gray(images: np.ndarray) -> np.ndarray:
    """``(N, H, W)`` uint8 images -> uint8 residuals (small values for smooth images)."""
    residual = (images.astype(np.int16) - _prediction(images.astype(np.int16))).astype(np.uint8).view(np.int8)
    signed = residual.astype(np.int16)
    return np.where(signed >= 0, 2 * signed, -2 * signed - 1).astype(np.uint8)


def decode_gray(codes: np.ndarray) -> np.ndarray:
    """The inverse of :func:`encode_gray`, row by row (each pixel needs its decoded neighbours)."""
    codes = codes.astype(np.int16)
    residual = np.where(codes % 2 == 0, codes // 2, -(codes + 1) // 2)
    count, height, width = codes.shape
    out = np.zeros((count, height + 1, width + 1), dtype=np.int16)
    for y in range(1, height + 1):
        for x in range(1, width + 1):
            guess = _median_edge(out[:, y, x - 1], out[:, y - 1, x], out[:, y - 1, x - 1])
            out[:, y, x] = (guess + residual[:, y - 1, x - 1]) % 256
    return out[:, 1:, 1:].astype(np.uint8)


def pack_ferplus(root: str | Path, splits: Sequence[str], out: str | Path) -> dict[str, int]:
    """Pack the FER+ ``splits`` (``train``, ``valid``, ``test``) of the FER+ folder ``root`` with
    its ``fer2013new.csv`` into ``out`` (one xz file); returns the faces packed per split."""
    unknown = [s for s in splits if s not in FERPLUS_SPLITS]
    if unknown or not splits:
        raise InvalidArgument(f"splits: expected some of {list(FERPLUS_SPLITS)}, got {list(splits)}")
    root = Path(root)
    if not (root / FERPLUS_CSV).is_file():
        raise DataError(f"{root} is no FER+ folder: {FERPLUS_CSV} is missing")
    paths = [(split, path) for split in splits for path in sorted((root / FERPLUS_SPLITS[split][1]).glob("*.png"))]
    if not paths:
        raise DataError(f"no FER+ images of {list(splits)} under {root}")
    images = []
    for _, path in paths:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L"))
        if pixels.shape != (48, 48):
            raise DataError(f"{path} is {pixels.shape[1]}x{pixels.shape[0]}; FER+ faces are 48x48")
        images.append(pixels)
    buffer = io.BytesIO()
    np.savez(buffer, format=np.array(PACK_FORMAT), codes=encode_gray(np.stack(images)),
             splits=np.array([s for s, _ in paths]), names=np.array([p.name for _, p in paths]),
             votes_csv=np.frombuffer((root / FERPLUS_CSV).read_bytes(), dtype=np.uint8))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_bytes(lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME))
    partial.replace(out)
    return {split: sum(s == split for s, _ in paths) for split in splits}


def unpack_ferplus(pack: str | Path, root: str | Path) -> dict[str, int]:
    """Write the faces of ``pack`` (made by :func:`pack_ferplus`) into the FER+ folder ``root``
    (``fer2013new.csv`` and ``FER2013<Split>/*.png``); returns the faces written per split."""
    try:
        arrays = np.load(io.BytesIO(lzma.decompress(Path(pack).read_bytes())), allow_pickle=False)
        found = str(arrays["format"])
    except (OSError, lzma.LZMAError, ValueError, KeyError) as exc:
        raise DataError(f"{pack} is not a FER+ pack made by fer-core data pack ({exc})") from None
    if found != PACK_FORMAT:
        raise DataError(f"{pack} is a {found!r} file; expected {PACK_FORMAT!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / FERPLUS_CSV).write_bytes(arrays["votes_csv"].tobytes())
    written: dict[str, int] = {}
    for pixels, split, name in zip(decode_gray(arrays["codes"]), arrays["splits"], arrays["names"], strict=True):
        folder = root / FERPLUS_SPLITS[str(split)][1]
        folder.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(folder / str(name))
        written[str(split)] = written.get(str(split), 0) + 1
    return written
