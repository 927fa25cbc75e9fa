"""The framing of FER+'s own crops, measured with the shipped detector, is the default face margin:
faces cut from photos fill the model's input as its training faces did."""

import pytest

from fer_core.config import FacesConfig, load_config
from fer_core.data import FerPlusDataset
from fer_core.errors import DataError
from fer_core.faces import detector_from_config
from fer_core.faces.framing import measure_framing


@pytest.mark.timeout(120)
def test_ferplus_crops_are_framed_tighter_than_the_old_margin_and_match_the_default(ferplus_root):
    detector = detector_from_config(load_config().faces)
    framing = measure_framing(FerPlusDataset(ferplus_root, "train"), detector, count=60, seed=0).summary()
    # 400 crops (seed 0) gave box ratio 0.865 (IQR 0.77-0.95) and margin 0.078 (IQR 0.025-0.149);
    # 60 seeded crops land within the quartiles of that median (a sample median's SE here is ~0.02).
    assert framing["faces_found"] >= 55, framing
    assert 0.025 <= framing["margin"] <= 0.149, framing
    assert FacesConfig().margin == pytest.approx(0.08) and load_config().faces.margin == pytest.approx(0.08)
    # the old default (0.25) framed faces looser than any quartile of FER+'s crops
    assert framing["margin_iqr"][1] < 0.25


def test_framing_needs_crops(synthetic_root):
    from fer_core.data import FolderDataset
    faces = FolderDataset(synthetic_root, name="sd", pre_cropped=False, domain="synthetic")
    with pytest.raises(DataError, match="pre-cropped"):
        measure_framing(faces, detector_from_config(load_config().faces))
