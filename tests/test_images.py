"""Image decoding: every common mode works on a real face, bad files give clear errors."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer_core import images
from fer_core.errors import ImageDecodeError
from fer_core.images import load_rgb


@pytest.fixture(scope="module")
def face(synthetic_root) -> np.ndarray:
    """A real Stable Diffusion face, 128x96 (not square, so rotations are visible)."""
    with Image.open(synthetic_root / "sad" / "sad_001.jpg") as image:
        return np.asarray(image.convert("RGB").resize((96, 128)))


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_exif_orientation_is_applied(face):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    stored = Image.fromarray(face).transpose(Image.Transpose.ROTATE_90)
    loaded = load_rgb(encode(stored, "JPEG", exif=exif, quality=95))
    assert loaded.shape == face.shape
    assert np.corrcoef(loaded.ravel().astype(float), face.ravel().astype(float))[0, 1] > 0.97


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16"])
def test_modes_become_rgb_uint8(face, mode):
    gray = Image.fromarray(face).convert("L")
    if mode == "I;16":
        image = Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)
        assert image.mode == "I;16"
        data = encode(image, "PNG")
    elif mode == "CMYK":
        data = encode(Image.fromarray(face).convert("CMYK"), "JPEG", quality=95)
    elif mode == "P":
        data = encode(Image.fromarray(face).convert("P", palette=Image.Palette.ADAPTIVE), "PNG")
    else:
        data = encode(Image.fromarray(face).convert(mode), "PNG")
    loaded = load_rgb(data)
    assert loaded.dtype == np.uint8 and loaded.shape == face.shape
    reference = np.asarray(gray) if mode in ("L", "I;16") else face
    if reference.ndim == 2:
        assert (loaded[..., 0] == loaded[..., 1]).all()
        loaded = loaded[..., 0]
    error = np.abs(loaded.astype(int) - reference.astype(int)).mean()
    assert error < 8, f"{mode}: mean abs error {error:.1f}"


def test_transparency_is_composited_on_white(face):
    rgba = np.dstack([face, np.full(face.shape[:2], 255, np.uint8)])
    rgba[:10, :, 3] = 0  # transparent top rows
    loaded = load_rgb(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert (loaded[:10] == 255).all() and (loaded[10:] == face[10:]).all()
    palette = Image.fromarray(rgba, "RGBA").convert("P", palette=Image.Palette.ADAPTIVE)
    assert load_rgb(encode(palette, "PNG")).shape == face.shape


def test_animated_gif_gives_its_first_frame(face):
    frames = [Image.fromarray(face), Image.fromarray(255 - face)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    first = load_rgb(data).astype(int)
    assert np.abs(first - face).mean() < np.abs(first - (255 - face)).mean()


def test_bad_files_raise_clear_errors(face, tmp_path: Path, monkeypatch):
    jpeg = encode(Image.fromarray(face), "JPEG")
    cases = {
        "missing.jpg": None,
        "empty.jpg": b"",
        "text.jpg": b"this is not an image\n",
        "truncated.jpg": jpeg[: len(jpeg) // 3],
    }
    messages = {"missing.jpg": "image not found", "empty.jpg": "not an image", "text.jpg": "not an image",
                "truncated.jpg": "corrupt or truncated"}
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(ImageDecodeError, match=messages[name]) as info:
            load_rgb(path)
        assert name in str(info.value)
    monkeypatch.setattr(images, "MAX_PIXELS", 64 * 64)
    with pytest.raises(ImageDecodeError, match="too large"):
        load_rgb(jpeg)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb, optimize=True)  # 400 megapixels, a tiny file
    assert bomb.stat().st_size < 2_000_000
    with pytest.raises(ImageDecodeError, match="too large"):
        load_rgb(bomb)


def test_save_rgb_is_atomic_and_round_trips(face, tmp_path):
    target = tmp_path / "out" / "face.png"
    images.save_rgb(face, target)
    assert (load_rgb(target) == face).all()
    assert [p.name for p in target.parent.iterdir()] == ["face.png"]
