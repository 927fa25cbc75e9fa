"""The one extraction engine and the one image -> tensor chain, on real FER+ and Stable Diffusion
faces: the engine's inputs, logits, features, maps, keypoints and cache keys equal the old path
written out step by step (read, hash, decode, find the face, resize, normalise, forward), and
the keys and inputs recorded from the code before the engine; explaining a dataset decodes and
detects each face once; training and evaluation share one transform; the device a model is
on is the one it runs on (nothing moves a shared model)."""

import dataclasses
import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import fer_core.data.datasets
import fer_core.extraction
from fer_core.backends import InferenceOptions, on_device, resolve_device
from fer_core.cache import CacheKey, ResultCache
from fer_core.config import config_from_dict
from fer_core.data import FerPlusDataset, open_dataset
from fer_core.errors import InvalidArgument
from fer_core.explain import explain
from fer_core.explain.regions import crop_keypoints
from fer_core.extraction import FORWARD_KINDS, FacePreparer, cached_forward
from fer_core.faces import FacePipeline, create_detector
from fer_core.images import load_rgb
from fer_core.jobs.options import JobOptions
from fer_core.models import TINY_ARCHITECTURE, EmotionRecognizer, FerModel, save_model
from fer_core.precompute import EXPLAIN_BATCH_SIZE, downsample_maps, explain_dataset
from fer_core.preprocess import (AugmentSettings, Preprocessing, create_transform, pixel_augmentation,
                                 tensor_augmentation)
from fer_core.training import FaceTransform
from fer_core.workflows import load_configured_model

FER_ROWS = [0, 140, 280, 420]
SD_ROWS = [0, 60, 120, 180]
#: Attribution passes without progress bars, at their default batch size.
QUIET_EXPLAIN = InferenceOptions(batch_size=EXPLAIN_BATCH_SIZE, progress=False)
#: Recorded with the code before the engine (commit 2562731) on these faces: the preparation
#: part of every cache key, the first three content hashes, and sha256 of each FER+ input tensor
#: (48 px faces at 48 px: no resize, so only IEEE float arithmetic, the same on every machine).
RECORDED = {
    "ferplus": {"preparation": "591949e4235782a7:whole-image",
                "contents": ("57ab0adc0e51cf8f0bb66c3633f5de7cd19a20b0a67d01093d10e2c823067f10",
                             "c3ffaad6d960eac69bfb51aa028e6379c2d00b2d13a1d5529305a5a6c32e6870",
                             "fc041d132d1f492c52b7ef1e90e71d6d0ed108ac214dd8112308e946960729db"),
                "tensors": ("2f12e9a767a05b8f", "1694f11c512b95d6", "21b337f2f3723d9b", "8c5c5a460bfede7a")},
    "sd": {"preparation": "591949e4235782a7:aaffbc96aecfdcaa",
           "contents": ("280a44966a36e898da47bfc916b92ca385d0c66f5e3c3e09054c821fe58f2d18",
                        "78e58ca4ef1dd6cc266bde0e0a9fb93f6b2b6626384ffcf52f34e666af70bece",
                        "6addfdab2f4247d71910464ee00d7b2f82d3dd20ccb63816fd73d7c305bf8532")},
}


@pytest.fixture(scope="module")
def model():
    """A tiny network at 48 px with a random (seeded) head, so that every face gets its own logits."""
    torch.manual_seed(0)
    model = FerModel.from_architecture(TINY_ARCHITECTURE)
    model.input_size = 48
    torch.nn.init.normal_(model.module.get_classifier().weight, 0.0, 2.0)
    return model


@pytest.fixture(scope="module")
def pipeline(face_model_path):
    return FacePipeline(create_detector("mediapipe", model_path=face_model_path), crop_size=48)


@pytest.fixture(scope="module")
def datasets(ferplus_root, project):
    return {"ferplus": FerPlusDataset(ferplus_root, "test").subset(FER_ROWS),
            "sd": open_dataset("sd_faces", project / "data").subset(SD_ROWS)}


def old_path(model, dataset, pipeline):
    """The chain before the engine, step by step: the file's bytes hashed, decoded, the largest
    face found and aligned (the whole image of pre-cropped data), resized and normalised, one
    forward pass for logits and the features the classifier sees."""
    contents, crops = [], []
    for sample in dataset:
        contents.append(hashlib.sha256(Path(sample.source).read_bytes()).hexdigest())
        rgb = load_rgb(sample.source)
        face = None if dataset.pre_cropped else pipeline.largest(rgb)
        crops.append(rgb if face is None else face.image)
    batch = torch.stack([Preprocessing(48).to_tensor(crop) for crop in crops])
    with torch.inference_mode():
        features = model.module.forward_head(model.module.forward_features(batch), pre_logits=True)
        logits = model.module.get_classifier()(features)
    return contents, crops, batch, logits.numpy(), features.numpy()


