"""Datasets on the real shared faces: FER2013 folders and csv, FER+ protocols, splits, the
torch wrapper's handling of bad files, the registry and safe archive installation."""

from __future__ import annotations

import collections
import csv
import shutil
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

from fer_core import labels
from fer_core.data import (
    DataWarning,
    Fer2013CsvDataset,
    FerPlusDataset,
    FolderDataset,
    TorchFaceDataset,
    available_datasets,
    collate_skip_bad,
    install_archive,
    load_ferplus_votes,
    open_dataset,
    stratified_kfold,
    stratified_split,
)
from fer_core.data.agreement import label_agreement, match_faces
from fer_core.errors import DataError, ImageDecodeError
from fer_core.images import load_rgb
from fer_core.preprocess import Preprocessing

pytestmark = pytest.mark.shared_data

FER2013_TRAIN = {"Anger": 3995, "Disgust": 436, "Fear": 4097, "Happiness": 7215, "Neutral": 4965,
                 "Sadness": 4830, "Surprise": 3171}
FER2013_TEST = {"Anger": 958, "Disgust": 111, "Fear": 1024, "Happiness": 1774, "Neutral": 1233,
                "Sadness": 1247, "Surprise": 831}
#: FER+ test, majority protocol (top vote unknown/NF or tied: dropped), from fer2013new.csv.
FERPLUS_TEST_MAJORITY = {"Anger": 316, "Contempt": 26, "Disgust": 22, "Fear": 92, "Happiness": 909,
                         "Neutral": 1165, "Sadness": 424, "Surprise": 421}


def _real_faces(fer2013_root: Path, count: int) -> list[Path]:
    """``count`` real FER2013 test faces, spread over every class."""
    dataset = FolderDataset(fer2013_root, "test")
    positions = np.linspace(0, len(dataset) - 1, count).astype(int)
    return [Path(dataset[int(i)].source) for i in positions]


# ---------------------------------------------------------------- FER2013 folders and csv

def test_fer2013_folders_counts(fer2013_root: Path) -> None:
    train, test = FolderDataset(fer2013_root, "train"), FolderDataset(fer2013_root, "test")
    assert (len(train), len(test)) == (28_709, 7_178)
    assert train.class_counts() == FER2013_TRAIN
    assert test.class_counts() == FER2013_TEST
    assert "Contempt" not in train.emotions and len(train.emotions) == 7
    usages = collections.Counter(Path(s.key).name.split("_")[0] for s in test)
    assert usages == {"PublicTest": 3589, "PrivateTest": 3589}
    keys = [s.key for s in test]
    first_angry = min(p.name for p in (fer2013_root / "test" / "angry").iterdir())
    assert keys == sorted(keys) and keys[0] == f"test/angry/{first_angry}"
    face = test.read(test[0])
    assert face.shape == (48, 48, 3) and face.dtype == np.uint8 and face.std() > 10


