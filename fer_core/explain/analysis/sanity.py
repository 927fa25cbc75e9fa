"""Is a saliency method explaining the model? Two checks, each against its own control,
JSON-ready so a dashboard can flag a method that fails:

* model randomisation (Adebayo et al. 2018): re-initialise the network's stages top-down on a
  copy, cascading, with the architecture's own initialisation (timm's TensorFlow-style one for
  EfficientNet / MobileNetV3) and BatchNorm statistics re-estimated on the faces, and measure the
  Spearman rank correlation of each face's map with the trained model's. The correlation is
  judged against two controls measured on the same faces: the maps of two *different* faces
  (what any two maps share, e.g. a centre bias) and *noise stability* (the map of the same face
  plus invisible Gaussian noise, sigma 0.01 in [0, 1] pixel units, on faces whose prediction the
  noise does not change). A method passes when the last step's correlation is well below its
  noise stability: the upper bound of its 95 % bootstrap CI under the lower bound of the
  stability's *and* under the midpoint between the different-faces and the stability means
  (see :data:`RANDOMISATION_CRITERION`): a randomised saliency map that keeps an image's edges
  (Adebayo et al.'s finding) sits between the two controls and fails;
* deletion / insertion (Petsiuk et al. 2018): remove (or insert) pixels in the order of the
  attribution, replacing them with a baseline, and take the area under the target class
  probability curve, beside a random order and a *centre prior* (pixels by distance from the
  crop centre, :func:`~fer_core.explain.base.centre_prior`: a map that ignores the face). A
  method passes when both its deletion and its insertion beat the centre prior (one-sided paired
  Wilcoxon signed-rank test over faces, p < 0.05). Pixels with equal scores (13 % of Grad-CAM's
  pixels are zero) are taken in a seeded random order.

A map without any ranking (constant) has no Spearman correlation: it is NaN, counted per step
(``constant``) and left out of the means; a check with more than :data:`MAX_CONSTANT_SHARE` of
its last step's maps constant fails, as it measures a network whose output no longer depends on
the input rather than the method.

Every forward pass runs in eval mode and leaves the caller's mode and BatchNorm buffers as
they were (:func:`~fer_core.explain.base.eval_mode`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from numbers import Real
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from scipy.stats import bootstrap, spearmanr, wilcoxon
from timm.models._efficientnet_builder import efficientnet_init_weights
from timm.models.efficientnet import EfficientNet
from timm.models.mobilenetv3 import MobileNetV3
from torch import nn

from fer_core.errors import InvalidArgument
from fer_core.explain.base import (BASELINE, POSITIVE_COUNT, Attribution, Target, centre_prior, check_batch, eval_mode,
                                   explain, make_baseline, resolve_targets)
from fer_core.explain.methods.gradcam import stages
from fer_core.models.factory import FerModel
from fer_core.validation import Interval, validate_params

#: Standard deviation of the stability control's Gaussian noise, in [0, 1] pixel units
#: (2.6 grey levels: invisible).
NOISE_SIGMA = 0.01
#: Confidence level of every bootstrap interval here.
CONFIDENCE = 0.95
#: Largest share of constant maps (no ranking) at the last randomisation step for a pass.
MAX_CONSTANT_SHARE = 0.1
#: Significance level of the faithfulness tests against the centre prior.
ALPHA = 0.05
#: The default method for region and faithfulness statistics: the most faithful method that
#: passed both checks on a 64 px B0 shipped before (32 FER+ test faces; on the 96 px model and the 112 px one
#: shipped now it fails faithfulness on insertion: see the README).
STATISTICS_METHOD = "smoothgrad"
#: What "well below its noise stability" means, in words stored with every result.
RANDOMISATION_CRITERION = ("repeatable (Spearman >= 0.99 between two runs), at most {constant:.0%} constant maps at "
                           "the last step, and the upper {confidence:.0%} bootstrap CI of the last step's mean "
                           "{kind} Spearman below both the lower {confidence:.0%} CI of the noise-stability mean and "
                           "the midpoint of the different-faces and noise-stability means (the randomised maps keep "
                           "at most half of what sets a face's own map apart from another face's)")
#: What the faithfulness pass means, in words stored with every result.
FAITHFULNESS_CRITERION = ("deletion area below and insertion area above the centre prior's, each by a one-sided "
                          "paired Wilcoxon signed-rank test over faces at p < {alpha}")


@dataclass(frozen=True)
class Summary:
    """The mean of per-face values with a percentile bootstrap CI, over the ``n`` finite
    values; ``constant`` faces had no value (a constant map: NaN)."""

    mean: float
    ci_low: float
    ci_high: float
    n: int
    constant: int


@dataclass(frozen=True)
class Correlations:
    """Per-face Spearman correlations of two sets of maps: of their absolute values (``abs``,
    as Adebayo et al.), of the signed maps (``signed``), and ``decision``, what a pass is judged
    on (``abs``, or the absolute value of ``signed``, so a sign flip is not a change)."""

    abs: Summary
    signed: Summary
    decision: Summary
    abs_per_face: list[float]
    signed_per_face: list[float]
    decision_per_face: list[float]


@dataclass(frozen=True)
class RandomisationResult:
    """The cascading randomisation check of one method: ``cascade[i]`` compares the trained
    model's maps with those after re-initialising ``layers[: i + 1]``; ``spearman`` is the
    decision mean per step (``spearman_per_face`` per face); ``different_faces`` and
    ``noise_stability`` are the controls (``noise_changed`` faces were left out of the latter:
    the noise changed their prediction). ``passed``: see ``criterion``."""

    method: str
    layers: list[str]
    decided_on: str
    cascade: list[Correlations]
    spearman: list[float]
    spearman_per_face: list[list[float]]
    different_faces: Correlations
    noise_stability: Correlations
    noise_sigma: float
    noise_changed: int
    repeat_spearman: float
    criterion: str
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FaithfulnessResult:
    """Deletion and insertion areas (target probability over the fraction of pixels changed,
    mean over faces) in attribution order, in a random order and in the centre prior's order;
    ``*_win_rate`` is the fraction of faces on which the attribution order beats the control,
    ``*_p_value`` the one-sided Wilcoxon signed-rank p-value of that (paired over faces; NaN for
    one face); ``margin`` the mean of the centre prior's deletion minus the method's and the
    method's insertion minus the centre prior's (higher: more faithful). ``passed``: see
    ``criterion``."""

    method: str
    steps: int
    baseline: str
    deletion_auc: float
    random_deletion_auc: float
    centre_deletion_auc: float
    insertion_auc: float
    random_insertion_auc: float
    centre_insertion_auc: float
    deletion_win_rate: float
    insertion_win_rate: float
    centre_deletion_win_rate: float
    centre_insertion_win_rate: float
    deletion_p_value: float
    insertion_p_value: float
    centre_deletion_p_value: float
    centre_insertion_p_value: float
    margin: float
    deletion_per_face: list[float]
    random_deletion_per_face: list[float]
    centre_deletion_per_face: list[float]
    insertion_per_face: list[float]
    random_insertion_per_face: list[float]
    centre_insertion_per_face: list[float]
    criterion: str
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def randomisation_order(model: FerModel) -> list[str]:
    """The network's parameterised :func:`~fer_core.explain.methods.gradcam.stages` (``classifier``,
    ``conv_head``, ``blocks.5``, ...), top first: in reverse order of execution."""
    root = model.module
    parameterised = {name: module for name, module in stages(root) if any(True for _ in module.parameters())}
    order: list[str] = []
    handles = [module.register_forward_hook(lambda *_, name=name: order.append(name))
               for name, module in parameterised.items()]
    try:
        with torch.no_grad(), eval_mode(root):
            root(torch.zeros(1, 3, model.input_size, model.input_size, device=model.device))
    finally:
        for handle in handles:
            handle.remove()
    return list(reversed(list(dict.fromkeys(order))))


def _reset_parameters(module: nn.Module) -> None:
    for child in module.modules():
        reset = getattr(child, "reset_parameters", None)
        if callable(reset):
            reset()


#: The initialisation each network family is built with (timm's TensorFlow-style one for
#: EfficientNet and MobileNetV3: normal(0, sqrt(2 / fan_out)) convolutions, BatchNorm 1 / 0,
#: uniform classifier); other networks get PyTorch's per-layer defaults.
INITIALISERS: Mapping[type, Callable[[nn.Module], None]] = {
    EfficientNet: efficientnet_init_weights, MobileNetV3: efficientnet_init_weights}


def reinitialise(model: FerModel, stage: str, seed: int) -> None:
    """Draw fresh weights for ``stage`` (a name from :func:`randomisation_order`) from ``seed``
    with the initialisation its network is built with (:data:`INITIALISERS`); its BatchNorm
    statistics are reset (re-estimate them with :func:`reestimate_batch_norms`)."""
    initialise = next((function for kind, function in INITIALISERS.items() if isinstance(model.module, kind)),
                      _reset_parameters)
    module = model.module.get_submodule(stage)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        initialise(module)
    for child in module.modules():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            child.reset_running_stats()
    model.forget_fingerprint()


def reestimate_batch_norms(model: FerModel, stage_names: Sequence[str], faces: torch.Tensor,
                           batch_size: int = 64) -> None:
    """Re-estimate the running statistics of every BatchNorm under ``stage_names`` on ``faces``
    (one pass with only those norms in train mode and ``momentum=None``: a plain average over
    the batches), then leave the network in the mode it was in."""
    norms = [child for name in stage_names for child in model.module.get_submodule(name).modules()
             if isinstance(child, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    with torch.no_grad(), eval_mode(model.module):
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
            norm.train()
        try:
            for chunk in faces.split(batch_size):
                model.module(chunk.to(model.device))
        finally:
            for norm, momentum in zip(norms, momenta):
                norm.momentum = momentum
    model.forget_fingerprint()


def _rank_correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman correlation of two maps; NaN when either is constant (it has no ranking)."""
    a, b = first.ravel(), second.ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def summarise(values: Sequence[float], confidence: float = CONFIDENCE, n_resamples: int = 2000,
              seed: int = 0) -> Summary:
    """:class:`Summary` of per-face ``values`` (NaN: constant maps, counted and left out)."""
    array = np.asarray(values, dtype=np.float64)
    finite = array[np.isfinite(array)]
    constant = int(len(array) - len(finite))
    if len(finite) < 2:
        mean = float(finite[0]) if len(finite) else float("nan")
        return Summary(mean, float("nan"), float("nan"), len(finite), constant)
    if np.ptp(finite) == 0:
        return Summary(float(finite[0]), float(finite[0]), float(finite[0]), len(finite), constant)
    interval = bootstrap((finite,), np.mean, vectorized=True, n_resamples=n_resamples, confidence_level=confidence,
                         method="percentile", random_state=np.random.default_rng(seed)).confidence_interval
    return Summary(float(finite.mean()), float(interval.low), float(interval.high), len(finite), constant)