@pytest.mark.parametrize("name", ["ferplus", "sd"])
def test_the_engine_equals_the_old_path_and_the_recorded_keys(model, datasets, pipeline, name, tmp_path):
    dataset = datasets[name]
    contents, _, batch, logits, features = old_path(model, dataset, pipeline)
    preparer = FacePreparer(model, pipeline)
    assert preparer.fingerprint(dataset.pre_cropped) == RECORDED[name]["preparation"]
    assert tuple(contents[:3]) == RECORDED[name]["contents"]
    if name == "ferplus":
        assert tuple(hashlib.sha256(t.numpy().tobytes()).hexdigest()[:16] for t in batch) == RECORDED[name]["tensors"]
    prepared = [preparer.prepare(dataset, sample) for sample in dataset]
    assert torch.equal(torch.stack([face.tensor for face in prepared]), batch)
    with ResultCache(tmp_path / "results.sqlite") as cache:
        results = cached_forward(model, dataset, preparer, range(len(dataset)), cache, batch_size=len(dataset))
        # bit for bit: the same inputs in the same batch give the same numbers
        assert np.array_equal(results.logits, logits) and np.array_equal(results.features, features)
        assert results.contents == tuple(contents) and results.computed == len(dataset)
        keys = [CacheKey(kind, model.fingerprint, RECORDED[name]["preparation"], content)
                for content in contents for kind in FORWARD_KINDS]
        stored = cache.get_many(keys)
        assert len(stored) == len(keys) == len(cache)   # exactly these entries, under the recorded keys
        assert np.array_equal(np.stack([stored[k] for k in keys if k.kind == "logits"]), logits)
        again = cached_forward(model, dataset, preparer, range(len(dataset)), cache)
        assert again.computed == 0 and np.array_equal(again.logits, logits)


def test_explaining_decodes_and_detects_each_face_once(model, datasets, pipeline, tmp_path, monkeypatch):
    decoded, detected = [], []
    for module in (fer_core.extraction, fer_core.data.datasets):
        original = module.load_rgb
        monkeypatch.setattr(module, "load_rgb", lambda source, original=original: decoded.append(1) or original(source))
    largest = pipeline.largest
    monkeypatch.setattr(pipeline, "largest", lambda rgb: detected.append(1) or largest(rgb))
    monkeypatch.setattr(Preprocessing, "to_image", lambda *args: pytest.fail("keypoints undo the normalisation"))
    dataset = datasets["sd"]
    with ResultCache(tmp_path / "results.sqlite") as cache:
        first = explain_dataset(model, dataset, cache, "gradcam", map_size=24, face_pipeline=pipeline,
                                options=QUIET_EXPLAIN)
        assert (len(decoded), len(detected)) == (4, 4)   # the code before the engine: 8 and 8
        assert first.computed == 4
        # the prediction pass is the same pass: its logits are stored beside the maps
        forward = cached_forward(model, dataset, FacePreparer(model, pipeline), range(4), cache)
        assert forward.computed == 0 and (len(decoded), len(detected)) == (4, 4)
        again = explain_dataset(model, dataset, cache, "gradcam", map_size=24, face_pipeline=pipeline,
                                options=QUIET_EXPLAIN)
    assert again.computed == 0 and (len(decoded), len(detected)) == (4, 4)
    assert np.array_equal(again.maps, first.maps) and np.array_equal(again.keypoints, first.keypoints)
    monkeypatch.undo()
    _, crops, batch, logits, _ = old_path(model, dataset, pipeline)
    assert np.array_equal(forward.logits, logits)
    expected = explain(model, batch, "gradcam", target=logits.argmax(axis=1).tolist())
    small, scales = downsample_maps(expected.maps, 24)
    assert first.table["target"].tolist() == logits.argmax(axis=1).tolist()
    assert np.array_equal(first.maps, (small.astype(np.float64) * scales[:, None, None]).astype(np.float32))
    detections = [pipeline.largest(load_rgb(sample.source)) for sample in dataset]
    assert np.array_equal(first.keypoints, np.stack([d.keypoints / d.image.shape[0] for d in detections]))


