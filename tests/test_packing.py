"""FER+ packed into one file for a GPU machine and back: the same pixels and votes, the same dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fer_core.data import open_dataset
from fer_core.data.datasets import FERPLUS_CSV, load_ferplus_votes
from fer_core.data.packing import decode_gray, encode_gray, pack_ferplus, unpack_ferplus
from fer_core.errors import DataError, InvalidArgument

pytestmark = [pytest.mark.shared_data, pytest.mark.timeout(120)]


def test_codec_is_lossless_on_extremes_and_noise():
    rng = np.random.default_rng(0)
    images = np.stack([rng.integers(0, 256, (48, 48)), np.zeros((48, 48)), np.full((48, 48), 255),
                       np.tile([0, 255], (48, 24))]).astype(np.uint8)  # jumps of +-255: the mod-256 wrap
    np.testing.assert_array_equal(decode_gray(encode_gray(images)), images)


def _small_ferplus(ferplus_root: Path, target: Path, per_split: int) -> Path:
    """A FER+ folder holding the first ``per_split`` images of train and valid."""
    for folder in ("FER2013Train", "FER2013Valid"):
        (target / folder).mkdir(parents=True)
        for image in sorted((ferplus_root / folder).glob("*.png"))[:per_split]:
            shutil.copy(image, target / folder / image.name)
    shutil.copy(ferplus_root / FERPLUS_CSV, target / FERPLUS_CSV)
    return target


# the small copy lists every FER+ face in its csv but holds 40 of each split: the loader warns of the rest
@pytest.mark.filterwarnings("ignore:.*listed in fer2013new.csv but missing")
def test_unpacked_faces_equal_the_originals(ferplus_root, tmp_path):
    source = _small_ferplus(ferplus_root, tmp_path / "data" / "real" / "ferplus", per_split=40)
    pack = tmp_path / "ferplus.fpk"
    assert pack_ferplus(source, ["train", "valid"], pack) == {"train": 40, "valid": 40}
    assert unpack_ferplus(pack, tmp_path / "gpu" / "real" / "ferplus") == {"train": 40, "valid": 40}
    for split in ("train", "valid"):
        before = open_dataset(f"ferplus:{split}", tmp_path / "data")
        after = open_dataset(f"ferplus:{split}", tmp_path / "gpu")
        assert [s.key for s in before] == [s.key for s in after]
        np.testing.assert_array_equal(before.labels, after.labels)
        votes_before = load_ferplus_votes(source, split)
        votes_after = load_ferplus_votes(tmp_path / "gpu" / "real" / "ferplus", split)
        assert votes_before.names == votes_after.names
        np.testing.assert_array_equal(votes_before.votes, votes_after.votes)
        for original, unpacked in zip(before, after):
            np.testing.assert_array_equal(before.read(original), after.read(unpacked))
    # the faces are not trivially equal: 80 distinct images went through the codec
    assert len({np.asarray(Image.open(p)).tobytes() for p in (tmp_path / "gpu").rglob("*.png")}) == 80


def test_bad_input_is_refused_with_its_reason(ferplus_root, tmp_path):
    with pytest.raises(InvalidArgument, match="splits"):
        pack_ferplus(ferplus_root, ["training"], tmp_path / "x.fpk")
    with pytest.raises(DataError, match="no FER\\+ folder"):
        pack_ferplus(tmp_path, ["valid"], tmp_path / "x.fpk")
    corrupt = tmp_path / "corrupt.fpk"
    corrupt.write_bytes(b"not a pack")
    with pytest.raises(DataError, match="not a FER\\+ pack"):
        unpack_ferplus(corrupt, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written for a bad pack
