"""Is a saliency method explaining the model? Two checks, JSON-ready so a dashboard can flag
a method that fails:

* model randomisation (Adebayo et al. 2018): re-initialise the network's stages top-down
  on a copy, cascading, and measure the Spearman rank correlation of the maps with the
  trained model's; a method that explains the model gives low correlations;
* deletion / insertion (Petsiuk et al. 2018): remove (or insert) pixels in the order of the
  attribution, replacing them with a baseline, and take the area under the target class
  probability curve; a faithful map beats a random order (lower deletion, higher insertion
  area), tested per face with a one-sided Wilcoxon signed-rank test.

Measured with the shipped B0 (64 px) on 24-32 FER+ test faces, blurred replacement: Grad-CAM
on its default layer (``bn2``, a 2 x 2 map at 64 px) does not beat the random order (deletion
area 0.44-0.47 vs 0.41-0.44 on three samples of faces); on ``blocks.3`` (4 x 4, stride 16) it
does (0.33-0.38 vs 0.41-0.44, p 0.001-0.1). Saliency, integrated gradients and occlusion beat
it clearly (deletion 0.13-0.33 vs 0.41). A random order over 4 or 8 px patches instead of pixels
changed the random areas by less than 0.01.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from scipy.stats import spearmanr, wilcoxon

from fer_core.errors import ConfigError
from fer_core.explain.base import Attribution, Target, check_batch, explain, make_baseline, resolve_targets
from fer_core.explain.gradcam import stages
from fer_core.models.factory import FerModel


@dataclass(frozen=True)
class RandomisationResult:
    """Spearman correlations of the maps with the trained model's: ``repeat_spearman`` for
    a second run of the same model (should be 1), ``spearman[i]`` (mean over faces) after
    re-initialising ``layers[: i + 1]``. ``passed``: repeatable, and the fully cascaded
    correlation is below ``threshold``."""

    method: str
    layers: list[str]
    spearman: list[float]
    spearman_per_face: list[list[float]]
    repeat_spearman: float
    threshold: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FaithfulnessResult:
    """Deletion and insertion areas (target probability over the fraction of pixels changed,
    mean over faces) in attribution order and in a random order; ``*_win_rate`` is the
    fraction of faces on which the attribution order beats the random one, ``*_p_value`` the
    one-sided Wilcoxon signed-rank p-value of that (paired over faces; NaN for one face).
    ``passed``: the mean area beats the random order's, in deletion and in insertion."""

    method: str
    steps: int
    baseline: str
    deletion_auc: float
    random_deletion_auc: float
    insertion_auc: float
    random_insertion_auc: float
    deletion_win_rate: float
    insertion_win_rate: float
    deletion_p_value: float
    insertion_p_value: float
    deletion_per_face: list[float]
    random_deletion_per_face: list[float]
    insertion_per_face: list[float]
    random_insertion_per_face: list[float]
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def randomisation_order(model: FerModel) -> list[str]:
    """The network's parameterised :func:`~fer_core.explain.gradcam.stages` (``classifier``,
    ``conv_head``, ``blocks.5``, ...), top first: in reverse order of execution."""
    root = model.module
    parameterised = {name: module for name, module in stages(root) if any(True for _ in module.parameters())}
    order: list[str] = []
    handles = [module.register_forward_hook(lambda *_, name=name: order.append(name))
               for name, module in parameterised.items()]
    try:
        with torch.no_grad():
            root(torch.zeros(1, 3, model.input_size, model.input_size, device=model.device))
    finally:
        for handle in handles:
            handle.remove()
    return list(reversed(list(dict.fromkeys(order))))


def reinitialise(module: nn.Module, seed: int) -> None:
    """Reset every parameter (and BatchNorm statistic) under ``module`` to a fresh random
    initialisation drawn from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for child in module.modules():
            reset = getattr(child, "reset_parameters", None)
            if callable(reset):
                reset()


def _rank_correlation(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman correlation of two maps; for a constant map (no ranking), 1 if both maps are
    the same and 0 otherwise."""
    a, b = first.ravel(), second.ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(spearmanr(a, b).statistic)


def _correlations(reference: np.ndarray, maps: np.ndarray, absolute: bool) -> list[float]:
    if absolute:
        reference, maps = np.abs(reference), np.abs(maps)
    return [_rank_correlation(r, m) for r, m in zip(reference, maps, strict=True)]