def test_keypoints_of_pre_cropped_faces_come_from_the_crop_the_model_saw(model, datasets, pipeline, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setattr(Preprocessing, "to_image", lambda *args: pytest.fail("keypoints undo the normalisation"))
    dataset = datasets["ferplus"]
    with ResultCache(tmp_path / "results.sqlite") as cache:
        result = explain_dataset(model, dataset, cache, "saliency", target="true", map_size=24,
                                 face_pipeline=pipeline, options=QUIET_EXPLAIN)
        assert cache.info()["kinds"].keys() == {"attribution", "diagnostics", "keypoints"}  # no forward pass
    explained = [row for row, sample in enumerate(dataset) if sample.label >= 0]
    crops = [Preprocessing(48).resize(dataset.read(dataset[row])) for row in explained]
    points, found = crop_keypoints(crops, pipeline.detector)
    assert found.sum() >= 2   # the 4x-upscaled 48 px faces: the detector finds most
    expected = np.where(found[:, None, None], points / 48, np.nan).astype(np.float32)
    assert np.array_equal(result.keypoints, expected, equal_nan=True)


def test_one_transform_for_evaluation_and_training(model, datasets):
    dataset = datasets["ferplus"]
    crop = dataset.read(dataset[0])
    evaluation = create_transform(model.preprocessing)(crop)
    assert torch.equal(evaluation, model.preprocessing.to_tensor(crop))
    assert torch.equal(FaceTransform(model.preprocessing, pre_cropped=True)(crop), evaluation)
    assert torch.equal(FacePreparer(model, None).prepare(dataset, dataset[0]).tensor, evaluation)
    settings = AugmentSettings()
    torch.manual_seed(0)
    trained = FaceTransform(model.preprocessing, pre_cropped=True, augment=settings)(crop)
    torch.manual_seed(0)   # the trainer's chain before create_transform, written out
    pixels = torch.from_numpy(np.ascontiguousarray(model.preprocessing.resize(crop).transpose(2, 0, 1)))
    old = tensor_augmentation(settings)(model.preprocessing.normalize(pixel_augmentation(settings)(pixels)))
    assert torch.equal(trained, old) and not torch.equal(trained, evaluation)
    with pytest.raises(InvalidArgument, match="takes no augmentation"):
        create_transform(model.preprocessing, augment=settings)
    with pytest.raises(InvalidArgument, match="per face"):
        create_transform(model.preprocessing, is_training=True).batch([crop])


def test_the_model_runs_where_it_is_and_the_config_device_reaches_it(tmp_path):
    model = FerModel.from_architecture(TINY_ARCHITECTURE)
    weights = save_model(model, tmp_path / "tiny")
    model.to("meta")  # a device no default names: the code before moved it back to the CPU here
    EmotionRecognizer(model)
    assert model.device.type == "meta" and on_device(model, None).device.type == "meta"
    with pytest.raises(InvalidArgument, match="the model is on meta"):
        EmotionRecognizer(model, device="cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InvalidArgument, match="device"):
        resolve_device("gpu")
    config = config_from_dict({"model": {"weights_path": str(weights), "device": "meta"}}, root=tmp_path)
    assert load_configured_model(config).device.type == "meta"


def test_job_options_are_the_config_resolved_once(tmp_path, face_model_path):
    """What a job hands down equals what the config said, so cache keys stay those of the config:
    the device with ``auto`` resolved, the backend and batch size, the same face pipeline."""
    config = config_from_dict({"model": {"device": "auto"}, "inference": {"backend": "onnx", "batch_size": 7},
                               "faces": {"mediapipe_model": str(face_model_path), "align": False}}, root=tmp_path)
    options = JobOptions.from_config(config, progress=False)
    assert options.device == str(resolve_device("auto"))
    assert options.inference == InferenceOptions(batch_size=7, device=options.device, backend="onnx", progress=False)
    assert options.face_pipeline(64).fingerprint() == FacePipeline.from_config(config, 64).fingerprint()
    assert options.face_pipeline(64).fingerprint() != FacePipeline.from_config(config, 96).fingerprint()


def test_a_grey_model_sees_colour_faces_in_grey_and_grey_faces_unchanged(model, datasets):
    grey = dataclasses.replace(model.preprocessing, grayscale=True)
    # Colour models keep the cache keys they had before the setting existed (recorded above).
    assert model.preprocessing.fingerprint() == RECORDED["sd"]["preparation"].split(":")[0]
    assert grey.fingerprint() != model.preprocessing.fingerprint()
    fer_crop = datasets["ferplus"].read(datasets["ferplus"][0])
    assert torch.equal(grey.to_tensor(fer_crop), model.preprocessing.to_tensor(fer_crop))  # FER+ is grey already
    sd = datasets["sd"]
    photo = sd.read(sd[1])
    assert np.abs(np.diff(photo.astype(int), axis=2)).mean() > 5  # a colour photo
    seen = grey.resize(photo)
    assert (seen[..., 0] == seen[..., 1]).all() and (seen[..., 1] == seen[..., 2]).all()
    luma = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)  # ITU-R 601 luma, resized as the colour face would be
    assert np.array_equal(seen[..., 0], model.preprocessing.resize(np.dstack([luma] * 3))[..., 0])
    assert torch.equal(grey.batch([photo, fer_crop]), torch.stack([grey.to_tensor(photo), grey.to_tensor(fer_crop)]))