def test_fer2013_csv_bad_rows_and_pixel_identity(fer2013_root: Path, tmp_path: Path) -> None:
    faces = _real_faces(fer2013_root, 300)
    grays = [load_rgb(p)[:, :, 0] for p in faces]
    csv_labels = [labels.FER2013_CSV.source_names.index(labels.FER2013_CSV.source_name(
        labels.FER2013_FOLDERS.emotion(p.parent.name))) for p in faces]
    rows = [[str(label), " ".join(map(str, gray.ravel())), "PublicTest" if i % 2 else "Training"]
            for i, (label, gray) in enumerate(zip(csv_labels, grays, strict=True))]
    good_pixels = rows[0][1]
    bad = {
        10: ["3", " ".join(good_pixels.split()[:-1]), "Training"],          # 2303 values
        50: ["3", "x " + good_pixels.split(" ", 1)[1], "Training"],          # non-numeric
        120: ["9", good_pixels, "Training"],                                 # bad label
        200: ["2", "300 " + good_pixels.split(" ", 1)[1], "Training"],        # out of range
        250: ["2", good_pixels, "Validation"],                               # bad usage
    }
    all_rows = list(rows)
    for position in sorted(bad):
        all_rows.insert(position, bad[position])
    path = tmp_path / "fer2013.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["emotion", "pixels", "Usage"])
        writer.writerows(all_rows)

    with pytest.warns(DataWarning) as record:
        dataset = Fer2013CsvDataset(path)
    assert len(record) == 1
    message = str(record[0].message)
    assert "skipped 5 bad rows" in message
    for position in bad:
        assert f"row {position}:" in message
    assert "2303 pixel values" in message and "non-numeric" in message and "'9'" in message
    assert "300" in message and "'Validation'" in message
    assert [row for row, _ in dataset.skipped_rows] == sorted(bad)

    assert len(dataset) == 300
    assert dataset.labels.tolist() == [labels.FER2013_FOLDERS.index(p.parent.name) for p in faces]
    good_rows = [r for r in range(len(all_rows)) if r not in bad]
    for position in range(0, 300, 7):
        sample = dataset[position]
        assert sample.key == f"csv:{good_rows[position]}"
        assert sample.split == ("PublicTest" if position % 2 else "Training")
        pixels = dataset.read(sample)
        assert pixels.shape == (48, 48, 3) and pixels.dtype == np.uint8
        assert np.array_equal(pixels[:, :, 0], grays[position]) and np.array_equal(pixels[:, :, 2], grays[position])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        public = Fer2013CsvDataset(path, usage="PublicTest")
    assert len(public) == 150 and {s.split for s in public} == {"PublicTest"}
    assert np.array_equal(public.read(public[3]), dataset.read(dataset[7]))


# ---------------------------------------------------------------- FER+

def test_ferplus_files_and_majority_counts(ferplus_root: Path) -> None:
    for split, folder, expected in (("train", "FER2013Train", 28_558), ("valid", "FER2013Valid", 3_579),
                                    ("test", "FER2013Test", 3_573)):
        names, votes = load_ferplus_votes(ferplus_root, split)
        on_disk = sorted(p.name for p in (ferplus_root / folder).glob("*.png"))
        assert len(names) == expected and list(names) == on_disk
        assert votes.shape == (expected, 10)
    test = FerPlusDataset(ferplus_root, "test")
    assert test.class_counts() == FERPLUS_TEST_MAJORITY and len(test) == 3_375
    assert test.emotions == labels.EMOTIONS and test.pre_cropped
    first = test[0]
    assert first.key == "FER2013Test/fer0032220.png" and first.label == labels.EMOTION_INDEX["Contempt"]
    assert test.read(first).shape == (48, 48, 3)
    # fer0033120.png is listed twice; the file is the later row's image (a non-face, NF=10).
    names, votes = load_ferplus_votes(ferplus_root, "test")
    assert votes[names.index("fer0033120.png")].tolist() == [0] * 9 + [10]
    assert "FER2013Test/fer0033120.png" not in {s.key for s in test}


def test_ferplus_readme_figures_come_from_argmax_without_tie_dropping(ferplus_root: Path) -> None:
    """The README's 27 contempt / 23 disgust are plain argmax (ties to the first column),
    not the tie-dropping majority protocol, which gives 26 / 22 (asserted above)."""
    _, votes = load_ferplus_votes(ferplus_root, "test")
    top = [labels.FERPLUS_VOTES.emotion(int(i)) for i in votes.argmax(axis=1)]
    counts = collections.Counter(e for e in top if e is not None)
    assert (counts["Contempt"], counts["Disgust"]) == (27, 23)


def test_ferplus_soft_labels(ferplus_root: Path) -> None:
    soft = FerPlusDataset(ferplus_root, "test", label_mode="soft")
    majority = FerPlusDataset(ferplus_root, "test")
    assert len(soft) == 3_572  # one test image has only unknown/NF votes
    majority_of = {s.key: s.label for s in majority}
    agree = 0
    for sample in soft:
        distribution = np.array(sample.soft_label)
        assert distribution.shape == (8,) and abs(distribution.sum() - 1.0) < 1e-9 and distribution.min() >= 0
        assert sample.label == int(distribution.argmax())
        if sample.key in majority_of:
            assert sample.label == majority_of[sample.key]
            agree += 1
    assert agree == len(majority)
    sample = soft[[s.key for s in soft].index("FER2013Test/fer0032220.png")]
    assert sample.soft_label == pytest.approx((0.2, 0.7, 0.1, 0, 0, 0, 0, 0))  # votes anger 2, disgust 1, contempt 7