def _compare(first: np.ndarray, second: np.ndarray, absolute: bool, confidence: float, seed: int) -> Correlations:
    """Correlations of ``first[i]`` with ``second[i]`` (NaN where a pair is missing)."""
    abs_values = [_rank_correlation(np.abs(a), np.abs(b)) for a, b in zip(first, second, strict=True)]
    signed_values = [_rank_correlation(a, b) for a, b in zip(first, second, strict=True)]
    decision = abs_values if absolute else [abs(value) for value in signed_values]
    return Correlations(summarise(abs_values, confidence, seed=seed), summarise(signed_values, confidence, seed=seed),
                        summarise(decision, confidence, seed=seed), abs_values, signed_values, decision)


#: A noise level in [0, 1] pixel units: a number >= 0.
NOISE_LEVEL = Interval(Real, 0, None)
#: A confidence level: a number in (0, 1).
LEVEL = Interval(Real, 0, 1, closed="neither")


@validate_params({"sigma": [NOISE_LEVEL]})
def noisy_faces(model: FerModel, inputs: torch.Tensor, sigma: float = NOISE_SIGMA, seed: int = 0) -> torch.Tensor:
    """``inputs`` (preprocessed) with Gaussian noise of ``sigma`` in [0, 1] pixel units added to
    the pixels (kept in [0, 1]) and normalised again; drawn from ``seed``."""
    mean = torch.tensor(model.mean, dtype=inputs.dtype, device=inputs.device).view(1, 3, 1, 1)
    std = torch.tensor(model.std, dtype=inputs.dtype, device=inputs.device).view(1, 3, 1, 1)
    noise = torch.randn(inputs.shape, generator=torch.Generator().manual_seed(seed)).to(inputs.device, inputs.dtype)
    pixels = (inputs * std + mean + sigma * noise).clamp(0, 1)
    return (pixels - mean) / std


