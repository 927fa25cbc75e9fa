"""Model factory, every weights format (written exactly as its project writes it) and the recognizer.

Weights are random (no hub downloads). Round-trip tests also randomise batch-norm statistics
and the classifier, so a loader that dropped buffers or mixed up the head would be caught;
tests that need features which differ by face keep timm's initialisation (random batch-norm
statistics wash the input out) and fit the head to the faces. The HSEmotion formats use the
real B0 network at a small input size.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from fer_core.errors import DataError, InvalidArgument, ModelLoadError, UntrustedPickleError
from fer_core.images import load_rgb
from fer_core.labels import CLASS_FOLDERS, EMOTIONS
from fer_core.models import (ARCHITECTURES, HSEMOTION_CLASS_ORDERS, TINY_ARCHITECTURE, EmotionRecognizer, FerModel,
                             create_model, load_model, save_model)
from fer_core.models.averaging import average_models
from tests.conftest import torch_threads

B0, B2 = "tf_efficientnet_b0_ns", "tf_efficientnet_b2_ns"
SMALL = 64  # input side for the EfficientNets on CPU
#: float16 checkpoints: logits of the float32 weights and of their float16 copy differ by at
#: most this much (measured 3e-3 to 6e-3 over 6 seeds, on logits spanning about -2 to 6 with
#: top-2 margins above 4); the predicted class never changes.
FP16_LOGIT_TOLERANCE = 2e-2
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def randomize_(module: nn.Module, seed: int) -> None:
    """Give every batch norm random statistics and affine parameters, and the head random weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.normal_(1.0, 0.2, generator=g)
                m.bias.normal_(0.0, 0.2, generator=g)
        for m in module.get_classifier().modules():  # a Linear, or a Sequential holding one
            if isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.5, generator=g)
                m.bias.normal_(0.0, 0.5, generator=g)


def fit_head_(model: FerModel, faces: list[np.ndarray], labels: np.ndarray) -> None:
    """Ridge-regression fit of the classifier on the faces' features, so predictions vary by face."""
    with torch.no_grad():
        features = model.features(model.preprocessing.batch(faces)).double()
        mean = features.mean(0)
        centered = features - mean
        gram = centered @ centered.T
        targets = torch.eye(len(model.emotions), dtype=torch.float64)[torch.from_numpy(labels)]
        ridge = 0.1 * gram.trace() / len(faces) * torch.eye(len(faces), dtype=torch.float64)
        weight = 8.0 * (centered.T @ torch.linalg.solve(gram + ridge, targets - targets.mean(0))).T
        head = model.module.get_classifier()
        head.weight.copy_(weight.float())
        head.bias.copy_((-weight @ mean).float())


