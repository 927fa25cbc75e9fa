"""The training engine on real faces: SAM, exact resume after kill -9, atomic checkpoints,
selection on validation, staged recipes, losses, bad input, and the real + synthetic
experiments (mixes, the synthetic-fraction sweep, cross-validation) with their CLI.

Everything runs the tiny architecture at 48 px on a few hundred real faces.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fer_core.cli import main
from fer_core.data import FaceDataset, FerPlusDataset, FolderDataset, TorchFaceDataset, collate_skip_bad, stratified_split
from fer_core.errors import DataError, InvalidArgument
from fer_core.faces import FacePipeline
from fer_core.faces.detectors import create_detector
from fer_core.images import load_rgb
from fer_core.labels import EMOTIONS, FER2013_FOLDERS, NUM_CLASSES
from fer_core.models import TINY_ARCHITECTURE, FerModel, create_model, load_model
from fer_core.preprocess import Preprocessing
from fer_core.training import (GRADUAL_UNFREEZING_STAGES, SAM, FaceTransform, Stage, Trainer, TrainSettings,
                               set_trainable)
from fer_core.training.experiments import MixedDataset, mixed_training_set
from fer_core.training.trainer import WeightAverage, class_log_prior, class_weights, mixup, soft_cross_entropy
from tests.conftest import torch_threads

SETTINGS = TrainSettings(architecture=TINY_ARCHITECTURE, input_size=48, stages=(Stage(3, 3e-3, "all"),),
                         batch_size=32, max_steps_per_epoch=5, sam_rho=0.05, seed=0)


def stratified_pick(dataset: FaceDataset, count: int, seed: int = 0) -> FaceDataset:
    """About ``count`` faces of ``dataset`` with its class shares."""
    share = count / len(dataset)
    return dataset.subset(stratified_split(dataset.labels, {"pick": share, "rest": 1 - share}, seed)["pick"])


def ferplus_faces(ferplus_root: Path) -> tuple[FaceDataset, FaceDataset]:
    """320 FER+ training faces with vote distributions and 128 validation faces (majority labels)."""
    train = stratified_pick(FerPlusDataset(ferplus_root, "train", label_mode="soft"), 320)
    return train, stratified_pick(FerPlusDataset(ferplus_root, "valid"), 128)


@pytest.fixture(scope="module")
def ferplus(ferplus_root) -> tuple[FaceDataset, FaceDataset]:
    return ferplus_faces(ferplus_root)


@pytest.fixture(scope="module")
def real_batch(ferplus) -> tuple[torch.Tensor, torch.Tensor]:
    """64 real FER+ faces at 48 px and their labels."""
    wrapped = TorchFaceDataset(ferplus[0], FaceTransform(Preprocessing(48), pre_cropped=True))
    batch = collate_skip_bad([wrapped[i] for i in range(64)])
    return batch["image"], batch["label"]


def seeded_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(TINY_ARCHITECTURE, NUM_CLASSES, drop_rate=0.2)


def clone_parameters(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def same_parameters(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- SAM ----------------------------------------------------------------------------------

def test_sam_with_rho_zero_is_adamw_step_for_step(real_batch):
    images, labels = real_batch
    plain, sharp = seeded_model(), seeded_model()
    plain.eval()  # the same function on both passes: no dropout, fixed BN statistics
    sharp.eval()
    adamw = torch.optim.AdamW(plain.parameters(), lr=1e-3, weight_decay=0.05)
    sam = SAM(sharp.parameters(), torch.optim.AdamW, rho=0.0, lr=1e-3, weight_decay=0.05)

    def closure() -> torch.Tensor:
        loss = F.cross_entropy(sharp(images), labels)
        loss.backward()
        return loss

    start = clone_parameters(plain)
    for _ in range(4):
        adamw.zero_grad()
        F.cross_entropy(plain(images), labels).backward()
        adamw.step()
        sam.zero_grad()
        closure()
        sam.step(closure)
        assert same_parameters(clone_parameters(plain), clone_parameters(sharp))
    assert not same_parameters(start, clone_parameters(plain))


def test_sam_undoes_its_perturbation_bit_for_bit(real_batch):
    images, labels = real_batch
    model = seeded_model()
    sam = SAM(model.parameters(), torch.optim.AdamW, rho=0.05, lr=1e-3, weight_decay=0.05)
    original = clone_parameters(model)
    F.cross_entropy(model(images), labels).backward()
    sam.first_step()
    assert not same_parameters(original, clone_parameters(model))  # it did move to w + e(w)
    sam.zero_grad()
    F.cross_entropy(model(images), labels).backward()
    sharp_grads = {name: p.grad.clone() for name, p in model.named_parameters()}

    # The base step after restoring equals a plain AdamW step from the original weights with those gradients.
    twin = seeded_model()
    assert same_parameters(original, clone_parameters(twin))
    for name, p in twin.named_parameters():
        p.grad = sharp_grads[name].clone()
    torch.optim.AdamW(twin.parameters(), lr=1e-3, weight_decay=0.05).step()
    sam.second_step()
    assert same_parameters(clone_parameters(twin), clone_parameters(model))

    # Without the base step, second_step leaves exactly the original weights.
    restored = seeded_model()
    sam = SAM(restored.parameters(), torch.optim.AdamW, rho=0.05, lr=1e-3)
    F.cross_entropy(restored(images), labels).backward()
    sam.first_step()
    sam.base_optimizer.step = lambda: None
    sam.second_step()
    assert same_parameters(original, clone_parameters(restored))


def test_sam_trains_on_real_faces(real_batch):
    images, labels = real_batch
    model = seeded_model()
    sam = SAM(model.parameters(), torch.optim.AdamW, rho=0.05, lr=3e-3, weight_decay=0.05)
    losses = []
    for _ in range(15):
        sam.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        losses.append(loss.item())
        sam.step(lambda: F.cross_entropy(model(images), labels).backward())
    assert losses[0] == pytest.approx(math.log(8), abs=1e-3)  # the zero head starts at chance
    assert losses[-1] < 0.5 * losses[0]


# -- resume and checkpoints ---------------------------------------------------------------

@pytest.fixture(scope="module")
def reference_run(ferplus, tmp_path_factory) -> Path:
    """Three uninterrupted epochs (augmentation and dropout on, soft targets)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    with torch_threads(1):
        Trainer(run_dir, SETTINGS, *ferplus).fit(progress=False)
    return run_dir