def _predictions(model: FerModel, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), eval_mode(model.module):
        return model.logits(inputs).argmax(dim=1)


class _RandomisationMaps(NamedTuple):
    """The maps a randomisation check judges: the trained model's (``reference``, and ``repeat``,
    computed again), on noisy faces (``noisy``; ``unchanged``: the faces whose prediction the noise
    left as it was), after each cascade step (``cascade``, over ``layers``), and the face pairing of
    the different-faces control (``shuffled[k]`` with ``shuffled[k + 1]``)."""

    layers: list[str]
    reference: np.ndarray
    repeat: np.ndarray
    noisy: np.ndarray
    unchanged: np.ndarray
    shuffled: np.ndarray
    cascade: list[np.ndarray]


def _randomisation_maps(model: FerModel, faces: torch.Tensor, method: str, target: Target, depth: int | None,
                        seed: int, noise_sigma: float, params: Mapping[str, Any]) -> _RandomisationMaps:
    inputs = check_batch(model, faces)
    if inputs.shape[0] < 2:
        raise InvalidArgument("randomisation_check needs at least 2 faces (the different-faces control pairs them)")
    order = randomisation_order(model)
    if depth is not None:
        if depth > len(order):
            raise InvalidArgument(f"depth: expected at most the {len(order)} stages of randomisation_order, "
                                  f"got {depth}")
        order = order[:depth]
    targets = resolve_targets(model, inputs, target).tolist()
    reference = explain(model, inputs, method, targets, **params).maps
    repeat = explain(model, inputs, method, targets, **params).maps
    noisy_inputs = noisy_faces(model, inputs, noise_sigma, seed)
    unchanged = (_predictions(model, noisy_inputs) == _predictions(model, inputs)).cpu().numpy()
    noisy = explain(model, noisy_inputs, method, targets, **params).maps
    shuffled = np.random.default_rng(seed).permutation(len(reference))
    randomised = copy.deepcopy(model)
    cascade = []
    for step, name in enumerate(order):
        reinitialise(randomised, name, seed + step)
        reestimate_batch_norms(randomised, order[: step + 1], inputs)
        cascade.append(explain(randomised, inputs, method, targets, **params).maps)
    return _RandomisationMaps(order, reference, repeat, noisy, unchanged, shuffled, cascade)