# ---------------------------------------------------------------- splits

def test_stratified_split_deterministic_and_proportional(fer2013_root: Path) -> None:
    y = FolderDataset(fer2013_root, "train").labels
    parts = stratified_split(y, {"train": 0.8, "valid": 0.1, "test": 0.1}, seed=3)
    again = stratified_split(y, (0.8, 0.1, 0.1), seed=3)
    other = stratified_split(y, (0.8, 0.1, 0.1), seed=4)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    assert not np.array_equal(parts["test"], other["test"])
    assert np.array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(len(y)))
    assert abs(len(parts["test"]) - 0.1 * len(y)) <= 1
    overall = np.bincount(y) / len(y)
    for part in parts.values():
        share = np.bincount(y[part], minlength=len(overall)) / len(part)
        assert np.abs(share - overall).max() < 0.002
    folds = stratified_kfold(y, k=5, seed=0)
    held_out = np.concatenate([test for _, test in folds])
    assert np.array_equal(np.sort(held_out), np.arange(len(y)))
    assert all(np.abs(np.bincount(y[test]) / len(test) - overall).max() < 0.002 for _, test in folds)
    assert np.array_equal(folds[2][1], stratified_kfold(y, k=5, seed=0)[2][1])
    with pytest.raises(DataError, match="summing to 1"):
        stratified_split(y, (0.8, 0.3), seed=0)
    with pytest.raises(DataError, match="rarest class has only 1"):
        stratified_kfold(np.array([0, 0, 0, 1]), k=2, seed=0)


# ---------------------------------------------------------------- torch wrapper and bad files

def _folder_with_bad_files(fer2013_root: Path, root: Path) -> tuple[list[Path], list[Path]]:
    faces = _real_faces(fer2013_root, 40)
    good = []
    for face in faces:
        target = root / face.parent.name / face.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(face, target)
        good.append(target)
    corrupt = root / "happy" / "corrupt.jpg"
    corrupt.write_bytes(faces[0].read_bytes()[:200])
    empty = root / "sad" / "empty.png"
    empty.write_bytes(b"")
    return good, [corrupt, empty]


@pytest.mark.parametrize("workers", [0, 2])
def test_torch_dataset_skips_bad_files_with_one_warning(fer2013_root: Path, tmp_path: Path, workers: int) -> None:
    good, bad = _folder_with_bad_files(fer2013_root, tmp_path / "faces")
    dataset = FolderDataset(tmp_path / "faces")
    assert len(dataset) == 42
    with pytest.raises(ImageDecodeError):
        dataset.read(dataset[[s.source for s in dataset].index(str(bad[1]))])
    torch_dataset = TorchFaceDataset(dataset, Preprocessing(input_size=48).to_tensor)
    loader = DataLoader(torch_dataset, batch_size=8, num_workers=workers, collate_fn=collate_skip_bad)
    seen, label_sum = [], 0
    for batch in loader:
        assert batch["image"].shape[1:] == (3, 48, 48)
        assert (batch["soft_label"].argmax(dim=1) == batch["label"]).all()
        seen.extend(batch["index"].tolist())
        label_sum += int(batch["label"].sum())
    good_positions = [i for i, s in enumerate(dataset) if Path(s.source) in good]
    assert sorted(seen) == good_positions
    assert label_sum == int(dataset.labels[good_positions].sum())
    with pytest.warns(DataWarning) as record:
        skipped = torch_dataset.warn_skipped()
    assert len(record) == 1
    assert sorted(entry.split(": ")[0] for entry in skipped) == sorted(map(str, bad))
    assert all(str(path) in str(record[0].message) for path in bad)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch_dataset.warn_skipped() == []  # the log starts afresh for the next pass