def test_failed_checkpoint_write_keeps_the_previous_one(ferplus, tmp_path, monkeypatch):
    settings = dataclasses.replace(SETTINGS, stages=(Stage(2, 3e-3, "all"),))
    run_dir = tmp_path / "run"
    real_save = torch.save
    calls = []

    def save_then_fail_midway(state, path):
        calls.append(path)
        if len(calls) == 1:
            return real_save(state, path)
        Path(path).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", save_then_fail_midway)
    with pytest.raises(OSError, match="disk full"):
        Trainer(run_dir, settings, *ferplus).fit(progress=False)
    monkeypatch.setattr(torch, "save", real_save)
    kept = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert len(kept["history"]) == 1
    assert [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")] == []
    assert len(Trainer(run_dir, settings, *ferplus).fit(progress=False)["history"]) == 2


def test_best_epoch_is_chosen_on_validation(reference_run, ferplus):
    run = json.loads((reference_run / "run.json").read_text())
    assert set(run["data"]) == {"train", "val"}  # no test set reaches the trainer
    assert run["data"]["val"]["size"] == len(ferplus[1])
    history = json.loads((reference_run / "history.json").read_text())
    accuracies = [h["val_accuracy"] for h in history["history"]]
    best = json.loads((reference_run / "best.json").read_text())["provenance"]["selected_epoch"]
    assert best["epoch"] == int(np.argmax(accuracies)) + 1 == history["best"]["epoch"]
    # The saved best model really scores the recorded validation accuracy.
    trainer = Trainer(reference_run.parent / "check", SETTINGS, *ferplus)
    trainer.module = load_model(reference_run / "best.safetensors").module
    assert trainer.validate()["val_accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-12)


# -- staged recipes -----------------------------------------------------------------------

def test_hsemotion_stages_train_the_head_then_everything(ferplus, tmp_path, monkeypatch):
    settings = dataclasses.replace(SETTINGS, stages=(Stage(1, 1e-3, "head"), Stage(1, 1e-3, "all")),
                                   max_steps_per_epoch=3)
    trainer = Trainer(tmp_path / "run", settings, *ferplus)
    snapshots = [clone_parameters(trainer.module)]
    validate = Trainer.validate

    def snapshot_then_validate(self: Trainer) -> dict[str, float]:  # validation closes every epoch
        snapshots.append(clone_parameters(self.module))
        return validate(self)

    monkeypatch.setattr(Trainer, "validate", snapshot_then_validate)
    trainer.fit(progress=False)
    start, after_head, after_all = snapshots
    head = {f"classifier.{n}" for n, _ in trainer.module.get_classifier().named_parameters()}
    for name in start:
        if name in head:
            assert not torch.equal(start[name], after_head[name]), name
        else:
            assert torch.equal(start[name], after_head[name]), f"{name} changed in the head-only stage"
        assert not torch.equal(after_head[name], after_all[name]), f"{name} did not train in the 'all' stage"


def test_gradual_unfreezing_opens_block_by_block():
    module = create_model(TINY_ARCHITECTURE)
    blocks = list(module.blocks)
    trainable_counts = []
    for stage in GRADUAL_UNFREEZING_STAGES:
        set_trainable(module, stage.trainable)
        open_blocks = [all(p.requires_grad for p in b.parameters()) for b in blocks]
        closed_blocks = [not any(p.requires_grad for p in b.parameters()) for b in blocks]
        assert all(p.requires_grad for p in module.get_classifier().parameters())
        top = {"head": 0, "all": len(blocks)}.get(stage.trainable)
        top = int(stage.trainable.partition(":")[2]) if top is None else top
        assert open_blocks == [i >= len(blocks) - top for i in range(len(blocks))], stage
        assert closed_blocks == [not o for o in open_blocks]
        assert all(p.requires_grad == (stage.trainable == "all") for p in module.conv_stem.parameters())
        trainable_counts.append(sum(p.numel() for p in module.parameters() if p.requires_grad))
    assert trainable_counts == sorted(trainable_counts) and len(set(trainable_counts)) == len(trainable_counts)
    assert trainable_counts[-1] == sum(p.numel() for p in module.parameters())


# -- losses -------------------------------------------------------------------------------

def test_soft_cross_entropy_matches_a_hand_computed_value():
    logits = torch.tensor([[1.0, 2.0, 0.5, 0.0, 0.0, 3.0, 0.0, 0.0]])
    allowed = torch.zeros(8)
    allowed[[0, 1, 5]] = 1.0
    target = torch.zeros(1, 8)
    target[0, 1] = 1.0
    log_z = math.log(math.exp(1.0) + math.exp(2.0) + math.exp(3.0))  # only the allowed classes compete
    log_p = {0: 1.0 - log_z, 1: 2.0 - log_z, 5: 3.0 - log_z}
    assert soft_cross_entropy(logits, target, 0.0, None, allowed).item() == pytest.approx(-log_p[1], rel=1e-6)
    smoothed = -(0.9 + 0.1 / 3) * log_p[1] - 0.1 / 3 * (log_p[0] + log_p[5])
    assert soft_cross_entropy(logits, target, 0.1, None, allowed).item() == pytest.approx(smoothed, rel=1e-6)
    weights = torch.arange(1.0, 9.0)
    weighted = smoothed * ((0.9 + 0.1 / 3) * 2.0 + 0.1 / 3 * (1.0 + 6.0))
    assert soft_cross_entropy(logits, target, 0.1, weights, allowed).item() == pytest.approx(weighted, rel=1e-6)
    votes = torch.tensor([[0.0, 0.7, 0.0, 0.0, 0.0, 0.3, 0.0, 0.0]])  # a FER+-style vote distribution
    assert soft_cross_entropy(logits, votes, 0.0, None, allowed).item() == pytest.approx(
        -(0.7 * log_p[1] + 0.3 * log_p[5]), rel=1e-6)
    everything = torch.ones(8)  # one-hot, no smoothing, all classes: the usual cross-entropy
    assert soft_cross_entropy(logits, target, 0.0, None, everything).item() == pytest.approx(
        F.cross_entropy(logits, torch.tensor([1])).item(), rel=1e-6)


def test_mixup_blends_each_face_with_one_other_by_one_weight():
    # Face i is the constant image i with the one-hot target i: a mixed face's pixel value must be
    # the mean class of its mixed target, and every face must take the same weight.
    images = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 4, 4).contiguous()
    targets = torch.eye(8)
    torch.manual_seed(3)
    mixed, mixed_targets = mixup(images, targets, 0.4)
    assert torch.allclose(mixed_targets.sum(1), torch.ones(8))
    assert torch.allclose(mixed.mean((1, 2, 3)), mixed_targets @ torch.arange(8.0), atol=1e-5)
    own = mixed_targets.diagonal()
    lam = own[own < 1].max()  # a face mixed with itself keeps weight 1
    assert 0 < lam < 1 and torch.allclose(own[own < 1], lam.expand(int((own < 1).sum())))
    partners = (mixed_targets - torch.diag(own)).argmax(1)[own < 1]
    assert len(set(partners.tolist())) == len(partners)  # a shuffle: no face lends itself twice
    torch.manual_seed(3)
    again = mixup(images, targets, 0.4)
    assert torch.equal(again[0], mixed) and torch.equal(again[1], mixed_targets)  # seeded by the trainer


def test_weight_average_follows_the_weights_with_its_decay_and_copies_buffers():
    module = torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        module.weight.fill_(0.0)
    average = WeightAverage(module, decay=0.9)
    with torch.no_grad():
        module.weight.fill_(1.0)
        module.running_mean.fill_(5.0)
    average.update(module)  # first update: decay min(0.9, 2/11)
    assert torch.allclose(average.module.weight, torch.full((2,), 1 - 2 / 11))
    assert torch.equal(average.module.running_mean, module.running_mean)
    for _ in range(200):
        average.update(module)
    assert torch.allclose(average.module.weight, torch.ones(2), atol=1e-6)  # 0.9 ** 200 of the start is left
    assert not average.module.weight.requires_grad


def test_an_interrupted_run_with_mixup_and_a_weight_average_resumes_exactly(ferplus, tmp_path, monkeypatch):
    settings = dataclasses.replace(SETTINGS, stages=(Stage(2, 3e-3, "all"),), max_steps_per_epoch=3, sam_rho=0.0,
                                   mixup_alpha=0.4, ema_decay=0.9, grayscale=True)
    with torch_threads(1):
        reference = Trainer(tmp_path / "reference", settings, *ferplus).fit(progress=False)
        validate = Trainer.validate

        def stop_in_the_second_epoch(self: Trainer) -> dict[str, float]:
            if (self.run_dir / "checkpoint.pt").is_file():
                raise KeyboardInterrupt
            return validate(self)

        monkeypatch.setattr(Trainer, "validate", stop_in_the_second_epoch)
        with pytest.raises(KeyboardInterrupt):
            Trainer(tmp_path / "run", settings, *ferplus).fit(progress=False)
        # After epoch 1, what was validated and saved is the average, not the last weights; it reads grey.
        first = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
        best = load_model(tmp_path / "run" / "best.safetensors")
        average, last, best_state = first["average"]["module"], first["model"], best.module.state_dict()
        assert best.grayscale and first["average"]["updates"] == 3
        assert all(torch.equal(best_state[k], average[k].float()) for k in average)
        assert not all(torch.equal(average[k], last[k]) for k in last if k.endswith("weight"))
        monkeypatch.setattr(Trainer, "validate", validate)
        resumed = Trainer(tmp_path / "run", settings, *ferplus).fit(progress=False)
    assert resumed["history"] == reference["history"]
    saved = [torch.load(d / "checkpoint.pt", weights_only=True) for d in (tmp_path / "reference", tmp_path / "run")]
    for key in ("model", "average"):
        state = saved[0][key]["module"] if key == "average" else saved[0][key]
        other = saved[1][key]["module"] if key == "average" else saved[1][key]
        assert all(torch.equal(state[k], other[k]) for k in state)


def test_class_weights_favour_rare_ferplus_classes(ferplus_root):
    labels = FerPlusDataset(ferplus_root, "train").labels
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    weights = class_weights(labels).numpy()
    assert weights.mean() == pytest.approx(1.0, rel=1e-6)
    assert np.allclose(weights * counts, (weights * counts)[0], rtol=1e-5)  # exactly inverse frequency
    order = np.argsort(counts)
    assert np.all(np.diff(weights[order]) < 0)  # rarer -> heavier
    assert weights[EMOTIONS.index("Contempt")] > 20 * weights[EMOTIONS.index("Neutral")]


def test_class_log_prior_is_the_training_sets_class_frequencies(ferplus_root):
    labels = FerPlusDataset(ferplus_root, "train").labels
    allowed = torch.ones(NUM_CLASSES)
    prior = class_log_prior(labels, allowed).exp().numpy()
    counts = np.bincount(labels, minlength=NUM_CLASSES) + 1.0  # one pseudo-count per allowed class
    assert prior.sum() == pytest.approx(1.0, rel=1e-6)
    assert np.allclose(prior, counts / counts.sum(), rtol=1e-5)
    only_two = torch.zeros(NUM_CLASSES)
    only_two[[EMOTIONS.index("Happiness"), EMOTIONS.index("Neutral")]] = 1.0
    restricted = class_log_prior(labels, only_two).numpy()
    assert np.all(restricted[only_two.numpy() == 0] == 0.0)  # classes not trained on get no shift


def _majority_share(run_dir: Path, faces: FaceDataset) -> float:
    """Share of ``faces`` that the run's best model calls Neutral or Happiness (FER+'s two
    largest classes, 62% of its training faces)."""
    model = load_model(run_dir / "best.safetensors")
    model.module.eval()
    wrapped = TorchFaceDataset(faces, FaceTransform(model.preprocessing, pre_cropped=True))
    batch = collate_skip_bad([wrapped[i] for i in range(len(wrapped))])
    with torch.inference_mode():
        predicted = model.module(batch["image"]).argmax(1).numpy()
    return float(np.isin(predicted, [EMOTIONS.index("Neutral"), EMOTIONS.index("Happiness")]).mean())


def test_logit_adjustment_keeps_a_new_model_off_the_majority_classes(ferplus, tmp_path):
    """From the same seed and faces, a short run learns FER+'s class prior into its bias and calls
    nearly every face Neutral or Happiness; trained on logits + log(prior) it cannot: the prior is
    already there, so the plain logits stay near balanced."""
    train, val = ferplus
    shares = {}
    for tau in (0.0, 1.0):
        settings = dataclasses.replace(SETTINGS, sam_rho=0.0, augment=None, logit_adjustment=tau,
                                       stages=(Stage(2, 3e-3, "all"),), max_steps_per_epoch=8)
        Trainer(tmp_path / f"tau{tau}", settings, train, val).fit(progress=False)
        shares[tau] = _majority_share(tmp_path / f"tau{tau}", val)
    # Measured: 1.00 without adjustment, 0.00 with it (16 steps; 128 validation faces, 62% of them in
    # those two classes): the effect is all or nothing this early, so the bounds leave wide room.
    assert shares[0.0] > 0.8 and shares[1.0] < 0.5, shares


# -- bad input ----------------------------------------------------------------------------

def test_bad_training_input_gets_clear_errors(ferplus, fer2013_root, tmp_path):
    train, val = ferplus
    with pytest.raises(InvalidArgument, match=r"Stage\(\) argument 'epochs': expected an integer >= 1, got 0"):
        TrainSettings(stages=(Stage(0, 1e-3),))
    with pytest.raises(InvalidArgument, match=r"Stage\(\) argument 'lr': expected a number > 0, got -0.1"):
        Stage(1, -0.1)
    with pytest.raises(InvalidArgument, match="one or more Stage"):
        TrainSettings(stages=())
    with pytest.raises(InvalidArgument, match="'head', 'all' or 'top:N'"):
        TrainSettings(stages=(Stage(1, 1e-3, "top:two"),))
    faces = tmp_path / "faces"
    for emotion, count in (("happy", 3), ("sad", 0)):
        (faces / emotion).mkdir(parents=True)
        for source in sorted((fer2013_root / "test" / emotion).iterdir())[:count]:
            (faces / emotion / source.name).write_bytes(source.read_bytes())
    with pytest.raises(DataError, match="has no images"):
        FolderDataset(faces)
    happy_only = train.subset(np.flatnonzero(train.labels == EMOTIONS.index("Happiness")))
    with pytest.raises(DataError, match="1 class"):
        Trainer(tmp_path / "one", SETTINGS, happy_only, val)
    with pytest.raises(DataError, match="needs synthetic faces"):
        mixed_training_set(train, None, 0.25)
    other = FerModel.from_architecture("tf_efficientnet_b0_ns")
    with pytest.raises(InvalidArgument, match="tf_efficientnet_b0_ns.*mobilenetv3_small_050"):
        Trainer(tmp_path / "init", SETTINGS, train, val, init=other)
    run_dir = tmp_path / "short"
    one_epoch = dataclasses.replace(SETTINGS, stages=(Stage(1, 1e-3),), max_steps_per_epoch=1)
    Trainer(run_dir, one_epoch, train, val).fit(progress=False)
    run_json = (run_dir / "run.json").read_text()
    other_architecture = dataclasses.replace(one_epoch, architecture="tf_efficientnet_b0_ns")
    with pytest.raises(InvalidArgument, match="other training settings"):
        Trainer(run_dir, other_architecture, train, val).fit(progress=False)
    assert (run_dir / "run.json").read_text() == run_json  # the refused run left the old one as it was


def test_cli_refuses_resume_without_checkpoint_and_overwriting_a_run(project, tmp_path, capsys):
    config_file = str(project / "configs" / "config.yaml")
    base = ["--config", config_file, "train", "--train", "ferplus:train", "--val", "ferplus:valid"]
    assert main(base + ["--name", "never-started", "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    existing = project / "runs" / "already-there"
    existing.mkdir(parents=True)
    torch.save({"history": []}, existing / "checkpoint.pt")
    assert main(base + ["--name", "already-there"]) == 2
    assert "pass --resume" in capsys.readouterr().err


# -- real + synthetic experiments ------------------------------------------------------------

@pytest.fixture(scope="module")
def sd_crops(synthetic_root, face_model_path, tmp_path_factory) -> Path:
    """SD faces cropped once by the face pipeline: ``<root>/{train,test}/<class>/`` 64x64 PNGs
    (24 training and 8 test faces per class)."""
    root = tmp_path_factory.mktemp("sd_crops")
    pipeline = FacePipeline(create_detector("mediapipe", model_path=face_model_path), crop_size=64)
    for class_dir in sorted(p for p in synthetic_root.iterdir() if p.is_dir()):
        files = sorted(class_dir.glob("*.jpg"))
        for split, chosen in (("train", files[:24]), ("test", files[24:32])):
            (root / split / class_dir.name).mkdir(parents=True)
            for file in chosen:
                face = pipeline.largest(load_rgb(file))
                assert face is not None, f"no face found in {file}"
                Image.fromarray(face.image).save(root / split / class_dir.name / f"{file.stem}.png")
    return root


@pytest.fixture(scope="module")
def toy_project(project, sd_crops, fer2013_root, tmp_path_factory) -> Path:
    """A project with small real (FER2013) and synthetic (SD crops) train/test sets under the
    registry names, and a separate real validation folder."""
    root = tmp_path_factory.mktemp("toy_project")
    (root / "configs").mkdir()
    (root / "configs" / "config.yaml").write_text((project / "configs" / "config.yaml").read_text())
    (root / "data" / "synthetic").mkdir(parents=True)
    (root / "data" / "synthetic" / "processed").symlink_to(sd_crops, target_is_directory=True)
    for emotion in FER2013_FOLDERS.source_names:
        private = sorted((fer2013_root / "test" / emotion).glob("PrivateTest_*"))
        public = sorted((fer2013_root / "test" / emotion).glob("PublicTest_*"))
        for folder, files in (("data/real/fer2013/train", sorted((fer2013_root / "train" / emotion).iterdir())[:20]),
                              ("data/real/fer2013/test", private[:8]), ("val", public[:8])):
            (root / folder / emotion).mkdir(parents=True)
            for file in files:
                (root / folder / emotion / file.name).symlink_to(file)
    return root


def test_mixed_training_set_keeps_shares_domains_and_pixels(toy_project):
    data_root = toy_project / "data"
    real = FolderDataset(data_root / "real" / "fer2013", "train", name="fer2013", pre_cropped=True,
                         label_map=FER2013_FOLDERS)
    synthetic = FolderDataset(data_root / "synthetic" / "processed", "train", name="sd", domain="synthetic",
                              pre_cropped=True)
    mix = mixed_training_set(real, synthetic, 0.5, size=80, seed=3)
    assert isinstance(mix, MixedDataset) and len(mix) == 80 and mix.domain_counts() == {"real": 40, "synthetic": 40}
    assert mix.emotions == EMOTIONS[:1] + EMOTIONS[2:]  # the union: FER2013's 7 classes (SD adds none)
    assert [s.key for s in mix] == [s.key for s in mixed_training_set(real, synthetic, 0.5, 80, seed=3)]
    assert [s.key for s in mix] != [s.key for s in mixed_training_set(real, synthetic, 0.5, 80, seed=4)]
    sd_classes = [EMOTIONS.index(e) for e in synthetic.emotions]
    synthetic_counts = np.bincount(mix.labels[mix.domains == "synthetic"], minlength=NUM_CLASSES)
    assert list(synthetic_counts[sd_classes]) == [8] * 5 and synthetic_counts.sum() == 40  # stratified
    by_key = {s.key: s for s in synthetic}
    sample = mix[len(mix) - 1]
    original = by_key[sample.key.partition(":")[2]]
    assert np.array_equal(mix.read(sample), synthetic.read(original))
    assert sample.label == original.label
    assert mixed_training_set(real, synthetic, 0.0).domain_counts() == {"real": len(real)}
    assert mixed_training_set(real, synthetic, 1.0).domain_counts() == {"synthetic": len(synthetic)}
    assert len(mixed_training_set(real, synthetic, 0.5)) == 2 * len(synthetic)  # the largest 50/50 mix
    with pytest.raises(DataError, match="at most"):
        mixed_training_set(real, synthetic, 0.5, size=10_000)
    with pytest.raises(InvalidArgument, match=r"check_fraction\(\) argument 'synthetic_fraction': .*\[0, 1\], got 1.5"):
        mixed_training_set(real, synthetic, 1.5)


TOY_TRAINING = ["--architecture", TINY_ARCHITECTURE, "--input-size", "48", "--epochs", "1", "--batch-size", "16",
                "--max-steps", "3", "--bootstrap", "200"]


def test_sweep_writes_one_cross_domain_table(toy_project, capsys):
    config_file = str(toy_project / "configs" / "config.yaml")
    val = str(toy_project / "val")
    code = main(["--config", config_file, "sweep", "--real", "fer2013:train", "--synthetic", "synthetic:train",
                 "--val", val, "--test", "fer2013:test", "--test", "synthetic:test", "--fractions", "0,0.5",
                 "--out", "runs/sweep", *TOY_TRAINING])
    assert code == 0, capsys.readouterr().err
    out = toy_project / "runs" / "sweep"
    table = pd.read_csv(out / "summary.csv")
    assert sorted(zip(table["fraction"], table["test_set"])) == [
        (0.0, "fer2013:test"), (0.0, "synthetic:test"), (0.5, "fer2013:test"), (0.5, "synthetic:test")]
    pd.testing.assert_frame_equal(pd.DataFrame(json.loads((out / "summary.json").read_text())["rows"]), table)
    size = 140  # the most both fractions allow: all 140 real faces at 0, and 70 of the 120 SD crops at 0.5
    assert set(table["train_size"]) == {size}
    assert table.set_index("fraction")["n_synthetic"].to_dict() == {0.0: 0, 0.5: size // 2}
    assert set(table[table["test_set"] == "synthetic:test"]["n"]) == {40}
    assert set(table[table["test_set"] == "fer2013:test"]["n"]) == {56}
    assert (table["accuracy_ci_low"] <= table["accuracy"]).all() and (table["accuracy"] <= table["accuracy_ci_high"]).all()
    for _, row in table.iterrows():  # each row is the evaluation run it names
        metrics = json.loads((out / row["evaluation"] / "metrics.json").read_text())
        assert metrics["accuracy"] == pytest.approx(row["accuracy"]) and metrics["macro_f1"] == pytest.approx(row["macro_f1"])
        run = json.loads((out / row["run"] / "run.json").read_text())
        assert run["synthetic_fraction"] == row["fraction"]
        assert run["data"]["val"]["name"] == "val"  # selected on the validation folder, not a test set
    summary = capsys.readouterr().out
    assert "synthetic:test" in summary and "summary.csv" in summary


def test_crossval_reports_every_fold_and_the_spread(toy_project, capsys):
    config_file = str(toy_project / "configs" / "config.yaml")
    code = main(["--config", config_file, "crossval", "--dataset", "synthetic:train", "--k", "2",
                 "--out", "runs/cv", *TOY_TRAINING])
    assert code == 0, capsys.readouterr().err
    out = toy_project / "runs" / "cv"
    summary = json.loads((out / "crossval.json").read_text())
    folds = pd.read_csv(out / "folds.csv")
    assert list(folds["fold"]) == [0, 1] and folds["n"].sum() == 120  # every SD crop held out once
    assert summary["accuracy"]["mean"] == pytest.approx(folds["accuracy"].mean())
    assert summary["macro_f1"]["std"] == pytest.approx(folds["macro_f1"].std(ddof=1))
    assert (folds["train_size"] + folds["val_size"] + folds["n"] == 120).all()
    assert "+-" in capsys.readouterr().out
    assert main(["--config", config_file, "crossval", "--dataset", "synthetic:train", "--k", "50",
                 "--out", "runs/cv50", *TOY_TRAINING]) == 2
    assert "rarest class has only" in capsys.readouterr().err