def _judge(method: str, maps: _RandomisationMaps, absolute: bool, seed: int, noise_sigma: float, confidence: float,
           max_constant_share: float) -> RandomisationResult:
    """The randomisation check's result on ``maps``, judged on absolute maps or on |signed Spearman|."""
    reference = maps.reference
    cascade = [_compare(reference, step_maps, absolute, confidence, seed) for step_maps in maps.cascade]
    stability = _compare(reference[maps.unchanged], maps.noisy[maps.unchanged], absolute, confidence, seed)
    different = _compare(reference[maps.shuffled], reference[np.roll(maps.shuffled, -1)], absolute, confidence, seed)
    repeat_values = _compare(reference, maps.repeat, absolute, confidence, seed).decision
    last = cascade[-1].decision
    kind = "absolute-map" if absolute else "|signed|"
    midpoint = (different.decision.mean + stability.decision.mean) / 2
    passed = bool(repeat_values.mean >= 0.99 and last.constant <= max_constant_share * len(reference)
                  and last.ci_high < min(stability.decision.ci_low, midpoint))
    return RandomisationResult(
        method, maps.layers, kind, cascade, [step.decision.mean for step in cascade],
        [step.decision_per_face for step in cascade],
        different, stability, float(noise_sigma),
        int((~maps.unchanged).sum()), repeat_values.mean,
        RANDOMISATION_CRITERION.format(constant=max_constant_share, confidence=confidence, kind=kind), passed)


_RANDOMISATION_PARAMETERS = {"depth": [POSITIVE_COUNT, None], "noise_sigma": [NOISE_LEVEL], "confidence": [LEVEL],
                            "max_constant_share": [Interval(Real, 0, 1, closed="left")]}