def logits_of(model: FerModel, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.logits(batch)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """These networks are small at 64 px: a second intra-op thread gains little, and on a busy
    2-core machine it makes each forward pass tens of times slower (threads spin-wait)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def faces(synthetic_root: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """Four Stable Diffusion faces from each of the 5 classes (96 px) and their canonical labels."""
    images, labels = [], []
    for folder in sorted(p for p in synthetic_root.iterdir() if p.is_dir()):
        for path in sorted(folder.glob("*.jpg"))[:4]:
            images.append(cv2.resize(load_rgb(path), (96, 96), interpolation=cv2.INTER_AREA))
            labels.append(CLASS_FOLDERS.index(folder.name))
    return images, np.array(labels)


# --- registry and factory ---------------------------------------------------------------------

@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_registered_architectures_build_with_their_declared_feature_dim(architecture: str) -> None:
    spec = ARCHITECTURES[architecture]
    model = FerModel.from_architecture(architecture)
    batch = torch.randn(2, 3, SMALL, SMALL)
    with torch.no_grad():
        assert model.features(batch).shape == (2, spec.feature_dim)
        assert torch.equal(model.logits(batch), torch.zeros(2, 8))
    assert model.input_size == spec.input_size and model.feature_dim == spec.feature_dim
    assert model.provenance == {"head_trained": False} and not model.module.training


def test_head_starts_at_chance_on_real_faces(faces) -> None:
    images, labels = faces
    model = FerModel(create_model(B0), B0, input_size=SMALL)
    loss = nn.functional.cross_entropy(logits_of(model, model.preprocessing.batch(images)), torch.from_numpy(labels))
    assert loss.item() == pytest.approx(math.log(8), abs=1e-6)


def test_create_model_passes_timm_arguments_and_rejects_unknown_names() -> None:
    assert create_model(TINY_ARCHITECTURE, num_classes=5, drop_rate=0.3).drop_rate == 0.3
    with pytest.raises(ModelLoadError, match=r"unknown architecture 'resnet9'.*tf_efficientnet_b0_ns"):
        create_model("resnet9")
    with pytest.raises(InvalidArgument, match=r"create_model\(\) argument 'num_classes': expected an integer >= 1"):
        create_model(TINY_ARCHITECTURE, num_classes=0)


def test_fingerprint_is_stable_and_follows_the_weights() -> None:
    module = create_model(TINY_ARCHITECTURE)
    first = FerModel(module, TINY_ARCHITECTURE).fingerprint
    assert FerModel(module, TINY_ARCHITECTURE).fingerprint == first and len(first) == 16
    with torch.no_grad():
        module.conv_stem.weight[0, 0, 0, 0] += 1e-3
    assert FerModel(module, TINY_ARCHITECTURE).fingerprint != first


def test_a_changed_copy_or_an_edited_model_never_keeps_a_stale_fingerprint() -> None:
    model = FerModel(create_model(TINY_ARCHITECTURE), TINY_ARCHITECTURE)
    original = model.fingerprint
    copied = copy.deepcopy(model)
    with torch.no_grad():
        copied.module.get_classifier().weight.add_(1.0)
    assert copied.fingerprint != original and model.fingerprint == original
    with torch.no_grad():
        model.module.get_classifier().bias.add_(1.0)
    model.forget_fingerprint()
    assert model.fingerprint not in (original, copied.fingerprint)


# --- our own checkpoints ----------------------------------------------------------------------

def test_fer_checkpoint_round_trip_keeps_logits_classes_and_provenance(tmp_path: Path, faces) -> None:
    images, _ = faces
    emotions = HSEMOTION_CLASS_ORDERS[7][::-1]  # a non-canonical order must survive
    model = FerModel.from_architecture(TINY_ARCHITECTURE, emotions)
    randomize_(model.module, seed=0)
    model.mean, model.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    model.provenance = {"head_trained": True, "data": "ferplus", "recipe": {"epochs": 3}, "metrics": {"acc": 0.5}}
    written = save_model(model, tmp_path / "tiny")
    assert written == tmp_path / "tiny.safetensors" and sorted(p.name for p in tmp_path.iterdir()) == [
        "tiny.json", "tiny.safetensors"]  # no temporary files left behind
    batch = model.preprocessing.batch(images)
    for path in (written, tmp_path / "tiny.json"):
        loaded = load_model(path)
        assert (logits_of(loaded, batch) - logits_of(model, batch)).abs().max().item() < 1e-4
        assert loaded.emotions == emotions and loaded.fingerprint == model.fingerprint
        assert (loaded.input_size, loaded.mean, loaded.std) == (64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        assert loaded.provenance["recipe"] == {"epochs": 3} and loaded.provenance["head_trained"] is True
        assert loaded.provenance["fer_core_version"] and loaded.provenance["created"]
    with pytest.raises(ModelLoadError, match=f"a '{TINY_ARCHITECTURE}' checkpoint, but architecture '{B0}'"):
        load_model(written, architecture=B0)
    assert loaded.grayscale is False and not loaded.preprocessing.grayscale
    model.grayscale = True  # a model trained on grey faces says so in its file
    loaded = load_model(save_model(model, tmp_path / "grey"))
    assert loaded.grayscale is True and loaded.preprocessing.grayscale
    meta = json.loads((tmp_path / "grey.json").read_text())
    (tmp_path / "grey.json").write_text(json.dumps({**meta, "grayscale": "yes"}))
    with pytest.raises(ModelLoadError, match="key 'grayscale' must be true or false"):
        load_model(tmp_path / "grey.safetensors")


def test_fp16_checkpoint_is_close_and_keeps_every_prediction_on_real_faces(tmp_path: Path, faces) -> None:
    images, labels = faces
    torch.manual_seed(0)
    model = FerModel.from_architecture(B0)  # timm's initialisation: features that differ by face
    model.input_size = SMALL
    fit_head_(model, images, labels)
    half = save_model(model, tmp_path / "b0_fp16", dtype=torch.float16)
    full = save_model(model, tmp_path / "b0_fp32")
    assert half.stat().st_size < 0.55 * full.stat().st_size
    loaded = load_model(half)
    loaded.input_size = SMALL
    assert next(loaded.module.parameters()).dtype == torch.float32
    batch = model.preprocessing.batch(images)
    before, after = logits_of(model, batch), logits_of(loaded, batch)
    assert (after - before).abs().max().item() < FP16_LOGIT_TOLERANCE
    assert torch.equal(after.argmax(1), before.argmax(1))
    assert len(set(before.argmax(1).tolist())) >= 3  # the comparison is between varied predictions


def test_fer_checkpoint_pair_must_match(tmp_path: Path) -> None:
    model = FerModel.from_architecture(TINY_ARCHITECTURE)
    save_model(model, tmp_path / "a.safetensors")
    (tmp_path / "a.safetensors").write_bytes((tmp_path / "a.safetensors").read_bytes()[:-4] + b"\0\0\0\1")
    with pytest.raises(ModelLoadError, match="sha256 differs"):
        load_model(tmp_path / "a.json")
    (tmp_path / "a.json").unlink()
    with pytest.raises(ModelLoadError, match=r"a.json is missing"):
        load_model(tmp_path / "a.safetensors")


def test_average_of_two_heads_fit_on_other_faces_gives_the_mean_logits_on_real_faces(tmp_path: Path, faces) -> None:
    """Two copies of one backbone whose heads were fit on different faces: the network is the same up
    to the last linear layer, so the average model's logits are exactly the mean of the two models'."""
    images, labels = faces
    torch.manual_seed(0)
    first = FerModel.from_architecture(B0)
    first.input_size = SMALL
    first.module.bn2.num_batches_tracked.fill_(7)
    second = copy.deepcopy(first)
    second.module.bn2.num_batches_tracked.fill_(9)
    fit_head_(first, images[0::2], labels[0::2])
    fit_head_(second, images[1::2], labels[1::2])
    averaged = average_models([first, second])
    batch = first.preprocessing.batch(images)
    expected = (logits_of(first, batch) + logits_of(second, batch)) / 2
    assert (logits_of(averaged, batch) - expected).abs().max().item() < 1e-4
    assert not torch.allclose(logits_of(first, batch), logits_of(second, batch), atol=0.1)  # the heads differ
    assert averaged.module.bn2.num_batches_tracked.item() == 7   # integer buffers: the first model's
    assert [source["fingerprint"] for source in averaged.provenance["averaged_from"]] == [first.fingerprint,
                                                                                          second.fingerprint]
    assert averaged.fingerprint not in (first.fingerprint, second.fingerprint)
    stem = save_model(averaged, tmp_path / "soup")
    assert load_model(stem).provenance["averaged_from"][1]["fingerprint"] == second.fingerprint


def test_average_refuses_models_that_do_not_share_inputs_or_classes() -> None:
    model = FerModel.from_architecture(TINY_ARCHITECTURE)
    with pytest.raises(InvalidArgument, match="expected at least 2 models, got 1"):
        average_models([model])
    other_size = copy.deepcopy(model)
    other_size.input_size = 96
    with pytest.raises(InvalidArgument, match="model 2 differs from model 1 in input_size: 96 vs 64"):
        average_models([model, other_size])
    grey = copy.deepcopy(model)
    grey.grayscale = True
    with pytest.raises(InvalidArgument, match="model 3 differs from model 1 in grayscale"):
        average_models([model, model, grey])
    seven = FerModel.from_architecture(TINY_ARCHITECTURE, EMOTIONS[:7])
    with pytest.raises(InvalidArgument, match="in emotions"):
        average_models([model, seven])


def test_fer_core_average_writes_the_mean_and_names_a_missing_file(tmp_path: Path, capsys) -> None:
    from fer_core.cli import main
    first, second = (FerModel.from_architecture(TINY_ARCHITECTURE) for _ in range(2))
    randomize_(second.module, seed=3)
    paths = [save_model(model, tmp_path / name) for model, name in ((first, "a"), (second, "b"))]
    assert main(["average", *map(str, paths), "--out", str(tmp_path / "soup"), "--fp16"]) == 0
    assert "the mean of 2 models" in capsys.readouterr().out
    soup = load_model(tmp_path / "soup.safetensors")
    expected = average_models([first, second]).module.state_dict()
    assert all(torch.allclose(value.float(), expected[key].float(), atol=1e-2, rtol=1e-3)   # float16 storage
               for key, value in soup.module.state_dict().items())
    assert [source["fingerprint"] for source in soup.provenance["averaged_from"]] == [first.fingerprint,
                                                                                      second.fingerprint]
    assert main(["average", str(paths[0]), str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "x")]) != 0
    assert "missing.safetensors" in capsys.readouterr().err and not (tmp_path / "x.safetensors").exists()


# --- HSEmotion files made with current timm ---------------------------------------------------

def test_vggface2_backbone_state_dict_gets_an_untrained_chance_head(tmp_path: Path) -> None:
    backbone = create_model(B0)
    randomize_(backbone, seed=2)
    backbone.classifier = nn.Identity()  # HSEmotion's state_vggface2_enet0_new.pt is saved like this
    backbone.eval()
    path = tmp_path / "state_vggface2_enet0_new.pt"
    torch.save(backbone.state_dict(), path)
    batch = torch.randn(3, 3, SMALL, SMALL)
    with torch.no_grad():
        expected = backbone(batch)
    model = load_model(path)
    with torch.no_grad():
        assert (model.features(batch) - expected).abs().max().item() < 1e-4
        assert torch.equal(model.logits(batch), torch.zeros(3, 8))
    assert model.architecture == B0 and model.provenance["head_trained"] is False
    assert model.provenance["format"] == "state-dict"
    assert load_model(path, num_classes=7).emotions == HSEMOTION_CLASS_ORDERS[7]


def test_state_dict_of_another_architecture_names_the_expected_one_and_the_keys(tmp_path: Path) -> None:
    b2 = create_model(B2)
    path = tmp_path / "b2.pt"
    torch.save(b2.state_dict(), path)
    with pytest.raises(ModelLoadError, match=rf"the expected architecture '{B0}': \d+ keys differ, e\.g\. "
                                             rf"\['blocks\.[.\w]+: file \(\d+.*vs expected .*they fit '{B2}'"):
        load_model(path, architecture=B0)
    assert load_model(path).architecture == B2


def test_pickled_sequential_head_with_seven_classes(tmp_path: Path) -> None:
    module = create_model(B0, num_classes=7)
    module.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 7))  # keys classifier.1.*
    randomize_(module, seed=3)
    module.eval()
    path = tmp_path / "enet_b0_7.pt"
    torch.save(module, path)
    batch = torch.randn(2, 3, SMALL, SMALL)
    with torch.no_grad():
        expected = module(batch)
    with pytest.raises(UntrustedPickleError, match="trust_pickle: true.*--trust-pickle"):
        load_model(path)
    with pytest.warns(UserWarning, match="runs code from the file"):
        model = load_model(path, trust_pickle=True)
    assert model.emotions == HSEMOTION_CLASS_ORDERS[7] and "Contempt" not in model.emotions
    assert (logits_of(model, batch) - expected).abs().max().item() < 1e-4


def test_pickle_of_a_same_shaped_but_different_network_is_refused(tmp_path: Path) -> None:
    import timm
    path = tmp_path / "efficientnet_b0.pt"
    torch.save(timm.create_model("efficientnet_b0", pretrained=False, num_classes=8), path)  # no TF padding
    refusal = r"fit 'tf_efficientnet_b0_ns' in shape, but \d+ layer settings differ \(e\.g\. conv_stem:padding"
    with pytest.warns(UserWarning), pytest.raises(ModelLoadError, match=refusal):
        load_model(path, trust_pickle=True)


@pytest.mark.parametrize(("content", "reason"), [
    (b"", "not a weights file in a known format; accepted formats: fer_core"),
    (np.random.default_rng(0).bytes(4096), "not a weights file in a known format"),
    (b"PK\x03\x04" + np.random.default_rng(1).bytes(300), "not a weights file in a known format"),
    (b'{"not": "ours"}', "a fer_core checkpoint is the pair weights.safetensors"),
], ids=["empty", "random-bytes", "zip-magic-then-garbage", "other-json"])
def test_files_that_are_not_weights_are_refused(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=reason):
        load_model(path)


def test_damaged_archive_and_missing_file(tmp_path: Path) -> None:
    intact, damaged = tmp_path / "intact.pt", tmp_path / "damaged.pt"
    torch.save(create_model(TINY_ARCHITECTURE).state_dict(), intact)
    with zipfile.ZipFile(intact) as source, zipfile.ZipFile(damaged, "w") as target:
        for item in source.infolist():  # the same archive with its first tensor's bytes cut short
            data = source.read(item)
            target.writestr(item, data[:4] if item.filename.endswith("/data/0") else data)
    with pytest.raises(ModelLoadError, match="damaged.pt: cannot read the state dict"):
        load_model(damaged)
    with pytest.raises(ModelLoadError, match=r"no weights file at .*nowhere.pt; accepted formats: fer_core"):
        load_model(tmp_path / "nowhere.pt")


# --- genuine files of timm 0.4.12, the version HSEmotion pickled its models with ---------------

OLD_TIMM_SCRIPT = textwrap.dedent('''
    import sys
    import torch, timm
    from torch import nn
    from retired_ext import Swish  # a class the loading process does not have
    assert timm.__version__ == "0.4.12", timm.__version__
    out = sys.argv[1]

    def randomize_(model, seed):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.normal_(0.0, 0.2, generator=g)
                    m.running_var.uniform_(0.5, 2.0, generator=g)
                    m.weight.normal_(1.0, 0.2, generator=g)
                    m.bias.normal_(0.0, 0.2, generator=g)
            for m in model.classifier.modules():
                if isinstance(m, nn.Linear):
                    m.weight.normal_(0.0, 0.5, generator=g)
                    m.bias.normal_(0.0, 0.5, generator=g)

    torch.manual_seed(0)
    expected = {"x": torch.randn(3, 3, 64, 64)}

    def make(name, seed, sequential=False, swish=False):
        torch.manual_seed(seed)
        model = timm.create_model("tf_efficientnet_b0_ns", pretrained=False, num_classes=8)
        if sequential:
            model.classifier = nn.Sequential(nn.Linear(1280, 8))
        if swish:
            model.act1, model.act2 = Swish(), Swish()
        randomize_(model, seed)
        model.eval()
        with torch.no_grad():
            expected[name] = model(expected["x"])
        return model

    torch.save(make("linear", 0), f"{out}/enet_b0_8_best_vgaf.pt")
    torch.save(make("sequential", 1, sequential=True), f"{out}/enet_b0_8_sequential.pt")
    torch.save(make("stand_in", 2, swish=True), f"{out}/enet_b0_8_swish.pt")
    backbone = make("vggface2", 3)
    backbone.classifier = nn.Identity()
    with torch.no_grad():
        expected["vggface2"] = backbone(expected["x"])
    torch.save(backbone.state_dict(), f"{out}/state_vggface2_enet0_new.pt")
    torch.save(expected, f"{out}/expected.pt")
''')
RETIRED_EXT = textwrap.dedent('''
    import torch

    class Swish(torch.nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(x)
''')
OLD_FILES = {
    "linear": "enet_b0_8_best_vgaf.pt", "sequential": "enet_b0_8_sequential.pt", "stand_in": "enet_b0_8_swish.pt",
}


def _skip_or_fail(reason: str) -> None:
    if IN_CI:
        pytest.fail(reason + " - required under CI=true")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def old_timm_files(tmp_path_factory) -> Path:
    """Files saved by genuine timm 0.4.12 (installed from PyPI into a temp folder) beside current torch."""
    root = tmp_path_factory.mktemp("timm0412")
    site, ext, out = root / "site", root / "ext", root / "out"
    for folder in (ext, out):
        folder.mkdir()
    (ext / "retired_ext.py").write_text(RETIRED_EXT)
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                          "timm==0.4.12"], capture_output=True, text=True, timeout=300)
    if pip.returncode != 0:
        _skip_or_fail(f"cannot install timm==0.4.12 from PyPI: {pip.stderr.strip()[-500:]}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ext)]), "OMP_NUM_THREADS": "1"}
    made = subprocess.run([sys.executable, "-c", OLD_TIMM_SCRIPT, str(out)], capture_output=True, text=True,
                          env=env, cwd=root, timeout=300)
    assert made.returncode == 0, f"timm 0.4.12 could not save its models:\n{made.stderr[-3000:]}"
    return out


def test_current_timm_cannot_unpickle_old_timm_models(old_timm_files: Path) -> None:
    with pytest.raises(ModuleNotFoundError, match="timm.models.layers.conv2d_same"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # timm's own "timm.models.layers is deprecated"
        torch.load(old_timm_files / OLD_FILES["linear"], weights_only=False)
    with pytest.raises(UntrustedPickleError, match="timm.models"):
        load_model(old_timm_files / OLD_FILES["linear"])


@pytest.mark.parametrize("variant", sorted(OLD_FILES))
def test_old_timm_pickles_load_with_identical_logits(old_timm_files: Path, variant: str) -> None:
    expected = torch.load(old_timm_files / "expected.pt", weights_only=True)
    with pytest.warns(UserWarning, match="trust_pickle=True"):
        model = load_model(old_timm_files / OLD_FILES[variant], trust_pickle=True)
    assert (logits_of(model, expected["x"]) - expected[variant]).abs().max().item() < 1e-4
    assert model.architecture == B0 and model.emotions == EMOTIONS and model.provenance["head_trained"] is True
    moved = model.provenance["moved_classes"]
    assert moved["timm.models.layers.conv2d_same.Conv2dSame"] == "timm.layers.conv2d_same.Conv2dSame"
    assert model.provenance["stand_ins"] == (["retired_ext.Swish"] if variant == "stand_in" else [])


def test_old_timm_vggface2_state_dict_loads_as_backbone(old_timm_files: Path) -> None:
    expected = torch.load(old_timm_files / "expected.pt", weights_only=True)
    model = load_model(old_timm_files / "state_vggface2_enet0_new.pt")
    with torch.no_grad():
        assert (model.features(expected["x"]) - expected["vggface2"]).abs().max().item() < 1e-4
    assert model.provenance["head_trained"] is False


# --- EmotionRecognizer ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(faces) -> FerModel:
    images, labels = faces
    torch.manual_seed(0)
    model = FerModel.from_architecture(TINY_ARCHITECTURE)
    fit_head_(model, images, labels)
    return model


def test_predict_emotions_single_and_batched(tiny_model: FerModel, faces) -> None:
    images, _ = faces
    recognizer = EmotionRecognizer(tiny_model, batch_size=3)
    label, scores = recognizer.predict_emotions(images[0])
    assert label in EMOTIONS and scores.shape == (8,) and scores.sum() == pytest.approx(1.0, abs=1e-5)
    labels, probabilities = recognizer.predict_emotions(images)
    assert probabilities.shape == (len(images), 8) and np.allclose(probabilities.sum(1), 1.0, atol=1e-5)
    assert labels[0] == label and set(labels) <= set(EMOTIONS) and len(set(labels)) >= 3
    _, logits = EmotionRecognizer(tiny_model, batch_size=32).predict_emotions(images, logits=True)
    assert np.allclose(logits, logits_of(tiny_model, tiny_model.preprocessing.batch(images)).numpy(), atol=1e-5)
    assert np.allclose(torch.from_numpy(logits).softmax(1).numpy(), probabilities, atol=1e-6)
    with pytest.raises(DataError, match=r"face 1: expected an \(H, W, 3\) uint8 RGB array"):
        recognizer.predict_emotions([images[0], images[1].astype(np.float32)])


def test_b0_features_are_1280_wide_and_tell_faces_apart(faces) -> None:
    images, _ = faces
    torch.manual_seed(0)
    model = FerModel.from_architecture(B0)
    model.input_size = SMALL
    features = EmotionRecognizer(model).extract_features(images + [images[0]])
    assert features.shape == (len(images) + 1, 1280)
    assert np.allclose(features[0], features[-1], atol=1e-5)  # the same face twice
    distances = np.linalg.norm(features[:-1, None] - features[None, :-1], axis=2)
    off_diagonal = distances[~np.eye(len(images), dtype=bool)]
    assert off_diagonal.min() > 1e-3 * np.linalg.norm(features, axis=1).mean()
