"""LRP on the shipped EfficientNet-B0 (trained on FER+) over real FER+ test faces:
conservation, sensitivity to the target class and to the model's top layers, and clear errors
for what it cannot explain."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import timm
import torch
from scipy.stats import spearmanr
from timm.layers import SelectAdaptivePool2d

from fer_core.data.datasets import FerPlusDataset
from fer_core.errors import InvalidArgument
from fer_core.explain import explain, method_defaults, randomisation_check_both
from fer_core.explain.lrp import COMPOSITES, CONSERVATION_TOLERANCE, CONTRASTS
from fer_core.models import TINY_ARCHITECTURE, FerModel, load_model
from fer_core.workflows import SHIPPED_WEIGHTS
from tests.conftest import REPO


@pytest.fixture(scope="module")
def model() -> FerModel:
    return load_model(REPO / SHIPPED_WEIGHTS)


@pytest.fixture(scope="module")
def faces(ferplus_root) -> list[np.ndarray]:
    """16 FER+ test faces spread over the split."""
    dataset = FerPlusDataset(ferplus_root, "test")
    return [dataset.read(dataset[int(i)]) for i in np.linspace(0, len(dataset) - 1, 16).astype(int)]


@pytest.fixture(scope="module")
def batch(model, faces) -> torch.Tensor:
    return model.preprocessing.batch(faces)


@pytest.fixture(scope="module")
def default_maps(model, batch):
    return explain(model, batch, "lrp")


def test_lrp_conserves_the_target_logit_on_real_faces(model, batch, default_maps):
    attribution = default_maps
    with torch.no_grad():
        logits = model.logits(batch)
    predicted = logits.argmax(dim=1)
    assert list(attribution.targets) == predicted.tolist()
    assert attribution.maps.shape == (16, model.input_size, model.input_size) and np.isfinite(attribution.maps).all()
    # Checked against the model's own logits, not only the method's diagnostics.
    target_logits = logits.gather(1, predicted[:, None])[:, 0].numpy()
    sums = attribution.maps.reshape(16, -1).sum(axis=1)
    errors = np.abs(sums - target_logits) / np.abs(target_logits)
    assert np.median(errors) < 0.05, errors
    diagnostics = attribution.diagnostics
    np.testing.assert_allclose(diagnostics["conservation_error"], errors, rtol=1e-2, atol=1e-4)
    np.testing.assert_allclose(diagnostics["explained_score"], target_logits, rtol=1e-5)
    assert diagnostics["conserved"] and diagnostics["canonical_logit_error"] < 1e-3
    assert (attribution.maps.reshape(16, -1).std(axis=1) > 0).all()
    assert json.loads(json.dumps(attribution.to_dict()))["diagnostics"]["conservation_error"] == pytest.approx(
        diagnostics["conservation_error"])
    assert set(attribution.params) == set(method_defaults("lrp"))


def test_the_error_is_measured_not_assumed(model, batch, default_maps):
    """The earlier configuration (z+ everywhere) loses relevance at bias-driven units; its
    maps say so. Median error on these 16 faces: 0.051 on the shipped three-model soup (0.050 on the weight
    average before it, 0.049 on the 112 px model before that, 0.065 on the 96 px one), against 0.0001 for the
    default composite; the ``conserved`` flag is the median against :data:`CONSERVATION_TOLERANCE` (0.05),
    which sits right at it, so the test compares the two composites' measured errors rather than the flag
    alone, and checks the flag is that median (of an even count: the mean of the middle two)."""
    earlier = explain(model, batch, "lrp", composite="epsilon_plus_flat")
    lost, default = (float(np.median(maps.diagnostics["conservation_error"])) for maps in (earlier, default_maps))
    assert lost > 0.02 and lost > 50 * default, (lost, default)
    assert earlier.diagnostics["conserved"] == (lost <= CONSERVATION_TOLERANCE)


def test_the_callers_model_and_faces_are_left_untouched(model, batch):
    faces = batch[:4].clone()
    state = {key: value.clone() for key, value in model.module.state_dict().items()}
    explain(model, faces, "lrp")
    assert torch.equal(faces, batch[:4])
    assert all(torch.equal(state[key], value) for key, value in model.module.state_dict().items())
    assert model.module.bn1.act.inplace, "in-place activations stay in-place on the caller's model"
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in model.module.modules())


def test_batches_give_the_same_maps_as_single_passes(model, batch, default_maps):
    chunked = explain(model, batch[:6], "lrp", batch_size=4)
    # float32 sums in another batch order (the logits differ by 1e-6) move each face's map by less than 1% of
    # its absolute mass. Measured on the shipped soup: 0.61% on one face of six, where the epsilon rule divides
    # by a pre-activation near zero, and at most 0.015% on the other five (1.5e-6 of the largest relevance on
    # the model before it). A batch that mixed faces or used batch statistics would move them by tens of percent.
    moved = np.abs(chunked.maps - default_maps.maps[:6]).sum(axis=(1, 2))
    mass = np.abs(default_maps.maps[:6]).sum(axis=(1, 2))
    assert (moved / mass).max() < 1e-2, moved / mass
    np.testing.assert_allclose(chunked.diagnostics["relevance_sum"], default_maps.diagnostics["relevance_sum"][:6],
                               rtol=1e-5)


@pytest.mark.parametrize("contrast", sorted(CONTRASTS))
def test_maps_depend_on_the_target_class(model, batch, contrast):
    faces = batch[:8]
    with torch.no_grad():
        logits = model.logits(faces)
    top, bottom = logits.argmax(dim=1).tolist(), logits.argmin(dim=1).tolist()
    first = explain(model, faces, "lrp", target=top, contrast=contrast)
    second = explain(model, faces, "lrp", target=bottom, contrast=contrast)
    correlations = [spearmanr(a.ravel(), b.ravel()).statistic for a, b in zip(first.maps, second.maps)]
    # a map that ignored the target would correlate 1.0 with itself (maps repeat exactly: see the
    # randomisation test); measured means on the 112 px weight average shipped before the soup: none -0.32, mean 0.17,
    # softmax 0.77 (0.76 on the 112 px model before it, 0.54 on the 96 px one), single faces up to 0.99
    assert np.mean(correlations) < 0.9, correlations
    assert np.median(first.diagnostics["conservation_error"]) < 0.05


@pytest.mark.slow
def test_randomisation_is_read_against_the_maps_noise_stability(model, batch):
    """The randomised maps are judged against what invisible noise (sigma 0.01) and a different face
    do to a map, not against zero. Measured on the 112 px weight average shipped before the three-model soup
    (6 FER+ faces; the test passes on the soup): LRP maps
    are far from noise-stable (Spearman 0.51 absolute, 0.18 |signed|); re-initialising classifier, bn2 and
    conv_head keeps 0.61 of the absolute map, more than noise keeps, so that mode fails; it keeps 0.39
    of the |signed| map (95% CI up to 0.65), more than noise does, so that mode fails too (the 112 px
    model before it: 0.65 and 0.55 kept against 0.48 and 0.21; the 96 px model: 0.61 and 0.31 kept, both
    failed). The 64 px model before those passed the |signed| mode: 0.22 kept, CI up to 0.33, against
    0.59 under noise (8 faces)."""
    magnitude, signed = randomisation_check_both(model, batch[:6], "lrp", depth=3)  # one set of maps, judged twice
    for result in (magnitude, signed):
        assert result.repeat_spearman == pytest.approx(1.0)
        stability, last = result.noise_stability.decision, result.cascade[-1].decision
        midpoint = (stability.mean + result.different_faces.decision.mean) / 2
        # the criterion: the randomised maps keep less than noise does and at most half of what
        # sets a face's map apart from another face's
        assert result.passed == (last.ci_high < min(stability.ci_low, midpoint))
        assert stability.mean < 0.85, "LRP is unstable under invisible noise (0.51 / 0.18 measured)"
    assert magnitude.decided_on == "absolute-map" and signed.decided_on == "|signed|"
    assert not magnitude.passed and magnitude.cascade[-1].decision.ci_high >= magnitude.noise_stability.decision.ci_low
    assert json.loads(json.dumps(magnitude.to_dict()))["passed"] is False


def test_bad_settings_and_unsupported_networks_are_clear_errors(model, batch):
    with pytest.raises(InvalidArgument, match="composite"):
        explain(model, batch[:1], "lrp", composite="nope")
    with pytest.raises(InvalidArgument, match="contrast"):
        explain(model, batch[:1], "lrp", contrast="nope")
    with pytest.raises(InvalidArgument, match="reduction"):
        explain(model, batch[:1], "lrp", reduction="nope")
    with pytest.raises(InvalidArgument, match=r"lrp\(\) argument 'batch_size': expected an integer >= 1, got 0"):
        explain(model, batch[:1], "lrp", batch_size=0)
    altered = copy.deepcopy(model)
    altered.module.global_pool = SelectAdaptivePool2d(pool_type="max", flatten=True)
    with pytest.raises(InvalidArgument, match="no rule for .*global_pool.pool"):
        explain(altered, batch[:1], "lrp")
    resnet = FerModel(timm.create_model("resnet18", num_classes=8, pretrained=False), model.architecture,
                      input_size=64)
    with pytest.raises(InvalidArgument, match="EfficientNet and MobileNetV3.*ResNet"):
        explain(resnet, batch[:1], "lrp")
    assert {"epsilon_plus_flat", "gamma_flat", "gamma_split_flat"} <= set(COMPOSITES)


def test_the_tiny_architecture_is_supported(faces):
    tiny = FerModel.from_architecture(TINY_ARCHITECTURE)
    torch.manual_seed(0)
    torch.nn.init.normal_(tiny.module.classifier.weight, std=0.5)
    inputs = tiny.preprocessing.batch(faces[:4])
    attribution = explain(tiny, inputs, "lrp")
    assert attribution.maps.shape == (4, 64, 64) and np.isfinite(attribution.maps).all()
    assert attribution.diagnostics["canonical_logit_error"] < 1e-3
    assert np.median(attribution.diagnostics["conservation_error"]) < 0.05