@validate_params(_RANDOMISATION_PARAMETERS)
def randomisation_check(model: FerModel, faces: torch.Tensor, method: str, target: Target = "predicted",
                        depth: int | None = None, absolute: bool = True, seed: int = 0,
                        noise_sigma: float = NOISE_SIGMA, confidence: float = CONFIDENCE,
                        max_constant_share: float = MAX_CONSTANT_SHARE, **params: Any) -> RandomisationResult:
    """Cascading model-randomisation check of ``method`` on ``faces`` (see the module
    docstring): the ``depth`` top stages of :func:`randomisation_order` (all when None) are
    re-initialised one after another on a deep copy (:func:`reinitialise`, then every
    re-initialised stage's BatchNorm statistics re-estimated on ``faces``), and each face's map
    is rank-correlated with the trained model's. ``absolute`` judges the pass on the maps'
    absolute values (Adebayo et al.), otherwise on ``|Spearman|`` of the signed maps. Targets
    are fixed from the trained model."""
    maps = _randomisation_maps(model, faces, method, target, depth, seed, noise_sigma, params)
    return _judge(method, maps, absolute, seed, noise_sigma, confidence, max_constant_share)


@validate_params(_RANDOMISATION_PARAMETERS)
def randomisation_check_both(model: FerModel, faces: torch.Tensor, method: str, target: Target = "predicted",
                             depth: int | None = None, seed: int = 0, noise_sigma: float = NOISE_SIGMA,
                             confidence: float = CONFIDENCE, max_constant_share: float = MAX_CONSTANT_SHARE,
                             **params: Any) -> tuple[RandomisationResult, RandomisationResult]:
    """:func:`randomisation_check` judged both ways, on the absolute maps and on ``|Spearman|`` of
    the signed maps, from one set of maps: half the attributions of two calls, the same results."""
    maps = _randomisation_maps(model, faces, method, target, depth, seed, noise_sigma, params)
    return (_judge(method, maps, True, seed, noise_sigma, confidence, max_constant_share),
            _judge(method, maps, False, seed, noise_sigma, confidence, max_constant_share))


