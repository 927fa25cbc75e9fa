"""Attribution methods, overlays and sanity checks on real FER+ faces with the tiny model
trained on real FER+ faces (48 px), and a randomly initialised EfficientNet-B0 at 64 px."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from fer_core.config import load_config
from fer_core.data.datasets import FerPlusDataset
from fer_core.errors import DataError, InvalidArgument
from fer_core.explain import (Attribution, class_mean_maps, default_layer, deletion_insertion, explain, layers,
                              load_quality, make_baseline, method_defaults, method_names, normalize_map, overlay, quality_path,
                              randomisation_check, record_quality, sanity_report)
from fer_core.models import FerModel, create_model, load_model


@pytest.fixture(scope="module")
def model(tiny_model) -> FerModel:
    return load_model(tiny_model)


@pytest.fixture(scope="module")
def test_faces(ferplus_root) -> tuple[list[np.ndarray], np.ndarray]:
    """32 FER+ test faces spread over the split, and their majority labels."""
    dataset = FerPlusDataset(ferplus_root, "test")
    picks = np.linspace(0, len(dataset) - 1, 32).astype(int)
    return [dataset.read(dataset[int(i)]) for i in picks], dataset.labels[picks]


@pytest.fixture(scope="module")
def batch(model, test_faces) -> torch.Tensor:
    return model.preprocessing.batch(test_faces[0])


def test_method_registry_lists_the_methods():
    assert method_names() == ["gradcam", "gradcam++", "integrated_gradients", "lrp", "occlusion", "saliency",
                              "smoothgrad"]
    assert method_defaults("integrated_gradients")["baseline"] == "blurred"


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "integrated_gradients", "occlusion", "saliency",
                                    "smoothgrad"])
def test_every_method_gives_finite_maps_at_input_size(model, batch, method):
    faces = batch[:4]
    before = faces.clone()
    attribution = explain(model, faces, method)
    assert attribution.maps.shape == (4, 48, 48) and attribution.maps.dtype == np.float32
    assert np.isfinite(attribution.maps).all()
    structured = attribution.maps.reshape(4, -1).std(axis=1) > 0
    if method.startswith("gradcam"):
        # Grad-CAM's ReLU leaves an all-zero map where no location has positive evidence for the
        # class (1 of these 4 faces on the tiny model trained channels_last): empty, never noise.
        assert structured.sum() >= 3 and all(s or not m.any() for s, m in zip(structured, attribution.maps))
    else:
        assert structured.all(), "every face gets a map with structure"
    with torch.no_grad():
        assert list(attribution.targets) == model.logits(faces).argmax(dim=1).tolist()
    assert attribution.method == method and set(attribution.params) == set(method_defaults(method))
    assert torch.equal(faces, before), "the caller's batch is left untouched"
    np.testing.assert_array_equal(explain(model, faces, method).maps, attribution.maps)
    json.dumps(attribution.to_dict())


@pytest.mark.parametrize("method", ["gradcam", "integrated_gradients"])
def test_maps_depend_on_the_target_class(model, batch, method):
    faces = batch[:8]
    with torch.no_grad():
        logits = model.logits(faces)
    top, bottom = logits.argmax(dim=1).tolist(), logits.argmin(dim=1).tolist()
    first = explain(model, faces, method, target=top).maps
    second = explain(model, faces, method, target=bottom).maps
    assert all(not np.allclose(a, b) for a, b in zip(first, second))
    # An empty Grad-CAM (no positive evidence for the class) shares no ranking with the other map.
    correlations = [spearmanr(a.ravel(), b.ravel()).statistic if np.ptp(a) and np.ptp(b) else 0.0
                    for a, b in zip(first, second)]
    assert np.mean(correlations) < 0.5, correlations
    emotion = model.emotions[top[0]]
    np.testing.assert_allclose(explain(model, faces[:1], method, target=emotion).maps, first[:1],
                               rtol=1e-4, atol=1e-6)


def test_gradcam_and_gradcam_plus_plus_follow_the_papers(model, batch):
    """Weights from activations A and gradients g taken by a plain hook: Grad-CAM averages g;
    Grad-CAM++ sums relu(g) * g^2 / (2 g^2 + sum(A) g^3) (Chattopadhyay et al., eq. 19)."""
    faces, targets = batch[:6], [4, 5, 6, 7, 0, 3]
    captured = []
    handle = model.module.get_submodule("blocks.4").register_forward_hook(
        lambda module, args, output: captured.append(output))
    try:
        score = model.module(faces).gather(1, torch.tensor(targets)[:, None]).sum()
        (g,) = torch.autograd.grad(score, captured[0])
    finally:
        handle.remove()
    a = captured[0].detach()
    alpha = g ** 2 / (2 * g ** 2 + a.sum(dim=(2, 3), keepdim=True) * g ** 3)
    alpha = torch.nan_to_num(alpha, nan=0.0)
    for method, weights in (("gradcam", g.mean(dim=(2, 3), keepdim=True)),
                            ("gradcam++", (alpha * torch.relu(g)).sum(dim=(2, 3), keepdim=True))):
        cam = torch.relu((weights * a).sum(dim=1, keepdim=True))
        expected = torch.nn.functional.interpolate(cam, size=(48, 48), mode="bilinear", align_corners=False)[:, 0]
        maps = explain(model, faces, method, target=targets, layer="blocks.4").maps
        np.testing.assert_allclose(maps, expected.numpy(), rtol=1e-4, atol=1e-6)


# The Riemann sum's error falls with the steps, fastest from a blurred baseline (its path stays near
# the face). Measured on the tiny model, relative completeness error: black 0.072 / 0.021 / 0.013 at
# 128 / 256 / 512 steps, blurred 0.008 at 128. The steps below keep each about 4x under the bound.
@pytest.mark.parametrize(("baseline", "n_steps"), [("black", 512), ("blurred", 64)])
def test_integrated_gradients_are_complete(model, batch, baseline, n_steps):
    faces = batch[:8]
    attribution = explain(model, faces, "integrated_gradients", baseline=baseline, n_steps=n_steps)
    targets = torch.tensor(attribution.targets)[:, None]
    with torch.no_grad():
        difference = (model.logits(faces) - model.logits(make_baseline(model, faces, baseline))).gather(1, targets)
    difference = difference[:, 0].numpy()
    totals = attribution.maps.reshape(8, -1).sum(axis=1)
    assert np.abs(totals - difference).sum() / np.abs(difference).sum() < 0.05
    assert np.abs(totals - difference).max() < 0.15


def test_integrated_gradients_batching_and_mean_face_baseline(model, batch):
    faces, mean_face = batch[:3], batch.mean(dim=0)
    whole = explain(model, faces, "integrated_gradients", baseline="mean", mean_face=mean_face, n_steps=16,
                    internal_batch_size=None).maps
    chunked = explain(model, faces, "integrated_gradients", baseline="mean", mean_face=mean_face, n_steps=16,
                      internal_batch_size=5).maps
    np.testing.assert_allclose(chunked, whole, rtol=1e-4, atol=1e-6)
    with pytest.raises(InvalidArgument, match="mean_face"):
        explain(model, faces, "integrated_gradients", baseline="mean")


def test_randomisation_tells_the_trained_model_from_a_randomised_one(model, batch):
    # All 32 faces: a pass allows at most 10% constant maps at the last step (Grad-CAM's ReLU zeroes
    # some randomised maps), which 8 faces would make a rule of none. Measured: 3 of 32 constant,
    # last-step Spearman -0.15 vs noise stability 0.96 and different faces 0.05.
    # The tiny model leaves more Grad-CAM maps empty than the library's 10% rule allows for a real
    # model (3 then 4 of 32 at the last step on two tiny models trained with the same recipe):
    # this test is about the correlations, so it allows 20%; the rule itself is tested in
    # test_saliency_audit.
    result = randomisation_check(model, batch, "gradcam", depth=3, max_constant_share=0.2)
    assert result.layers == ["classifier", "conv_head", layers(model)[-1]]
    assert result.repeat_spearman == pytest.approx(1.0)
    assert result.spearman[-1] < 0.5 and min(result.spearman) < 0.5
    assert result.passed
    json.dumps(result.to_dict())


def test_deletion_and_insertion_reward_faithful_maps(model, batch):
    occlusion = explain(model, batch, "occlusion")
    faithful = deletion_insertion(model, batch, occlusion)
    assert faithful.deletion_win_rate >= 0.8 and faithful.insertion_win_rate >= 0.8
    assert faithful.deletion_auc < faithful.random_deletion_auc < faithful.insertion_auc
    assert faithful.passed
    reversed_order = Attribution(-occlusion.maps, "reversed occlusion", occlusion.targets)
    unfaithful = deletion_insertion(model, batch, reversed_order)
    assert unfaithful.deletion_auc > unfaithful.random_deletion_auc and not unfaithful.passed


def test_sanity_report_is_json_ready_for_each_method(model, batch):
    report = sanity_report(model, batch[:6], ["gradcam", "saliency"], depth=2, steps=8)
    assert set(report) == {"gradcam", "saliency"}
    for entry in report.values():
        assert entry["faces_per_second"] > 0
        assert entry["passed"] == (entry["randomisation"]["passed"] and entry["faithfulness"]["passed"])
    json.loads(json.dumps(report))


def test_overlay_blends_the_heatmap_over_the_face(model, batch, test_faces):
    image = test_faces[0][0]
    big = np.ascontiguousarray(np.repeat(np.repeat(image, 2, axis=0), 2, axis=1))
    attribution = explain(model, batch[:1], "gradcam").maps[0]
    assert np.array_equal(overlay(big, attribution, alpha=0.0), big)
    heat = overlay(big, attribution, alpha=1.0)
    assert heat.shape == big.shape and heat.dtype == np.uint8
    half = overlay(big, attribution, alpha=0.5).astype(int)
    assert np.abs(half - (big.astype(int) + heat.astype(int)) / 2).max() <= 1
    hottest = np.unravel_index(np.argmax(np.kron(normalize_map(attribution), np.ones((2, 2)))), big.shape[:2])
    assert heat[hottest][0] > heat[hottest][2], "jet's top is red"


def test_signed_overlay_uses_a_diverging_map():
    image = np.full((4, 4, 3), 128, np.uint8)
    signed = np.zeros((4, 4), np.float32)
    signed[0, 0], signed[3, 3] = 1.0, -1.0
    colored = overlay(image, signed, alpha=1.0, signed=True, percentile=100)
    assert tuple(colored[0, 0]) == (255, 0, 0) and tuple(colored[3, 3]) == (0, 0, 255)
    assert colored[1, 1].min() >= 250, "zero is white"
    assert normalize_map(signed, signed=True, percentile=100).min() == -1.0
    assert normalize_map(signed, percentile=100).min() == 0.0
    with pytest.raises(InvalidArgument, match="colormap"):
        overlay(image, signed, colormap="rainbow-unicorn")


def test_class_mean_maps_average_normalised_maps_per_class(model, batch, test_faces):
    labels = test_faces[1]
    maps = explain(model, batch, "gradcam", target=labels.tolist()).maps
    means = class_mean_maps(maps, labels, model.emotions)
    assert set(means) == {model.emotions[i] for i in np.unique(labels)}
    first = model.emotions[labels[0]]
    expected = np.mean([normalize_map(m) for m, label in zip(maps, labels) if label == labels[0]], axis=0)
    np.testing.assert_allclose(means[first], expected, rtol=1e-6)
    assert means[first].shape == (48, 48) and 0 <= means[first].min() and means[first].max() <= 1


def test_bad_requests_get_clear_errors(model, batch):
    with pytest.raises(InvalidArgument,
                       match=r"explain\(\) argument 'method': expected one of \[.*'gradcam'.*got 'lime'"):
        explain(model, batch[:1], "lime")
    with pytest.raises(InvalidArgument, match="n_step"):
        explain(model, batch[:1], "integrated_gradients", n_step=8)
    with pytest.raises(InvalidArgument, match="class index"):
        explain(model, batch[:1], "saliency", target=8)
    with pytest.raises(InvalidArgument, match="one class per face"):
        explain(model, batch[:2], "saliency", target=[0])
    with pytest.raises(InvalidArgument, match="its stages"):
        explain(model, batch[:1], "gradcam", layer="blocks.99")
    with pytest.raises(InvalidArgument, match="must output"):
        explain(model, batch[:1], "gradcam", layer="classifier")
    with pytest.raises(InvalidArgument, match=r"\(N, 3, H, W\)"):
        explain(model, batch[0], "gradcam")
    with pytest.raises(InvalidArgument,
                       match=r"saliency\(\) argument 'reduction': expected one of \['abs', 'signed'\]"):
        explain(model, batch[:1], "saliency", reduction="max")


def test_efficientnet_b0_with_inplace_silu_runs_gradcam_and_ig(ferplus_root):
    torch.manual_seed(0)
    module = create_model("tf_efficientnet_b0_ns")
    nn.init.normal_(module.get_classifier().weight, std=0.05)  # the factory's head is all zeros
    model = FerModel(module, "tf_efficientnet_b0_ns", input_size=64)
    assert any(getattr(m, "inplace", False) for m in model.module.modules())
    dataset = FerPlusDataset(ferplus_root, "test")
    faces = model.preprocessing.batch([dataset.read(dataset[i]) for i in range(2)])
    assert layers(model)[-3:] == ["blocks.6", "conv_head", "bn2"]
    for method, params in (("gradcam", {}), ("gradcam++", {"layer": "blocks.6"}),
                           ("integrated_gradients", {"n_steps": 8})):
        maps = explain(model, faces, method, **params).maps
        assert maps.shape == (2, 64, 64) and np.isfinite(maps).all() and (maps.reshape(2, -1).std(axis=1) > 0).all()


def test_gradcam_on_a_layer_that_an_inplace_silu_overwrites(ferplus_root):
    """``bn1.drop`` is an Identity whose output the next SiLU(inplace=True) overwrites: the map
    must be the one of the pre-activation values (as with an out-of-place SiLU)."""
    torch.manual_seed(0)
    module = create_model("tf_efficientnet_b0_ns")
    nn.init.normal_(module.get_classifier().weight, std=0.05)
    model = FerModel(module, "tf_efficientnet_b0_ns", input_size=64)
    dataset = FerPlusDataset(ferplus_root, "test")
    faces = model.preprocessing.batch([dataset.read(dataset[i]) for i in range(2)])
    maps = explain(model, faces, "gradcam", target=[3, 4], layer="blocks.0.0.bn1.drop").maps

    reference = copy.deepcopy(model.module)  # the same network with an out-of-place SiLU there
    reference.get_submodule("blocks.0.0.bn1").act = nn.SiLU(inplace=False)
    captured = []
    handle = reference.get_submodule("blocks.0.0.bn1.drop").register_forward_hook(
        lambda module, args, output: captured.append(output))
    try:
        score = reference(faces.clone().requires_grad_(True)).gather(1, torch.tensor([[3], [4]])).sum()
        (gradient,) = torch.autograd.grad(score, captured[0])
    finally:
        handle.remove()
    cam = torch.relu((gradient.mean(dim=(2, 3), keepdim=True) * captured[0].detach()).sum(dim=1, keepdim=True))
    expected = torch.nn.functional.interpolate(cam, size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    np.testing.assert_allclose(maps, expected.detach().numpy(), rtol=1e-4, atol=1e-3 * float(expected.abs().max()))


SHIPPED = Path(__file__).resolve().parent.parent / "weights" / "fer_b0_ferplus.safetensors"


@pytest.mark.slow
def test_gradcam_deletion_beats_the_random_order_on_the_shipped_model(ferplus_root, tmp_path):
    """The shipped B0 on 48 real FER+ test faces, blurred replacement. Grad-CAM on its
    default layer removes the evidence faster than a random pixel order. That layer is
    ``blocks.4`` at 64 and 96 px (4 x 4 and 6 x 6), ``bn2`` at the shipped 112 px (4 x 4): measured on two
    samples of 32 faces with a 64 px model, the
    2 x 2 stages (``blocks.5``, ``bn2``) did no better than random (deletion 0.43-0.49 vs random
    0.42-0.47) while every 4 x 4 or finer stage did (0.33-0.38). With the shipped model 32 faces
    were too few to tell (deletion 0.328 vs random 0.378, wins 0.63, p 0.053); on these 48, with
    12 deletion steps: 0.339 vs 0.420, wins 0.73, p 0.0011 (16 steps: 0.341 vs 0.419, p 0.0014).
    The 96 px model (blocks.4), 12 steps: 0.362 vs 0.418, wins 0.63, p 0.012. The 112 px model before
    the weight average (bn2): 0.412 vs 0.461, wins 0.63, p 0.028 with 12 steps; 0.410 vs 0.465, wins 0.65,
    p 0.006 with the 6 steps used here (half the forwards: CI's time under load). The weight average
    shipped next, 6 steps: 0.409 vs 0.469, wins 0.69, p 0.004; the three-model soup shipped now: 0.400 vs
    0.453, wins 0.67, p 0.0096."""
    model = load_model(SHIPPED)
    assert default_layer(model, 96) == "blocks.4" and default_layer(model) == default_layer(model, 224) == "bn2"
    dataset = FerPlusDataset(ferplus_root, "test")
    picks = np.linspace(0, len(dataset) - 1, 48).astype(int)
    faces = model.preprocessing.batch([dataset.read(dataset[int(i)]) for i in picks])
    results = record_quality(tmp_path, model, faces, ["gradcam"], source="ferplus:test, 48 spread", depth=3,
                             steps=6)
    gradcam = results["gradcam"]
    faithful = gradcam["faithfulness"]
    assert faithful["baseline"] == "blurred"
    assert faithful["deletion_auc"] < faithful["random_deletion_auc"] - 0.03, faithful["deletion_auc"]
    assert faithful["deletion_p_value"] < 0.05 and faithful["deletion_win_rate"] > 0.5
    assert faithful["insertion_auc"] > faithful["random_insertion_auc"]
    # the centre prior is the bar to pass (issue 14): Grad-CAM does not clear it on deletion (p 0.44 on the
    # soup shipped now, 6 steps, though insertion does, p 0.004; the average before it 0.36 / 0.001; the 112 px
    # model before that: 0.47 / 0.006, 12 steps 0.49 / 0.003; deletion / insertion p 0.21 / 0.39 at 96 px,
    # 0.36 / 0.67 at 64 px)
    assert gradcam["randomisation"]["passed"] and not faithful["passed"] and not gradcam["passed"]
    assert load_quality(tmp_path, model.fingerprint) == json.loads(json.dumps(results))


def test_quality_results_are_stored_merged_and_loaded(model, batch, project, tmp_path):
    config = load_config(project / "configs" / "config.yaml", {"paths.cache_dir": str(tmp_path / "cache")})
    assert load_quality(config, model.fingerprint) == {}, "nothing stored yet"
    first = record_quality(config, model, batch[:6], ["gradcam", "saliency"], source="ferplus:test", depth=2, steps=8)
    second = record_quality(config, model, batch[:6], ["occlusion"], source="ferplus:test", depth=2, steps=8)
    path = quality_path(config, model.fingerprint)
    assert path == tmp_path / "cache" / "quality" / f"{model.fingerprint}.json"
    stored = load_quality(tmp_path / "cache", model.fingerprint)
    assert set(stored) == {"gradcam", "saliency", "occlusion"}
    assert stored["occlusion"]["passed"] == second["occlusion"]["passed"]
    for method, entry in {**first, **second}.items():
        assert stored[method]["passed"] == (entry["randomisation"]["passed"] and entry["faithfulness"]["passed"])
        assert stored[method]["faces"] == {"n": 6, "source": "ferplus:test"}
    assert json.loads(path.read_text())["architecture"] == model.architecture
    assert not list(path.parent.glob(".*.tmp")), "written atomically"
    path.write_text("{ half a file")
    with pytest.raises(DataError, match="unreadable saliency-quality file"):
        load_quality(config, model.fingerprint)
    with pytest.raises(InvalidArgument, match="fingerprint"):
        load_quality(config, "../../etc/passwd")


def test_sanity_command_stores_what_the_dashboard_flags(project, tiny_model, capsys, tmp_path):
    from fer_core.cli import main
    config_file = str(project / "configs" / "config.yaml")
    isolated = ["--set", f"paths.cache_dir={tmp_path / 'cache'}"]
    assert main(["--config", config_file, *isolated, "sanity", "--dataset", "ferplus:test", "--model", str(tiny_model),
                 "--method", "gradcam", "--method", "saliency", "--faces", "8", "--depth", "2", "--steps", "8"]) == 0
    output = capsys.readouterr()
    printed = json.loads(output.out)
    # progress for the dashboard's job panel, one line per method as it starts
    assert [line for line in output.err.splitlines() if line.startswith("sanity ")] == [
        "sanity 1/2: gradcam on 8 faces (0% done)", "sanity 2/2: saliency on 8 faces (50% done)"]
    stored = load_quality(tmp_path / "cache", load_model(tiny_model).fingerprint)
    assert set(printed) == {"gradcam", "saliency"} and set(stored) >= {"gradcam", "saliency"}
    for method, summary in printed.items():
        assert stored[method]["passed"] == summary["passed"]
        assert stored[method]["faces"] == {"n": 8, "source": "ferplus:test, 8 faces spread"}
    assert main(["--config", config_file, "sanity", "--dataset", "ferplus:test", "--method", "nosuch"]) == 2
    assert "unknown attribution method" in capsys.readouterr().err