def randomisation_check(model: FerModel, faces: torch.Tensor, method: str, target: Target = "predicted",
                        depth: int | None = None, threshold: float = 0.5, absolute: bool = True, seed: int = 0,
                        **params: Any) -> RandomisationResult:
    """Cascading model-randomisation check of ``method`` on ``faces``: the ``depth`` top
    stages of :func:`randomisation_order` (all when None) are re-initialised one after
    another on a deep copy, and each face's map is rank-correlated with the trained model's
    (``absolute`` values, as Adebayo et al.). Targets are fixed from the trained model."""
    inputs = check_batch(model, faces)
    targets = resolve_targets(model, inputs, target).tolist()
    reference = explain(model, inputs, method, targets, **params)
    repeat = explain(model, inputs, method, targets, **params)
    order = randomisation_order(model)
    if depth is not None:
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= len(order):
            raise ConfigError(f"depth: expected an integer in [1, {len(order)}], got {depth!r}")
        order = order[:depth]
    randomised = copy.deepcopy(model)
    per_face: list[list[float]] = []
    for step, name in enumerate(order):
        reinitialise(randomised.module.get_submodule(name), seed + step)
        randomised.forget_fingerprint()
        randomised.module.eval()
        maps = explain(randomised, inputs, method, targets, **params).maps
        per_face.append(_correlations(reference.maps, maps, absolute))
    means = [float(np.mean(values)) for values in per_face]
    repeat_mean = float(np.mean(_correlations(reference.maps, repeat.maps, absolute)))
    return RandomisationResult(method, order, means, per_face, repeat_mean, threshold,
                               passed=bool(repeat_mean >= 0.99 and means[-1] < threshold))


def _probability_curves(model: FerModel, inputs: torch.Tensor, replacement: torch.Tensor, targets: torch.Tensor,
                        ranks: torch.Tensor, steps: int, batch_size: int) -> np.ndarray:
    """``(N, steps + 1)`` target probabilities as the pixels of rank < k/steps * H*W are taken
    from ``replacement`` (``ranks``: ``(N, H*W)``, 0 = first)."""
    count, _, height, width = inputs.shape
    thresholds = torch.round(torch.linspace(0, height * width, steps + 1, device=inputs.device))
    curves = np.empty((count, steps + 1), dtype=np.float64)
    for index in range(count):
        masks = (ranks[index][None, :] < thresholds[:, None]).view(steps + 1, 1, height, width).float()
        images = inputs[index] * (1 - masks) + replacement[index] * masks
        with torch.no_grad():
            probabilities = torch.cat([model.probabilities(chunk)[:, targets[index]]
                                       for chunk in images.split(batch_size)])
        curves[index] = probabilities.cpu().numpy()
    return curves


def deletion_insertion(model: FerModel, faces: torch.Tensor, attribution: Attribution, steps: int = 20,
                       baseline: str | torch.Tensor = "blurred", seed: int = 0, mean_face: torch.Tensor | None = None,
                       blur_sigma: float | None = None, batch_size: int = 256) -> FaithfulnessResult:
    """Deletion and insertion areas of ``attribution`` (computed on ``faces``) over ``steps``
    equal steps of pixels, changed pixels taken from ``baseline`` (see
    :func:`~fer_core.explain.make_baseline`), against a random pixel order drawn from ``seed``."""
    inputs = check_batch(model, faces)
    if attribution.maps.shape != (inputs.shape[0], *inputs.shape[2:]):
        raise ConfigError(f"attribution maps {attribution.maps.shape} do not match faces {tuple(inputs.shape)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps: expected a positive integer, got {steps!r}")
    targets = torch.tensor(attribution.targets, device=inputs.device)
    replacement = make_baseline(model, inputs, baseline, mean_face=mean_face, blur_sigma=blur_sigma)
    flat = torch.from_numpy(attribution.maps).to(inputs.device).flatten(1)
    generator = torch.Generator().manual_seed(seed)
    random_scores = torch.rand(flat.shape, generator=generator).to(inputs.device)

    def ranks_of(scores: torch.Tensor) -> torch.Tensor:
        order = scores.argsort(dim=1, descending=True)
        positions = torch.arange(order.shape[1], device=order.device).expand_as(order).contiguous()
        return torch.empty_like(order).scatter_(1, order, positions)

    def areas(start: torch.Tensor, end: torch.Tensor, ranks: torch.Tensor) -> np.ndarray:
        curves = _probability_curves(model, start, end, targets, ranks, steps, batch_size)
        return np.trapezoid(curves, dx=1.0 / steps, axis=1)

    attributed, shuffled = ranks_of(flat), ranks_of(random_scores)
    deletion, random_deletion = areas(inputs, replacement, attributed), areas(inputs, replacement, shuffled)
    insertion, random_insertion = areas(replacement, inputs, attributed), areas(replacement, inputs, shuffled)
    name = baseline if isinstance(baseline, str) else "tensor"
    return FaithfulnessResult(
        attribution.method, steps, name, float(deletion.mean()), float(random_deletion.mean()),
        float(insertion.mean()), float(random_insertion.mean()),
        float(np.mean(deletion < random_deletion)), float(np.mean(insertion > random_insertion)),
        _paired_p_value(deletion, random_deletion, "less"), _paired_p_value(insertion, random_insertion, "greater"),
        deletion.tolist(), random_deletion.tolist(), insertion.tolist(), random_insertion.tolist(),
        passed=bool(deletion.mean() < random_deletion.mean() and insertion.mean() > random_insertion.mean()))


def _paired_p_value(areas: np.ndarray, random_areas: np.ndarray, alternative: str) -> float:
    """One-sided Wilcoxon signed-rank p-value that ``areas`` are ``alternative`` than ``random_areas``."""
    if len(areas) < 2 or np.all(areas == random_areas):
        return float("nan")
    return float(wilcoxon(areas, random_areas, alternative=alternative).pvalue)


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
