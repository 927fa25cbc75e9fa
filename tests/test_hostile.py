"""Hostile and odd inputs, generated here, through the engine API, the CLI and the Upload page.

Every input either works (a readable image gets faces and probabilities) or fails with one clear
message naming it: never a traceback, never a write outside the project's data, cache and runs
folders. The table of inputs and results is in docs/hardening.md.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import safetensors.torch
import torch
from PIL import Image

from fer_core.cli import main
from fer_core.config import load_config
from fer_core.data import DataWarning, Fer2013CsvDataset, FerPlusDataset, install_archive
from fer_core.errors import (ConfigError, DataError, ImageDecodeError, InvalidArgument, ModelLoadError,
                             UntrustedPickleError)
from fer_core.faces import FacePipeline, HaarDetector, whole_image_face
from fer_core.images import MAX_PIXELS, load_rgb
from fer_core.models import EmotionRecognizer, load_model, save_model
from fer_core.synthetic.extract import committed_grids
from fer_core.synthetic.ledger import CreditLedger

REPO = Path(__file__).resolve().parent.parent
HOME_PAGE = str(REPO / "dashboard" / "Home.py")
EVIL = "evil-hostile-marker"  # the file name every escape attempt aims for


# -- the image corpus ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Faces:
    """Real Stable Diffusion faces the corpus is made of."""

    face: np.ndarray            # one face, 128x96 (not square, so rotations show)
    gallery: list[np.ndarray]   # ten faces, 128x128 each


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_with_size(width: int, height: int) -> bytes:
    """A valid little PNG whose header claims ``width`` x ``height`` (a decompression bomb's header)."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = 8 + 8  # signature, then length and type of the IHDR chunk
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    return bytes(data)


def exif_rotated(faces: Faces) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers turn it 90 degrees clockwise
    return encode(Image.fromarray(faces.face).transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif, quality=95)


def bad_orientation(faces: Faces) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 99  # no such orientation
    return encode(Image.fromarray(faces.face), "JPEG", exif=exif)


def palette_with_transparency(faces: Faces) -> bytes:
    image = Image.fromarray(faces.face).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pixels = np.asarray(image).copy()
    pixels[:32] = 63  # the top quarter uses the transparent index
    image = Image.fromarray(pixels, "P")
    image.putpalette(Image.fromarray(faces.face).convert("P", palette=Image.Palette.ADAPTIVE, colors=64).getpalette())
    return encode(image, "PNG", transparency=63)


def animated_gif(faces: Faces) -> bytes:
    frames = [Image.fromarray(faces.face), Image.new("RGB", (96, 128)), Image.new("RGB", (96, 128), (90, 90, 90))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def ten_faces(faces: Faces) -> bytes:
    rows = [np.concatenate(faces.gallery[i:i + 5], axis=1) for i in (0, 5)]
    return encode(Image.fromarray(np.concatenate(rows, axis=0)), "JPEG", quality=95)


def no_face(faces: Faces) -> bytes:
    y, x = np.mgrid[0:160, 0:240]
    sky = np.stack([x / 240 * 80 + 60, y / 160 * 90 + 120, np.full_like(x, 220.0)], axis=2)
    noise = np.random.default_rng(0).normal(0, 6, sky.shape)
    return encode(Image.fromarray(np.clip(sky + noise, 0, 255).astype(np.uint8)), "JPEG")


def very_large_file(faces: Faces) -> bytes:
    """A 22.5 MB uncompressed BMP (over the 20 MiB upload cap) of a face on noise."""
    canvas = np.random.default_rng(1).integers(0, 256, (2500, 3000, 3), dtype=np.uint8)
    canvas[1000:1128, 1400:1496] = faces.face
    return encode(Image.fromarray(canvas), "BMP")


def corrupt_png(faces: Faces) -> bytes:
    data = bytearray(encode(Image.fromarray(faces.face), "PNG"))
    start = data.index(b"IDAT") + 40
    data[start:start + 64] = bytes(64)  # zero part of the compressed stream
    return bytes(data)


def gif_bomb(faces: Faces) -> bytes:
    data = bytearray(encode(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", 65535, 65535)  # logical screen size
    return bytes(data)


def two_pages(faces: Faces) -> bytes:
    return encode(Image.fromarray(faces.face), "TIFF", save_all=True, append_images=[Image.new("RGB", (96, 128))])


def jpeg(faces: Faces, **options) -> bytes:
    return encode(Image.fromarray(faces.face), "JPEG", quality=95, **options)


@dataclass(frozen=True)
class Case:
    """One hostile or odd image file: its name, how to make it, and what must happen.

    ``problem``: None for a readable image, else a fragment of the error message.
    ``shape``: the decoded (height, width) of a readable image. ``faces``: how many faces the
    Haar pipeline must find (None: not checked).
    """

    name: str
    build: Callable[[Faces], bytes]
    problem: str | None = None
    shape: tuple[int, int] | None = None
    faces: int | None = None


CASES = [
    Case("portrait.jpg", jpeg, shape=(128, 96)),
    Case("truncated.jpg", lambda f: jpeg(f)[:len(jpeg(f)) // 2], problem="truncated"),
    Case("truncated.png", lambda f: encode(Image.fromarray(f.face), "PNG")[:900], problem="truncated"),
    Case("zero-bytes.jpg", lambda f: b"", problem="not an image"),
    Case("notes.jpg", lambda f: b"Dear diary, today I felt happy.\n" * 20, problem="not an image"),
    Case("page.png", lambda f: b"<svg xmlns='http://www.w3.org/2000/svg'><circle r='9'/></svg>", problem="not an image"),
    Case("archive.jpg", lambda f: zip_bytes({"a.txt": b"x"}), problem="not an image"),
    Case("phone.jpg", lambda f: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200),
         problem="not an image"),
    Case("zeroed-idat.png", corrupt_png, problem="corrupt"),
    Case("bomb-20000x20000.png", lambda f: png_with_size(20000, 20000), problem="too large"),
    Case("over-limit-9000x8000.png", lambda f: png_with_size(9000, 8000), problem="too large"),
    Case("bomb-65535.gif", gif_bomb, problem="too large"),
    Case("sixteen-bit.png", lambda f: encode(Image.fromarray(
        np.asarray(Image.fromarray(f.face).convert("L")).astype(np.uint16) * 257), "PNG"), shape=(128, 96)),
    Case("cmyk.jpg", lambda f: encode(Image.fromarray(f.face).convert("CMYK"), "JPEG", quality=95), shape=(128, 96)),
    Case("palette-transparent.png", palette_with_transparency, shape=(128, 96)),
    Case("animated.gif", animated_gif, shape=(128, 96)),
    Case("exif-rotated.jpg", exif_rotated, shape=(128, 96)),
    Case("exif-bad-orientation.jpg", bad_orientation, shape=(128, 96)),
    Case("one-pixel.png", lambda f: encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), shape=(1, 1), faces=0),
    Case("sliver-1x400.png", lambda f: encode(Image.new("L", (400, 1), 128), "PNG"), shape=(1, 400), faces=0),
    Case("no-face.jpg", no_face, shape=(160, 240), faces=0),
    Case("ten-faces.jpg", ten_faces, shape=(256, 640), faces=10),
    Case("grayscale.jpg", lambda f: encode(Image.fromarray(f.face).convert("L"), "JPEG"), shape=(128, 96)),
    Case("very-large-file.bmp", very_large_file, shape=(2500, 3000)),
    Case("alpha.png", lambda f: encode(Image.fromarray(f.face).convert("RGBA"), "PNG"), shape=(128, 96)),
    Case("gray-alpha.png", lambda f: encode(Image.fromarray(f.face).convert("LA"), "PNG"), shape=(128, 96)),
    Case("float32.tif", lambda f: encode(Image.fromarray(
        np.asarray(Image.fromarray(f.face).convert("L")).astype(np.float32)), "TIFF"), shape=(128, 96)),
    Case("bilevel.png", lambda f: encode(Image.fromarray(f.face).convert("1"), "PNG"), shape=(128, 96)),
    Case("two-pages.tif", two_pages, shape=(128, 96)),
    Case("trailing-garbage.jpg", lambda f: jpeg(f) + np.random.default_rng(2).bytes(100_000), shape=(128, 96)),
    Case("really-a-jpeg.png", jpeg, shape=(128, 96)),
    Case("visage souriant ☺.webp", lambda f: encode(Image.fromarray(f.face), "WEBP"), shape=(128, 96)),
    Case("-rf --help.jpg", jpeg, shape=(128, 96)),
    Case("huge-icc-profile.jpg", lambda f: jpeg(f, icc_profile=b"\x00" * 60_000), shape=(128, 96)),
]
BY_NAME = {case.name: case for case in CASES}


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def faces(synthetic_root) -> Faces:
    def read(path: Path, size: tuple[int, int]) -> np.ndarray:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB").resize(size))
    gallery = sorted(synthetic_root.glob("*/*.jpg"))[::40][:10]
    return Faces(read(synthetic_root / "happy" / "happy_001.jpg", (96, 128)), [read(p, (128, 128)) for p in gallery])


@pytest.fixture(scope="module")
def corpus(faces) -> dict[str, bytes]:
    return {case.name: case.build(faces) for case in CASES}


def test_the_corpus_is_what_it_claims(corpus):
    assert len(CASES) >= 30 and len(BY_NAME) == len(CASES)
    assert corpus["zero-bytes.jpg"] == b"" and len(corpus["very-large-file.bmp"]) > 20 * 2**20
    assert len(corpus["bomb-20000x20000.png"]) < 100  # 400 megapixels claimed by a few bytes
    with Image.open(io.BytesIO(corpus["sixteen-bit.png"])) as image:
        assert image.mode == "I;16"
    with Image.open(io.BytesIO(corpus["cmyk.jpg"])) as image:
        assert image.mode == "CMYK"
    with Image.open(io.BytesIO(corpus["animated.gif"])) as image:
        assert image.n_frames == 3
    with Image.open(io.BytesIO(corpus["palette-transparent.png"])) as image:
        assert image.mode == "P" and "transparency" in image.info


# -- a sandbox: the project, and everything around it that must stay untouched -------------------

def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and link under ``root`` (not followed): size and modification time."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            path = os.path.join(folder, name)
            stat = os.lstat(path)
            found[os.path.relpath(path, root)] = (stat.st_size, stat.st_mtime_ns)
    return found


@dataclass
class Sandbox:
    """``root/project`` (config, data, cache, runs), ``root/inputs`` (the hostile files) and
    ``root/home``, ``root/tmp``, ``root/work`` (HOME, TMPDIR and the working directory of commands)."""

    root: Path

    @property
    def project(self) -> Path:
        return self.root / "project"

    @property
    def config(self) -> Path:
        return self.project / "configs" / "config.yaml"

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @contextmanager
    def writes_only_to_project_folders(self) -> Iterator[None]:
        """Fail if anything outside project/{data,cache,runs} is created, changed or removed, or
        if a file named like :data:`EVIL` appears anywhere in the sandbox or beside the repo."""
        before = snapshot(self.root)
        yield
        after = snapshot(self.root)
        allowed = tuple(f"project{os.sep}{folder}{os.sep}" for folder in ("data", "cache", "runs"))
        # matplotlib's font cache in the account's home (captum imports matplotlib): a library's
        # per-user cache, rebuilt on demand, not a project file
        allowed += (os.path.join("home", ".cache", "matplotlib", ""),)
        changed = sorted(path for path in set(before) | set(after)
                         if before.get(path) != after.get(path) and not path.startswith(allowed))
        assert changed == [], f"written outside the project's data/cache/runs folders: {changed}"
        escaped = [p for p in after if EVIL in p] + [str(p) for p in (REPO.parent, REPO, Path("/tmp"))
                                                     for p in p.glob(f"*{EVIL}*")]
        assert escaped == [], f"an escape attempt wrote {escaped}"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, tiny_model, corpus) -> Sandbox:
    box = Sandbox(tmp_path_factory.mktemp("hostile"))
    for folder in ("project/configs", "project/data", "project/cache", "project/runs", "inputs/faces/happy",
                   "home", "tmp", "work"):
        (box.root / folder).mkdir(parents=True)
    text = (REPO / "configs" / "config.yaml").read_text()
    text = text.replace("  weights_path: null", f"  weights_path: {tiny_model}")
    text = text.replace("  detector: auto", "  detector: haar").replace("  device: auto", "  device: cpu")
    box.config.write_text(text)
    folder = box.inputs / "faces" / "happy"
    for name, data in corpus.items():
        (folder / name).write_bytes(data)
    (folder / "link-to-a-text-file.jpg").symlink_to(box.config)  # a symlink to something that is no image
    (folder / "dangling-link.jpg").symlink_to(box.root / "nowhere.jpg")
    (folder / "link-loop.jpg").symlink_to(folder / "link-loop.jpg")
    return box


@pytest.fixture(scope="module")
def model(tiny_model):
    return load_model(tiny_model)


def cli(sandbox: Sandbox, *args: str, capsys) -> tuple[int, str]:
    """``fer-core --config <sandbox config> ARGS`` in this process: exit code and stderr."""
    code = main(["--config", str(sandbox.config), *args])
    return code, capsys.readouterr().err


# -- images through the engine API --------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_engine_decodes_each_image_or_names_the_problem(case, corpus, model, faces):
    data = corpus[case.name]
    if case.problem is not None:
        with pytest.raises(ImageDecodeError, match=case.problem) as caught:
            load_rgb(io.BytesIO(data) if data else data)
        assert caught.value.__cause__ is None  # one clear error, no chained traceback
        return
    rgb = load_rgb(data)
    assert rgb.dtype == np.uint8 and rgb.shape == (*case.shape, 3)
    pipeline = FacePipeline(HaarDetector(), crop_size=model.input_size)
    found = pipeline.extract(rgb)
    if case.faces is not None:
        assert len(found) == case.faces
    crops = [f.image for f in found] or [whole_image_face(rgb, model.input_size).image]
    labels, scores = EmotionRecognizer(model).predict_emotions(crops)
    assert len(labels) == len(crops) and np.allclose(scores.sum(axis=1), 1, atol=1e-5)
    assert np.isfinite(scores).all()
    if case.shape == (128, 96) and case.name not in ("bilevel.png", "palette-transparent.png"):
        gray = (rgb[..., 0] == rgb[..., 2]).all()
        reference = np.asarray(Image.fromarray(faces.face).convert("RGB" if not gray else "L"), dtype=float)
        error = np.abs((rgb[..., 0] if gray else rgb).astype(float) - reference).mean()
        assert error < 12, f"{case.name} decodes to other pixels than the face it holds (error {error:.1f})"


def test_engine_special_cases_decode_as_a_viewer_shows_them(corpus, faces):
    transparent = load_rgb(corpus["palette-transparent.png"])
    assert (transparent[:32] == 255).all()  # transparent pixels composited on white
    assert np.abs(load_rgb(corpus["animated.gif"]).astype(int) - faces.face).mean() < 12  # the first frame
    assert np.abs(load_rgb(corpus["two-pages.tif"]).astype(int) - faces.face).mean() < 2  # the first page
    gray = np.asarray(Image.fromarray(faces.face).convert("L"), dtype=int)
    assert np.abs(load_rgb(corpus["sixteen-bit.png"])[..., 0] - gray).max() <= 1


def test_ten_faces_are_found_one_per_tile(corpus, model):
    rgb = load_rgb(corpus["ten-faces.jpg"])
    found = FacePipeline(HaarDetector(), crop_size=model.input_size).extract(rgb)
    cells = sorted((int(f.detection.center[1] // 128), int(f.detection.center[0] // 128)) for f in found)
    assert cells == [(row, column) for row in range(2) for column in range(5)]


def test_max_pixels_guard_is_below_pillows_own(corpus):
    assert MAX_PIXELS < Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageDecodeError, match=f"{MAX_PIXELS:,}"):
        load_rgb(corpus["over-limit-9000x8000.png"])


# -- images through the CLI ---------------------------------------------------------------------

@pytest.mark.slow
def test_cli_predicts_a_folder_of_hostile_images(sandbox, corpus):
    out = sandbox.project / "runs" / "hostile-predict"
    env = {**os.environ, "HOME": str(sandbox.root / "home"), "TMPDIR": str(sandbox.root / "tmp"),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    with sandbox.writes_only_to_project_folders():
        done = subprocess.run([sys.executable, "-m", "fer_core", "--config", str(sandbox.config), "predict",
                               "--dataset", str(sandbox.inputs / "faces"), "--out", str(out)],
                              cwd=sandbox.root / "work", env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    table = pd.read_parquet(out / "predictions.parquet").set_index("key")
    names = {Path(key).name: key for key in table.index}
    assert "dangling-link.jpg" not in names and "link-loop.jpg" not in names  # not files: not listed
    assert "not an image" in table.loc[names["link-to-a-text-file.jpg"], "error"]
    for case in CASES:
        row = table.loc[names[case.name]]
        if case.problem is not None:
            assert case.problem in row["error"] and case.name in row["error"]
            assert case.name in done.stderr  # the summary warning lists it
        else:
            assert pd.isna(row["error"]) and row["pred"] >= 0, case.name
            probabilities = row[[c for c in table.columns if c.startswith("prob_")]].to_numpy(float)
            assert abs(probabilities.sum() - 1) < 1e-4
            if case.faces is not None:
                assert bool(row["face_found"]) == (case.faces > 0), case.name


# -- images through the Upload page -------------------------------------------------------------

def open_upload_page(monkeypatch, sandbox: Sandbox):
    from streamlit.testing.v1 import AppTest
    monkeypatch.setenv("FER_CORE_CONFIG", str(sandbox.config))
    app = AppTest.from_file(HOME_PAGE, default_timeout=600)
    app.run()
    app.switch_page(str(REPO / "pages" / "upload.py"))
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


UPLOAD_TYPES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")  # what the page's uploader accepts


def upload_name(case: Case) -> str:
    """The name a file is uploaded under: the uploader refuses other suffixes (Streamlit checks
    them on the server too), so a GIF or TIFF arrives named ``.png``, content unchanged."""
    return case.name if case.name.endswith(UPLOAD_TYPES) else case.name + ".png"


#: Shown by a test of its own (below): Streamlit's st.image(width=360) scales a 400x1 image to 360x0.
SLIVER = "sliver-1x400.png"


def test_upload_page_takes_the_whole_corpus_at_once(monkeypatch, sandbox, corpus):
    """The page decodes uploads with the same ``load_rgb`` (from bytes) as the engine."""
    app = open_upload_page(monkeypatch, sandbox)
    cases = [case for case in CASES if case.name != SLIVER]
    files = [(upload_name(case), corpus[case.name], "application/octet-stream") for case in cases]
    with sandbox.writes_only_to_project_folders():
        app.file_uploader[0].set_value(files).run()
    assert not app.exception, [e.value for e in app.exception]
    errors = [e.value for e in app.error]
    headers = [s.value for s in app.subheader]
    for case in cases:
        assert upload_name(case) in headers
        mentions = [e for e in errors if f"Cannot read {upload_name(case)}:" in e]
        if case.problem is None:
            assert mentions == [], mentions
        else:
            assert len(mentions) == 1 and case.problem in mentions[0]
    captions = [image.proto.imgs[0].caption for image in app.get("image")]
    assert "10 face(s)" in captions
    assert sum("No face found" in w.value for w in app.warning) >= 2  # 1x1 and the landscape


def test_upload_page_shows_an_image_one_pixel_high(monkeypatch, sandbox, corpus):
    app = open_upload_page(monkeypatch, sandbox)
    app.file_uploader[0].set_value((SLIVER, corpus[SLIVER], "image/png")).run()
    assert not app.exception, [e.value for e in app.exception]
    assert any("No face found" in w.value for w in app.warning)


# -- configuration files ------------------------------------------------------------------------

YAML_CASES = {
    "unclosed.yaml": (b"model: [unclosed\n", "not valid YAML"),
    "tabs.yaml": (b"model:\n\tinput_size: 64\n", "not valid YAML"),
    "latin1.yaml": (b"model:\n  architecture: caf\xe9\n", "not UTF-8"),
    "list.yaml": (b"- model\n- data\n", "expected a mapping"),
    "wrong-type.yaml": (b"model:\n  input_size: big\n", "model.input_size"),
    "unknown-key.yaml": (b"model:\n  inputsize: 64\n", "unknown config key 'model.inputsize'"),
    "negative.yaml": (b"faces:\n  margin: -1\n", "faces.margin"),
    "python-tag.yaml": (f"model: !!python/object/apply:os.system ['touch {EVIL}']\n".encode(), "not valid YAML"),
    "alias-bomb.yaml": (b"a: &a [x, x, x, x]\nb: &b [*a, *a, *a, *a]\nc: &c [*b, *b, *b, *b]\nd: [*c, *c, *c, *c]\n",
                        "unknown config key"),
    "missing-weights.yaml": (b"model:\n  weights_path: ../../nowhere.safetensors\n", "file not found"),
}


@pytest.mark.parametrize("name", sorted(YAML_CASES))
def test_bad_config_files_are_one_clear_error(name, sandbox, capsys):
    data, fragment = YAML_CASES[name]
    path = sandbox.inputs / "configs" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=fragment):
        load_config(path)
    with sandbox.writes_only_to_project_folders():
        code = main(["--config", str(path), "info"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("fer-core: error:") and fragment in err


@pytest.mark.parametrize("override,fragment", [("model.input_size=[", "not valid YAML"),
                                               ("nodot=1", "expected section.key=value"),
                                               ("model.input_size=-3", "must be positive"),
                                               ("model=3", "expected section.key=value")])
def test_bad_overrides_are_one_clear_error(override, fragment, sandbox, capsys):
    code, err = cli(sandbox, "--set", override, "info", capsys=capsys)
    assert code == 2 and fragment in err and "Traceback" not in err


# -- tables: CSV rows ---------------------------------------------------------------------------

def test_bad_fer2013_csv_rows_are_skipped_and_listed(sandbox):
    good = " ".join(["128"] * 2304)
    rows = [
        f"3,{good},Training",
        f"3,{' '.join(['1'] * 2303)},Training",           # a pixel short
        f"3,{' '.join(['x'] * 2304)},Training",           # not numbers
        f"9,{good},Training",                             # no such emotion
        f"3,{good},Holidays",                             # no such usage
        f"3,{' '.join(['300'] * 2304)},Training",         # out of range
        "3,1,2,3,Training,extra",                         # wrong fields
        "",                                               # blank line
    ]
    path = sandbox.inputs / "fer2013.csv"
    path.write_bytes(("emotion,pixels,Usage\n" + "\n".join(rows) + "\n").encode() + b"3,\xff\xfe,Training\n")
    with pytest.warns(DataWarning, match="skipped 7 bad rows") as caught:
        dataset = Fer2013CsvDataset(path)
    assert len(dataset) == 1 and (dataset.read(dataset[0]) == 128).all()
    message = str(caught[0].message)
    assert "row 1: 2303 pixel values" in message and "row 3: bad emotion '9'" in message
    assert "unreadable line" in message  # the Latin-1 bytes


def ferplus_root(sandbox: Sandbox, name: str, csv_bytes: bytes, faces: Faces) -> Path:
    root = sandbox.inputs / name
    (root / "FER2013Test").mkdir(parents=True)
    Image.fromarray(faces.face).convert("L").resize((48, 48)).save(root / "FER2013Test" / "fer0000001.png")
    header = b"Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
    (root / "fer2013new.csv").write_bytes(header + csv_bytes)
    return root


@pytest.mark.parametrize("name,rows,fragment", [
    ("ferplus-latin1", b"PrivateTest,fer0000001.png,\xe9,9,0,0,0,0,0,0,0,0\n", "not a readable UTF-8 csv"),
    ("ferplus-short-row", b"PrivateTest,fer0000001.png,1,9\n", "has 4 fields, expected 12"),
    ("ferplus-text-votes", b"PrivateTest,fer0000001.png,one,9,0,0,0,0,0,0,0,0\n", "votes must be integers"),
])
def test_bad_ferplus_tables_are_one_clear_error(name, rows, fragment, sandbox, faces, capsys):
    root = ferplus_root(sandbox, name, rows, faces)
    with pytest.raises(DataError, match=fragment):
        FerPlusDataset(root, "test")
    data_root = sandbox.inputs / f"{name}-data" / "real"
    data_root.mkdir(parents=True)
    (data_root / "ferplus").symlink_to(root)
    with sandbox.writes_only_to_project_folders():
        code, err = cli(sandbox, "--set", f"data.root={data_root.parent}", "evaluate", "--dataset", "ferplus:test",
                        "--name", name, capsys=capsys)
    assert code == 2 and fragment in err


def test_ferplus_names_that_climb_out_are_skipped(sandbox, faces):
    Image.fromarray(faces.face).save(sandbox.inputs / "outside-face.png")  # exists, outside the split folder
    rows = (b"PrivateTest,fer0000001.png,0,9,0,0,0,0,0,0,0,0\n"
            b"PrivateTest,../../outside-face.png,0,9,0,0,0,0,0,0,0,0\n")
    root = ferplus_root(sandbox, "ferplus-traversal", rows, faces)
    with pytest.warns(DataWarning, match="missing from"):
        dataset = FerPlusDataset(root, "test")
    assert [s.key for s in dataset] == ["FER2013Test/fer0000001.png"]


# -- weights files ------------------------------------------------------------------------------

class RunsAShellCommand:
    """What a malicious pickle holds: unpickling it runs ``touch <EVIL>``."""

    def __reduce__(self):
        return os.system, (f"touch {EVIL}",)


@pytest.fixture(scope="module")
def checkpoints(sandbox, model, tiny_model) -> dict[str, Path]:
    folder = sandbox.inputs / "weights"
    folder.mkdir()
    state = model.module.state_dict()
    files = {}
    wrong = dict(state)
    first_conv = next(k for k, v in state.items() if v.ndim == 4)
    wrong[first_conv] = torch.zeros(7, *state[first_conv].shape[1:])
    files["wrong-shapes.pt"] = folder / "wrong-shapes.pt"
    torch.save(wrong, files["wrong-shapes.pt"])
    pair = save_model(model, folder / "wrong-shapes-pair")
    safetensors.torch.save_file({k: v.contiguous() for k, v in wrong.items()}, str(pair))
    meta = json.loads(pair.with_suffix(".json").read_text())
    meta["weights_sha256"] = hashlib.sha256(pair.read_bytes()).hexdigest()
    pair.with_suffix(".json").write_text(json.dumps(meta))
    files["wrong-shapes-pair.safetensors"] = pair
    files["truncated.safetensors"] = folder / "truncated.safetensors"
    files["truncated.safetensors"].write_bytes(tiny_model.read_bytes()[:tiny_model.stat().st_size // 2])
    (folder / "truncated.json").write_text(tiny_model.with_suffix(".json").read_text())
    files["no-sidecar.safetensors"] = folder / "no-sidecar.safetensors"
    files["no-sidecar.safetensors"].write_bytes(tiny_model.read_bytes())
    bad_meta = folder / "bad-sidecar.safetensors"
    bad_meta.write_bytes(tiny_model.read_bytes())
    bad_meta.with_suffix(".json").write_text(json.dumps({**json.loads(tiny_model.with_suffix(".json").read_text()),
                                                         "format_version": 99}))
    files["bad-sidecar.safetensors"] = bad_meta
    files["zero-bytes.pt"] = folder / "zero-bytes.pt"
    files["zero-bytes.pt"].write_bytes(b"")
    files["notes.pt"] = folder / "notes.pt"
    files["notes.pt"].write_text("not weights\n")
    files["pickled-model.pt"] = folder / "pickled-model.pt"
    torch.save(model.module, files["pickled-model.pt"])
    files["runs-a-command.pt"] = folder / "runs-a-command.pt"
    torch.save({"weights": RunsAShellCommand()}, files["runs-a-command.pt"])
    files["damaged.pt"] = folder / "damaged.pt"
    files["damaged.pt"].write_bytes(zip_bytes({"archive/data.pkl": b"\x80\x02 not a pickle", "archive/version": b"3"}))
    files["raw-pickle.pkl"] = folder / "raw-pickle.pkl"
    files["raw-pickle.pkl"].write_bytes(pickle.dumps(RunsAShellCommand()))
    return files


CHECKPOINT_PROBLEMS = {
    "wrong-shapes.pt": "fit no registered architecture",
    "wrong-shapes-pair.safetensors": "do not fit the expected architecture",
    "truncated.safetensors": "sha256 differs",
    "no-sidecar.safetensors": "is missing",
    "bad-sidecar.safetensors": "format_version",
    "zero-bytes.pt": "not a weights file in a known format",
    "notes.pt": "not a weights file in a known format",
    "pickled-model.pt": "is a pickled model",
    "runs-a-command.pt": "is a pickled model",
    "damaged.pt": "damaged torch archive",
    "raw-pickle.pkl": "not a weights file in a known format",
}


@pytest.mark.parametrize("name", sorted(CHECKPOINT_PROBLEMS))
def test_bad_weights_files_are_refused_clearly(name, checkpoints, sandbox, capsys):
    path = checkpoints[name]
    with pytest.raises(ModelLoadError, match=CHECKPOINT_PROBLEMS[name]):
        load_model(path)
    with sandbox.writes_only_to_project_folders():
        code, err = cli(sandbox, "predict", "--model", str(path), "--dataset", str(sandbox.inputs / "faces"),
                        "--out", str(sandbox.project / "runs" / f"refused-{name}"), capsys=capsys)
    assert code == 2 and CHECKPOINT_PROBLEMS[name] in err
    assert not (sandbox.root / "work" / EVIL).exists() and not Path(EVIL).exists()


def test_a_pickle_loads_only_with_trust_and_a_warning(checkpoints, model):
    with pytest.raises(UntrustedPickleError, match="trust_pickle"):
        load_model(checkpoints["pickled-model.pt"])
    with pytest.warns(UserWarning, match="runs code from the file"):
        trusted = load_model(checkpoints["pickled-model.pt"], trust_pickle=True)
    assert trusted.fingerprint == model.fingerprint


# -- archives and manifests: names that climb out ----------------------------------------------

def face_jpeg(faces: Faces) -> bytes:
    return encode(Image.fromarray(faces.face), "JPEG")


def symlink_member(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = (0o120777 << 16)  # a symlink, as `zip --symlinks` stores it
    return info, target.encode()


ARCHIVES: dict[str, tuple[list[tuple[str | zipfile.ZipInfo, bytes | None]], str | None]] = {
    "dot-dot": ([("synthetic_sd_faces/happy/a.jpg", None), (f"../../{EVIL}.jpg", b"x")], "outside"),
    "dot-dot-inside-prefix": ([("synthetic_sd_faces/happy/a.jpg", None),
                               (f"synthetic_sd_faces/../../../{EVIL}", b"x")], "outside"),
    "backslashes": ([("synthetic_sd_faces/happy/a.jpg", None), (f"..\\..\\{EVIL}.jpg", b"x")], "outside"),
    "absolute": ([("synthetic_sd_faces/happy/a.jpg", None), (f"/tmp/{EVIL}.jpg", b"x")], "absolute path"),
    "drive-letter": ([("synthetic_sd_faces/happy/a.jpg", None), (f"C:/{EVIL}.jpg", b"x")], "absolute path"),
    "unknown-class": ([("synthetic_sd_faces/elated/a.jpg", None)], "unknown class folders"),
    "empty": ([], "has nothing under"),
    "symlink-member": ([("synthetic_sd_faces/happy/a.jpg", None),
                        symlink_member("synthetic_sd_faces/happy/link.jpg", f"../../../../{EVIL}")], None),
}


def write_archive(path: Path, members, faces: Faces) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members:
            archive.writestr(name, face_jpeg(faces) if data is None else data)
    return path


@pytest.mark.parametrize("name", sorted(ARCHIVES))
def test_archives_cannot_write_outside_their_dataset_folder(name, sandbox, faces, capsys):
    members, fragment = ARCHIVES[name]
    archive = write_archive(sandbox.inputs / "archives" / name / "synthetic_sd_faces.zip", members, faces)
    data_root = sandbox.project / "data"
    with sandbox.writes_only_to_project_folders():
        code, err = cli(sandbox, "data", "install", str(archive), capsys=capsys)
    target = data_root / "synthetic" / "sd_faces"
    leftovers = [p.name for p in (data_root / "synthetic").glob(".sd_faces-*")] if code else []
    assert leftovers == []  # no staging folder survives
    if fragment is None:  # a symlink member is unpacked as a plain file holding the link text
        assert code == 0
        link = target / "happy" / "link.jpg"
        assert not link.is_symlink() and link.read_text().endswith(EVIL)
        shutil.rmtree(target)
    else:
        assert code == 2 and fragment in err and not target.exists()
        with pytest.raises(DataError, match=fragment):
            install_archive(archive, "sd_faces", data_root)


def test_not_a_zip_is_one_clear_error(sandbox, capsys):
    fake = sandbox.inputs / "archives" / "fake" / "synthetic_sd_faces.zip"
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"PK\x03\x04 but nothing else")
    code, err = cli(sandbox, "data", "install", str(fake), capsys=capsys)
    assert code == 2 and "not a readable zip" in err


def ledger_with(sandbox: Sandbox, name: str, entry: dict) -> Path:
    folder = sandbox.project / "data" / "synthetic"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ledger.json"
    base = {"id": name, "status": "committed", "credits": 1, "emotion": "Happiness", "gender": "women",
            "prompt_id": "p", "seed": 0, "sha256": None}
    path.write_text(json.dumps({"version": 1, "budget": 10, "entries": [{**base, **entry}]}))
    return path


def test_a_ledger_pointing_outside_its_folder_is_refused(sandbox, faces, capsys):
    outside = sandbox.inputs / "grid-outside.png"
    Image.fromarray(np.concatenate([faces.face] * 2, axis=1)).save(outside)
    path = ledger_with(sandbox, "climb", {"file": os.path.relpath(outside, sandbox.project / "data" / "synthetic")})
    with pytest.raises(DataError, match="outside"):
        committed_grids(CreditLedger(path))
    with sandbox.writes_only_to_project_folders():
        code, err = cli(sandbox, "synth", "extract", capsys=capsys)
    assert code == 2 and "outside" in err
    path.unlink()


@pytest.mark.parametrize("content,fragment", [(b"{not json", "corrupt credit ledger"),
                                              (b'{"version": 1, "budget": "\xff"}', "corrupt credit ledger"),
                                              (b"[]", "is not a version-1 credit ledger")])
def test_a_corrupt_ledger_is_one_clear_error(content, fragment, sandbox, capsys):
    path = sandbox.project / "data" / "synthetic" / "ledger.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    code, err = cli(sandbox, "synth", "ledger", capsys=capsys)
    assert code == 2 and fragment in err
    path.unlink()


def test_a_manifest_pointing_outside_is_refused(sandbox, faces, capsys):
    root = sandbox.project / "data" / "synthetic"
    outside = sandbox.inputs / "face-outside.png"
    Image.fromarray(faces.face).save(outside)
    manifest = pd.DataFrame([{"emotion": "Happiness", "gender": "women", "intensity": None, "split": "train",
                              "accepted": True, "reject_reason": None, "grid_file": "grid.png",
                              "face_file": os.path.relpath(outside, root / "processed")}])
    (root / "processed").mkdir(parents=True, exist_ok=True)
    manifest.to_parquet(root / "manifest.parquet")
    with sandbox.writes_only_to_project_folders():
        code, err = cli(sandbox, "synth", "report", capsys=capsys)
    assert code == 2 and "outside" in err
    manifest.drop(columns=["grid_file"]).to_parquet(root / "manifest.parquet")
    code, err = cli(sandbox, "synth", "report", capsys=capsys)
    assert code == 2 and "not an extraction manifest" in err
    (root / "manifest.parquet").write_bytes(b"PAR1 this is not parquet")
    code, err = cli(sandbox, "synth", "report", capsys=capsys)
    assert code == 2 and "unreadable manifest" in err
    (root / "manifest.parquet").unlink()


@pytest.mark.parametrize("name", ["../../" + EVIL, "..", "a/b", "..\\" + EVIL])
def test_run_names_cannot_leave_the_runs_folder(name, sandbox, capsys):
    with sandbox.writes_only_to_project_folders():
        code, err = cli(sandbox, "evaluate", "--dataset", str(sandbox.inputs / "faces"), "--name", name,
                        "--limit", "2", capsys=capsys)
    assert code == 2 and "plain folder name" in err
    with sandbox.writes_only_to_project_folders():
        code, err = cli(sandbox, "train", "--train", "fer2013:train", "--val", "fer2013:test", "--name", name,
                        "--resume", capsys=capsys)
    assert code == 2 and "plain folder name" in err


# -- security settings --------------------------------------------------------------------------

def streamlit_options(home: Path, *names: str) -> list:
    """The values Streamlit itself reads from the project's .streamlit/config.toml."""
    script = ("import json; from streamlit import config; config.get_config_options(force_reparse=True); "
              f"print(json.dumps([config.get_option(n) for n in {list(names)!r}]))")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(home)})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_uploads_are_capped_and_xsrf_is_on(corpus, tmp_path):
    cap_mib, xsrf = streamlit_options(tmp_path, "server.maxUploadSize", "server.enableXsrfProtection")
    assert cap_mib == 20 and len(corpus["very-large-file.bmp"]) > cap_mib * 2**20
    assert xsrf is True
    # A file under the byte cap can still claim billions of pixels: the decoder guard refuses it.
    assert len(corpus["bomb-65535.gif"]) < 1000
    with pytest.raises(ImageDecodeError, match="too large"):
        load_rgb(corpus["bomb-65535.gif"])


def test_the_running_server_refuses_an_upload_without_the_xsrf_token(tmp_path):
    """Start the dashboard (the Docker entrypoint's command) and PUT a file as a foreign page would."""
    import socket
    import time
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "dashboard/Home.py",
                               "--server.address=127.0.0.1", f"--server.port={port}", "--server.headless=true"],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "HOME": str(tmp_path)})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                assert urllib.request.urlopen(f"{base}/_stcore/health", timeout=5).read() == b"ok"
                break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None and time.monotonic() < deadline, "the dashboard did not start"
                time.sleep(0.5)
        request = urllib.request.Request(f"{base}/_stcore/upload_file/some-session/some-file", method="PUT",
                                         data=b"x" * 1000, headers={"Content-Type": "application/octet-stream"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 403 and b"XSRF" in refused.value.read()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_api_keys_come_only_from_the_environment():
    """The synthetic backends read a key only through ``api_key_env``; a key in a config file is
    refused with that advice (so it is never stored in a ledger or logged)."""
    from fer_core.synthetic.backends import HttpBackend, create_backend
    source = (REPO / "fer_core" / "synthetic" / "backends.py").read_text()
    assert source.count("os.environ") == 1 and "os.environ.get(self.api_key_env)" in source
    with pytest.raises(InvalidArgument, match="read from the environment only"):
        create_backend("http", endpoint="https://example.invalid/v1", api_key="sk-live-123")
    backend = create_backend("http", endpoint="https://example.invalid/v1", api_key_env="FER_TEST_KEY_UNSET")
    assert isinstance(backend, HttpBackend) and "sk-" not in json.dumps(vars(backend), default=str)
    with pytest.raises(ConfigError, match="FER_TEST_KEY_UNSET is not set"):
        backend._headers()


def test_api_key_never_reaches_files_or_logs(sandbox, faces, capsys, caplog, monkeypatch):
    """``synth generate`` against an endpoint that refuses: the key is sent, then found nowhere."""
    import http.server
    import threading
    key = "sk-hostile-test-0123456789"
    seen = []

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            seen.append(self.headers.get("Authorization"))
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(400)
            self.end_headers()
            self.wfile.write(b'{"error": "bad prompt"}')

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("FER_HOSTILE_KEY", key)
    settings = sandbox.inputs / "backend.json"
    settings.write_text(json.dumps({"endpoint": f"http://127.0.0.1:{server.server_port}/v1",
                                    "api_key_env": "FER_HOSTILE_KEY", "max_retries": 0}))
    try:
        with sandbox.writes_only_to_project_folders(), caplog.at_level("DEBUG"):
            code, err = cli(sandbox, "synth", "generate", "--emotion", "Happiness", "--gender", "women",
                            "--backend-config", str(settings), "--budget", "3", capsys=capsys)
    finally:
        server.shutdown()
    assert code == 2 and seen == [f"Bearer {key}"]  # the only grid was refused: 0 of 1 made
    written = [p for p in sandbox.root.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.name == "ledger.json" for p in written)
    leaks = [str(p) for p in written if key.encode() in p.read_bytes()]
    assert leaks == [] and key not in err and key not in caplog.text