def _ranks(scores: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``(N, P)`` rank of each pixel (0 = first), highest score first; equal scores in a random
    order drawn from ``generator``."""
    shuffle = torch.rand(scores.shape, generator=generator).argsort(dim=1).to(scores.device)
    order = shuffle.gather(1, scores.gather(1, shuffle).argsort(dim=1, descending=True, stable=True))
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order).contiguous()
    return torch.empty_like(order).scatter_(1, order, positions)


def _probability_curves(model: FerModel, inputs: torch.Tensor, replacement: torch.Tensor, targets: torch.Tensor,
                        ranks: torch.Tensor, steps: int, batch_size: int) -> np.ndarray:
    """``(N, steps + 1)`` target probabilities as the pixels of rank < k/steps * H*W are taken
    from ``replacement`` (``ranks``: ``(N, H*W)``, 0 = first); faces go through the network a
    few at a time, ``batch_size`` images per pass at most."""
    count, _, height, width = inputs.shape
    thresholds = torch.round(torch.linspace(0, height * width, steps + 1, device=inputs.device))
    per_pass = max(1, batch_size // (steps + 1))
    curves = np.empty((count, steps + 1), dtype=np.float64)
    with torch.no_grad(), eval_mode(model.module):
        for start in range(0, count, per_pass):
            faces = slice(start, min(start + per_pass, count))
            masks = (ranks[faces, None, :] < thresholds[None, :, None]).view(-1, steps + 1, 1, height, width).float()
            images = inputs[faces, None] * (1 - masks) + replacement[faces, None] * masks
            chosen = targets[faces].repeat_interleave(steps + 1)
            probabilities = model.probabilities(images.flatten(0, 1)).gather(1, chosen[:, None])[:, 0]
            curves[faces] = probabilities.view(-1, steps + 1).cpu().numpy()
    return curves


@validate_params({"steps": [POSITIVE_COUNT], "baseline": BASELINE, "batch_size": [POSITIVE_COUNT]})
def deletion_insertion(model: FerModel, faces: torch.Tensor, attribution: Attribution, steps: int = 20,
                       baseline: str | torch.Tensor = "blurred", seed: int = 0, mean_face: torch.Tensor | None = None,
                       blur_sigma: float | None = None, batch_size: int = 256, alpha: float = ALPHA
                       ) -> FaithfulnessResult:
    """Deletion and insertion areas of ``attribution`` (computed on ``faces``) over ``steps``
    equal steps of pixels, changed pixels taken from ``baseline`` (see
    :func:`~fer_core.explain.make_baseline`), against a random pixel order and the centre
    prior's order (ties in every order broken at random, drawn from ``seed``)."""
    inputs = check_batch(model, faces)
    if attribution.maps.shape != (inputs.shape[0], *inputs.shape[2:]):
        raise InvalidArgument(f"attribution maps {attribution.maps.shape} do not match faces {tuple(inputs.shape)}")
    targets = torch.tensor(attribution.targets, device=inputs.device)
    replacement = make_baseline(model, inputs, baseline, mean_face=mean_face, blur_sigma=blur_sigma)
    flat = torch.from_numpy(attribution.maps).to(inputs.device).flatten(1)
    generator = torch.Generator().manual_seed(seed)
    prior = torch.from_numpy(centre_prior(inputs.shape[-1])).to(inputs.device).flatten()[None].expand_as(flat)
    orders = {name: _ranks(scores, generator) for name, scores in
              (("attribution", flat), ("random", torch.zeros_like(flat)), ("centre", prior.contiguous()))}

    def areas(start: torch.Tensor, end: torch.Tensor, ranks: torch.Tensor) -> np.ndarray:
        curves = _probability_curves(model, start, end, targets, ranks, steps, batch_size)
        return np.trapezoid(curves, dx=1.0 / steps, axis=1)

    deletion = {name: areas(inputs, replacement, ranks) for name, ranks in orders.items()}
    insertion = {name: areas(replacement, inputs, ranks) for name, ranks in orders.items()}
    mine_d, mine_i = deletion["attribution"], insertion["attribution"]
    centre_d_p = _paired_p_value(mine_d, deletion["centre"], "less")
    centre_i_p = _paired_p_value(mine_i, insertion["centre"], "greater")
    margin = float(np.mean([deletion["centre"].mean() - mine_d.mean(), mine_i.mean() - insertion["centre"].mean()]))
    name = baseline if isinstance(baseline, str) else "tensor"
    return FaithfulnessResult(
        attribution.method, steps, name, float(mine_d.mean()), float(deletion["random"].mean()),
        float(deletion["centre"].mean()), float(mine_i.mean()), float(insertion["random"].mean()),
        float(insertion["centre"].mean()),
        float(np.mean(mine_d < deletion["random"])), float(np.mean(mine_i > insertion["random"])),
        float(np.mean(mine_d < deletion["centre"])), float(np.mean(mine_i > insertion["centre"])),
        _paired_p_value(mine_d, deletion["random"], "less"), _paired_p_value(mine_i, insertion["random"], "greater"),
        centre_d_p, centre_i_p, margin,
        mine_d.tolist(), deletion["random"].tolist(), deletion["centre"].tolist(),
        mine_i.tolist(), insertion["random"].tolist(), insertion["centre"].tolist(),
        FAITHFULNESS_CRITERION.format(alpha=alpha), passed=bool(centre_d_p < alpha and centre_i_p < alpha))


def _paired_p_value(areas: np.ndarray, control_areas: np.ndarray, alternative: str) -> float:
    """One-sided Wilcoxon signed-rank p-value that ``areas`` are ``alternative`` than
    ``control_areas`` (NaN for one face or no difference at all)."""
    if len(areas) < 2 or np.all(areas == control_areas):
        return float("nan")
    return float(wilcoxon(areas, control_areas, alternative=alternative).pvalue)


def sanity_report(model: FerModel, faces: torch.Tensor, methods: Sequence[str], target: Target = "predicted",
                  params: Mapping[str, Mapping[str, Any]] | None = None, depth: int | None = None,
                  steps: int = 20, seed: int = 0, baseline: str | torch.Tensor = "blurred",
                  mean_face: torch.Tensor | None = None, blur_sigma: float | None = None) -> dict[str, dict[str, Any]]:
    """Both checks for each of ``methods`` (``params[method]`` are its settings; deleted
    pixels are taken from ``baseline``, see :func:`deletion_insertion`), JSON-ready:
    ``{method: {"faces_per_second", "params", "diagnostics", "randomisation", "faithfulness",
    "passed"}}``."""
    params = params or {}
    inputs = check_batch(model, faces)
    targets = resolve_targets(model, inputs, target).tolist()
    report: dict[str, dict[str, Any]] = {}
    for method in methods:
        settings = dict(params.get(method, {}))
        started = time.perf_counter()
        attribution = explain(model, inputs, method, targets, **settings)
        seconds = time.perf_counter() - started
        randomisation = randomisation_check(model, inputs, method, targets, depth=depth, seed=seed, **settings)
        faithfulness = deletion_insertion(model, inputs, attribution, steps=steps, baseline=baseline, seed=seed,
                                          mean_face=mean_face, blur_sigma=blur_sigma)
        described = attribution.to_dict()
        report[method] = {"faces_per_second": inputs.shape[0] / seconds, "params": described["params"],
                          "diagnostics": described["diagnostics"],
                          "randomisation": randomisation.to_dict(), "faithfulness": faithfulness.to_dict(),
                          "passed": randomisation.passed and faithfulness.passed}
    return report


def most_faithful(report: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The method to use for region and faithfulness statistics from a :func:`sanity_report`
    (or stored quality): the highest faithfulness ``margin`` over the centre prior among the
    methods that passed both checks; if none did, among those that passed faithfulness, and
    failing that the highest margin of all, flagged. ``{"method", "passed", "note", "ranking"}``
    (``ranking``: every method, most faithful first)."""
    if not report:
        raise InvalidArgument("most_faithful: no methods in the report; run sanity_report first")
    ranking = sorted(report, key=lambda method: report[method]["faithfulness"]["margin"], reverse=True)
    for note, eligible in (("passed both checks", lambda m: report[m]["passed"]),
                           ("passed faithfulness but not randomisation", lambda m: report[m]["faithfulness"]["passed"]),
                           ("no method passed: the most faithful by margin, flagged", lambda m: True)):
        chosen = [method for method in ranking if eligible(method)]
        if chosen:
            return {"method": chosen[0], "passed": bool(report[chosen[0]]["passed"]), "note": note,
                    "ranking": ranking}
    raise AssertionError("unreachable: the last rule takes every method")


def statistics_method(quality: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """:func:`most_faithful` of the methods in ``quality`` (stored results, see
    :func:`~fer_core.explain.load_quality`) checked with the centre prior; without any,
    :data:`STATISTICS_METHOD` (``passed`` None)."""
    checked = {method: entry for method, entry in quality.items() if "margin" in entry.get("faithfulness", {})}
    if not checked:
        return {"method": STATISTICS_METHOD, "passed": None, "ranking": [],
                "note": "measured on the shipped model; no check stored for this model"}
    return most_faithful(checked)


def randomisation_rows(report: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per method and cascade step: absolute and signed Spearman (mean and CI), beside
    the method's different-faces and noise-stability controls (flat, JSON-ready)."""
    rows = []
    for method, entry in report.items():
        check = entry["randomisation"]
        steps = [(f"+{layer}", correlations) for layer, correlations in zip(check["layers"], check["cascade"])]
        controls = [("different faces", check["different_faces"]), ("noise stability", check["noise_stability"])]
        for step, correlations in [*steps, *controls]:
            rows.append({"method": method, "step": step,
                         **{f"{kind}_{field}": correlations[kind][field] for kind in ("abs", "signed", "decision")
                            for field in ("mean", "ci_low", "ci_high")},
                         "n": correlations["decision"]["n"], "constant": correlations["decision"]["constant"],
                         "passed": check["passed"]})
    return rows


def faithfulness_rows(report: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per method: deletion and insertion areas of the method, a random order and the
    centre prior, the p-values against the centre prior and the margin (flat, JSON-ready)."""
    fields = ("deletion_auc", "random_deletion_auc", "centre_deletion_auc", "centre_deletion_p_value",
              "insertion_auc", "random_insertion_auc", "centre_insertion_auc", "centre_insertion_p_value", "margin",
              "passed")
    return [{"method": method, **{field: entry["faithfulness"][field] for field in fields}}
            for method, entry in report.items()]