def test_torch_dataset_soft_labels(ferplus_root: Path) -> None:
    soft = FerPlusDataset(ferplus_root, "test", label_mode="soft").subset([0, 1])
    item = TorchFaceDataset(soft, Preprocessing(input_size=48).to_tensor)[0]
    assert item["soft_label"].tolist() == pytest.approx(list(soft[0].soft_label))
    assert item["index"] == 0 and item["label"] == soft[0].label


# ---------------------------------------------------------------- labels and memory

def test_label_maps_round_trip(tmp_path: Path) -> None:
    for label_map in labels.LABEL_MAPS.values():
        for position, source in enumerate(label_map.source_names):
            emotion = label_map.emotion(source)
            assert label_map.emotion(position) == emotion
            if emotion is None:
                assert label_map.index(source) == -1
                continue
            assert labels.EMOTIONS[label_map.index(source)] == emotion
            assert label_map.emotion(label_map.source_name(emotion)) == emotion
        if label_map is not labels.CLASS_FOLDERS:  # the only map with aliases
            assert all(label_map.source_name(label_map.emotion(s)) == s
                       for s in label_map.source_names if label_map.emotion(s))
    for emotion in labels.EMOTIONS:
        folder = tmp_path / labels.folder_name(emotion).upper()
        folder.mkdir()
        (folder / "face.png").write_bytes(b"not read")
    dataset = FolderDataset(tmp_path)
    assert dataset.emotions == labels.EMOTIONS
    assert [labels.EMOTIONS[s.label] for s in dataset] == sorted(
        labels.EMOTIONS, key=lambda e: labels.folder_name(e).upper())


def test_folder_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no class folders"):
        FolderDataset(tmp_path)
    (tmp_path / "happy").mkdir()
    with pytest.raises(DataError, match="happy has no images"):
        FolderDataset(tmp_path)
    (tmp_path / "happy" / "a.jpg").write_bytes(b"x")
    (tmp_path / "joyful").mkdir()
    with pytest.raises(DataError, match=r"unknown class folders \['joyful'\].*accepted names"):
        FolderDataset(tmp_path)


def test_iterating_keeps_no_pixels(fer2013_root: Path) -> None:
    # A first dataset and read outside the trace: the first use in a process imports modules and
    # fills caches (measured 18 MB when no test before this one had read an image), which is not the
    # index's size. The dataset keeps no cache of its own, so the traced one is built from scratch.
    warm = FolderDataset(fer2013_root, "train")
    warm.read(warm[0])
    del warm
    tracemalloc.start()
    dataset = FolderDataset(fer2013_root, "train")
    index_bytes, _ = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    checksum = 0
    for position, sample in enumerate(dataset):
        if position == 500:
            break
        checksum += int(dataset.read(sample)[24, 24, 0])
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"FER2013 train index: {index_bytes / 1e6:.2f} MB for {len(dataset)} samples; reading 500 faces: "
          f"peak +{(peak - index_bytes) / 1e3:.0f} kB, after +{(current - index_bytes) / 1e3:.0f} kB")
    assert checksum > 0
    # ~28.7k paths and labels: measured 2.8-10.5 MB after the warm-up, depending on what the process
    # did before (the same construction twice in one process: 2.8 then 10.5 MB). The pixels alone
    # would be 198 MB as RGB: the bound is ten times under that, twice the most measured.
    assert index_bytes < 20e6
    assert peak - index_bytes < 1e6  # 500 RGB faces would be 3.5 MB if kept
    assert current - index_bytes < 1e5


# ---------------------------------------------------------------- registry and archives

def _data_root(tmp_path: Path, fer2013_root: Path, ferplus_root: Path, synthetic_root: Path) -> Path:
    root = tmp_path / "data"
    for location, source in (("real/fer2013", fer2013_root), ("real/ferplus", ferplus_root),
                             ("synthetic/sd_faces", synthetic_root)):
        (root / location).parent.mkdir(parents=True, exist_ok=True)
        (root / location).symlink_to(source, target_is_directory=True)
    return root


def test_registry_opens_named_datasets(tmp_path: Path, fer2013_root: Path, ferplus_root: Path,
                                       synthetic_root: Path) -> None:
    root = _data_root(tmp_path, fer2013_root, ferplus_root, synthetic_root)
    assert available_datasets(root) == ["fer2013:train", "fer2013:test", "ferplus:train", "ferplus:valid",
                                        "ferplus:test", "sd_faces", "sd_faces:train", "sd_faces:test"]
    fer = open_dataset("fer2013:test", root)
    assert len(fer) == 7_178 and fer.pre_cropped and fer.name == "fer2013" and fer.domain == "real"
    assert open_dataset("ferplus:test", root).class_counts() == FERPLUS_TEST_MAJORITY
    faces = open_dataset("sd_faces", root)
    assert faces.domain == "synthetic" and not faces.pre_cropped
    assert faces.class_counts() == {"Anger": 75, "Happiness": 139, "Neutral": 120, "Sadness": 82, "Surprise": 60}
    assert len(open_dataset(str(fer2013_root) + ":test", root)) == 7_178
    assert len(open_dataset(str(synthetic_root), root)) == 476
    with pytest.raises(DataError, match=r"fer2013 needs a split: .*\['train', 'test'\]"):
        open_dataset("fer2013", root)
    with pytest.raises(DataError, match="give a split"):
        open_dataset(str(fer2013_root), root)


def test_registry_errors_say_where_to_put_data(tmp_path: Path) -> None:
    with pytest.raises(DataError) as missing:
        open_dataset("fer2013:test", tmp_path)
    message = str(missing.value)
    assert str(tmp_path / "real" / "fer2013" / "test") in message
    assert f"unzip fer2013.zip (Kaggle FER2013 image folders) into {tmp_path / 'real' / 'fer2013'}" in message
    assert "fer-core data install path/to/fer2013.zip" in message
    with pytest.raises(DataError, match=r"fer2013new\.csv"):
        (tmp_path / "real/ferplus/FER2013Test").mkdir(parents=True)
        open_dataset("ferplus:test", tmp_path)
    with pytest.raises(DataError, match="synthetic pipeline"):
        open_dataset("synthetic:test", tmp_path)
    with pytest.raises(DataError, match="known datasets|not one of"):
        open_dataset("celeba:test", tmp_path)
    assert available_datasets(tmp_path) == []


def test_install_archive(tmp_path: Path, synthetic_root: Path) -> None:
    archive = tmp_path / "synthetic_sd_faces.zip"
    chosen = {c.name: sorted(c.iterdir())[:3] for c in sorted(synthetic_root.iterdir())}
    with zipfile.ZipFile(archive, "w") as zf:
        for class_name, files in chosen.items():
            for path in files:
                zf.write(path, f"synthetic_sd_faces/{class_name}/{path.name}")
    root = tmp_path / "data"
    target = install_archive(archive, None, root)
    assert target == root / "synthetic" / "sd_faces"
    dataset = open_dataset("sd_faces", root)
    assert len(dataset) == 15 and set(dataset.class_counts().values()) == {3}
    assert np.array_equal(dataset.read(dataset[0]), load_rgb(chosen["angry"][0]))
    with pytest.raises(DataError, match="already exists"):
        install_archive(archive, None, root)

    evil = tmp_path / "evil" / "fer2013.zip"
    evil.parent.mkdir()
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("test/happy/a.jpg", chosen["happy"][0].read_bytes())
        zf.writestr("../evil", b"owned")
    with pytest.raises(DataError, match=r"'\.\./evil' would be written outside"):
        install_archive(evil, None, root)
    assert not any((root / "real" / name).exists() for name in ("evil", "fer2013")) and not (root / "evil").exists()
    with pytest.raises(DataError, match="cannot tell which dataset"):
        install_archive(archive.rename(tmp_path / "faces.zip"), None, root)


def test_install_archive_refuses_a_zip_bomb_and_an_archive_the_disk_cannot_hold(tmp_path: Path, synthetic_root: Path,
                                                                                 monkeypatch) -> None:
    face = next(next(synthetic_root.iterdir()).iterdir())
    bomb = tmp_path / "bomb" / "synthetic_sd_faces.zip"
    bomb.parent.mkdir()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(face, "synthetic_sd_faces/happy/real.jpg")
        zf.writestr("synthetic_sd_faces/happy/zeros.jpg", bytes(64 << 20))  # 64 MiB of zeros: ~1000x
    root = tmp_path / "data"
    with pytest.raises(DataError, match="zip bomb"):
        install_archive(bomb, None, root)
    assert not (root / "synthetic" / "sd_faces").exists()

    honest = tmp_path / "honest" / "synthetic_sd_faces.zip"
    honest.parent.mkdir()
    with zipfile.ZipFile(honest, "w") as zf:
        zf.write(face, "synthetic_sd_faces/happy/real.jpg")
    import shutil
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 << 30, 10 << 30, 512 << 20))
    with pytest.raises(DataError, match="GiB free"):
        install_archive(honest, None, root)
    assert not (root / "synthetic" / "sd_faces").exists()


def test_cli_installs_several_archives_at_once_and_lists_faces_per_class(tmp_path: Path, synthetic_root: Path,
                                                                         capsys) -> None:
    from fer_core.cli import main
    chosen = {c.name: sorted(c.iterdir())[:3] for c in sorted(synthetic_root.iterdir())}
    sd, fer = tmp_path / "synthetic_sd_faces.zip", tmp_path / "fer2013.zip"
    with zipfile.ZipFile(sd, "w") as zf:
        for class_name, files in chosen.items():
            for path in files:
                zf.write(path, f"synthetic_sd_faces/{class_name}/{path.name}")
    with zipfile.ZipFile(fer, "w") as zf:   # FER2013's layout: train/ and test/ class folders
        for split, count in (("train", 2), ("test", 1)):
            for class_name in ("happy", "sad"):
                for path in chosen[class_name][:count]:
                    zf.write(path, f"{split}/{class_name}/{path.name}")
    root = tmp_path / "data"
    settings = ["--set", f"data.root={root}"]
    assert main([*settings, "data", "install", str(tmp_path / "missing.zip"), str(sd)]) == 2
    assert not root.exists() or not any(root.rglob("*.jpg")), "a missing archive installs nothing"
    assert main([*settings, "data", "install", str(sd), str(fer)]) == 0
    capsys.readouterr()
    assert main([*settings, "data", "list"]) == 0
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "15 faces  Anger 3, Happiness 3, Neutral 3, Sadness 3, Surprise 3" in listed["sd_faces"]
    assert "4 faces" in listed["fer2013:train"] and "Happiness 2" in listed["fer2013:train"]
    assert "2 faces" in listed["fer2013:test"] and "Sadness 1" in listed["fer2013:test"]


def test_ferplus_and_fer2013_label_the_same_test_faces_differently(ferplus_root, fer2013_root):
    ferplus = FerPlusDataset(ferplus_root, "test")
    sample = ferplus.subset(stratified_split(ferplus.labels, {"use": 400 / len(ferplus), "rest": 1 - 400 / len(ferplus)},
                                             seed=0)["use"])
    test = FolderDataset(fer2013_root, "test")
    fer2013 = test.subset([i for i, face in enumerate(test) if "PrivateTest" in face.key])  # FER+ test's half
    index, rms = match_faces(sample, fer2013)
    assert (index >= 0).all() and rms.max() < 3.0  # every FER+ test face is one of FER2013's (a JPEG copy)
    assert len(set(index.tolist())) == len(index)
    agreement = label_agreement(sample, fer2013)
    # All 3,375 faces agree on 0.650 (fer-core data agree ferplus:test fer2013:test); 400 faces:
    # binomial standard error 0.024, so within 0.06 of it.
    assert agreement.matched == 400 and abs(agreement.agreement - 0.650) < 0.06
    assert agreement.per_class["faces"].sum() == 400
    fear = agreement.per_class.set_index("emotion").loc["Fear"]
    assert fear["agreement"] < 0.4 and fear["other"] == "Neutral"  # FER+'s annotators call FER2013 fear neutral
    other_faces = FolderDataset(fer2013_root, "train").subset(range(50))
    assert (match_faces(other_faces, sample)[0] == -1).all()
    with pytest.raises(DataError, match="not two labellings of the same faces"):
        label_agreement(other_faces, sample)
