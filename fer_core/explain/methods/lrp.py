"""Layer-wise relevance propagation (Bach et al. 2015) on timm EfficientNet / MobileNetV3, with
zennit rules on a canonical copy of the network (see :mod:`fer_core.explain.methods.lrp_canonizers`).

Two choices make a variant, each a registry:

* ``composite`` (:data:`COMPOSITES`): which rule each layer gets. Biases are left out of every
  rule, so relevance is conserved: a map sums to the relevance put on the logits. The default,
  ``gamma_split_flat``, uses :class:`BiasFreeGamma` (small gamma on the top stages): z+ and
  alpha-beta lose relevance at bias-driven units and collapse to one map whatever the class or
  the top layers (only its sign follows them); LRP-0/epsilon without biases diverges.
* ``contrast`` (:data:`CONTRASTS`): the relevance put on the logits. ``"none"`` explains the
  target logit; ``"mean"`` the target logit minus the mean of the others (contrastive LRP);
  ``"softmax"`` the gradient of the target probability with respect to the logits (SGLRP,
  Iwana et al. 2019), which sums to zero.

Every map carries its conservation error (:func:`conservation_error`) in
``Attribution.diagnostics``. Sensitivity to the model is checked separately, with
:func:`fer_core.explain.randomisation_check`.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping

import torch
from torch import nn
from zennit.core import Composite, Hook
from zennit.layer import Sum
from zennit.rules import AlphaBeta, Epsilon, Flat, Gamma, NoMod, Norm, Pass, ZPlus
from zennit.types import Activation, AvgPool, Convolution

from fer_core.explain.base import POSITIVE_COUNT, REDUCTION, MethodResult, reduce_channels, register_method
from fer_core.explain.methods.lrp_canonizers import ConstantGate, canonical_copy
from fer_core.models.factory import FerModel
from fer_core.validation import StrOptions, validate_params

RuleFactory = Callable[[], Hook]


@dataclass(frozen=True)
class CompositeSpec:
    """Rules by depth: ``first`` for the first convolution, ``upper`` for the convolutions of
    the top ``upper_stages`` stages (``blocks.*`` stages, then ``conv_head``), ``lower`` for the
    other convolutions, ``linear`` for the classifier; activations, squeeze-excite gates and
    Flatten pass relevance through, residual sums and average pooling split it in proportion."""

    first: RuleFactory
    lower: RuleFactory
    upper: RuleFactory
    linear: RuleFactory
    upper_stages: int = 0
    description: str = ""


NO_BIAS = ["bias"]
STABILIZER = 1e-6
#: Largest median conservation error for which a batch of maps counts as conserved.
CONSERVATION_TOLERANCE = 0.05


def _epsilon() -> Hook:
    return Epsilon(epsilon=STABILIZER, zero_params=NO_BIAS)


def _zplus() -> Hook:
    return ZPlus(stabilizer=STABILIZER, zero_params=NO_BIAS)


class BiasFreeGamma(Gamma):
    """zennit's generalised gamma rule with the bias left out everywhere: also from the output
    whose sign picks the positive or the negative parts, so that each denominator has the sign
    of its numerators (zennit's keeps the bias there, and divides by near-zero sums)."""

    def __init__(self, gamma: float = 0.25, stabilizer: float = STABILIZER) -> None:
        super().__init__(gamma=gamma, stabilizer=stabilizer, zero_params=NO_BIAS)
        self.param_modifiers = (*self.param_modifiers[:4], NoMod(zero_params=NO_BIAS))


def _gamma(gamma: float = 0.25) -> Callable[[], Hook]:
    return lambda: BiasFreeGamma(gamma=gamma)


def _alpha2beta1() -> Hook:
    return AlphaBeta(alpha=2.0, beta=1.0, stabilizer=STABILIZER, zero_params=NO_BIAS)


def _flat() -> Hook:
    return Flat(stabilizer=STABILIZER)


_COMPOSITES: dict[str, CompositeSpec] = {
    "epsilon_plus_flat": CompositeSpec(_flat, _zplus, _zplus, _epsilon,
                                       description="z+ in every convolution, epsilon classifier, flat first layer"),
    "epsilon_alpha2beta1_flat": CompositeSpec(_flat, _alpha2beta1, _alpha2beta1, _epsilon,
                                              description="alpha2-beta1 in every convolution, epsilon classifier, "
                                                          "flat first layer"),
    "gamma_flat": CompositeSpec(_flat, _gamma(0.25), _gamma(0.25), _epsilon,
                                description="gamma=0.25 in every convolution, epsilon classifier, flat first layer"),
    "gamma_low_flat": CompositeSpec(_flat, _gamma(0.03), _gamma(0.03), _epsilon,
                                    description="gamma=0.03 in every convolution, epsilon classifier, "
                                                "flat first layer"),
    "gamma_split_flat": CompositeSpec(_flat, _gamma(0.25), _gamma(0.01), _epsilon, upper_stages=4,
                                      description="gamma=0.01 in the top four stages, gamma=0.25 below, "
                                                  "epsilon classifier, flat first layer"),
}
#: Rule assignments LRP accepts as ``composite``, by name.
COMPOSITES: Mapping[str, CompositeSpec] = MappingProxyType(_COMPOSITES)


def _plain(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(logits).scatter_(1, targets[:, None], logits.gather(1, targets[:, None]))


def _mean_contrast(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    chosen = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, targets[:, None], True)
    return torch.where(chosen, logits, -logits / (logits.shape[1] - 1))


def _softmax_gradient(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    probabilities = logits.softmax(dim=1)
    chosen = torch.zeros_like(logits).scatter_(1, targets[:, None], 1.0)
    return probabilities.gather(1, targets[:, None]) * (chosen - probabilities)


_CONTRASTS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "none": _plain, "mean": _mean_contrast, "softmax": _softmax_gradient,
}
#: Relevance put on the ``(N, K)`` logits for ``(N,)`` targets, by name.
CONTRASTS: Mapping[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = MappingProxyType(_CONTRASTS)


class _RuleMap(Composite):
    """A zennit composite assigning ``spec``'s rules by module name and type on a canonical network."""

    def __init__(self, spec: CompositeSpec, upper_prefixes: tuple[str, ...]) -> None:
        self.spec = spec
        self.upper_prefixes = upper_prefixes
        self.gate_prefixes: list[str] = []
        super().__init__(module_map=self._rule)

    def _rule(self, ctx: dict, name: str, module: nn.Module) -> Hook | None:
        if any(name.startswith(prefix) for prefix in self.gate_prefixes):
            return None
        if isinstance(module, ConstantGate):
            self.gate_prefixes.append(f"{name}.")
            return Pass()
        if isinstance(module, Activation):
            return Pass()
        if isinstance(module, (Sum, AvgPool)):
            return Norm(stabilizer=STABILIZER)
        if isinstance(module, nn.Linear):
            return self.spec.linear()
        if isinstance(module, Convolution):
            if not ctx.get("first_seen"):
                ctx["first_seen"] = True
                return self.spec.first()
            upper = any(name == prefix or name.startswith(f"{prefix}.") for prefix in self.upper_prefixes)
            return self.spec.upper() if upper else self.spec.lower()
        return None


def _upper_prefixes(network: nn.Module, stages: int) -> tuple[str, ...]:
    """Names of the top ``stages`` stages: ``conv_head`` then ``blocks.K``, ``blocks.K-1``, ..."""
    if stages == 0:
        return ()
    blocks = getattr(network, "blocks", None)
    names = [f"blocks.{index}" for index in range(len(blocks))] if isinstance(blocks, nn.Sequential) else []
    if isinstance(getattr(network, "conv_head", None), nn.Module):
        names.append("conv_head")
    return tuple(reversed(names))[:stages]


def conservation_error(relevance_sums: torch.Tensor, output_relevance: torch.Tensor) -> torch.Tensor:
    """``|sum of input relevance - sum of output relevance| / sum of |output relevance|`` per face:
    for plain LRP, the error relative to the target logit."""
    total = output_relevance.abs().sum(dim=1).clamp_min(torch.finfo(output_relevance.dtype).tiny)
    return (relevance_sums - output_relevance.sum(dim=1)).abs() / total


@register_method("lrp")
@validate_params({"composite": [StrOptions(COMPOSITES)], "contrast": [StrOptions(CONTRASTS)],
                  "reduction": REDUCTION, "batch_size": [POSITIVE_COUNT]})
def lrp(model: FerModel, inputs: torch.Tensor, targets: torch.Tensor, composite: str = "gamma_split_flat",
        contrast: str = "none", reduction: str = "signed", batch_size: int = 32) -> MethodResult:
    """LRP maps with ``composite``'s rules (see :data:`COMPOSITES`) from the ``contrast``
    relevance on the logits (see :data:`CONTRASTS`), channels reduced by ``reduction``,
    ``batch_size`` faces per pass. Diagnostics per face: ``conservation_error``,
    ``relevance_sum`` (of the signed map), ``explained_score`` (relevance put on the logits);
    for the batch: ``conserved`` (median error within :data:`CONSERVATION_TOLERANCE`) and
    ``canonical_logit_error``, the largest logit difference of the rewritten network."""
    spec, start = COMPOSITES[composite], CONTRASTS[contrast]
    network = canonical_copy(model.module, inputs.shape[-1])
    rules = _RuleMap(spec, _upper_prefixes(network, spec.upper_stages))
    maps, sums, scores, errors, logit_error = [], [], [], [], 0.0
    with rules.context(network) as hooked, torch.enable_grad():
        for chunk, chunk_targets in zip(inputs.split(batch_size), targets.split(batch_size)):
            chunk = chunk.clone().requires_grad_(True)
            logits = hooked(chunk)
            output_relevance = start(logits.detach(), chunk_targets)
            (relevance,) = torch.autograd.grad(logits, chunk, grad_outputs=output_relevance)
            with torch.no_grad():
                logit_error = max(logit_error, float((logits - model.module(chunk)).abs().max()))
            relevance_sums = relevance.sum(dim=(1, 2, 3))
            maps.append(reduce_channels(relevance, reduction).detach())
            sums.append(relevance_sums.detach())
            scores.append(output_relevance.sum(dim=1))
            errors.append(conservation_error(relevance_sums.detach(), output_relevance))
    conservation = torch.cat(errors)
    median = conservation.quantile(0.5)  # the median; torch's median() of an even count is the lower middle value
    diagnostics = {"conservation_error": conservation.tolist(), "conserved": bool(median <= CONSERVATION_TOLERANCE),
                   "relevance_sum": torch.cat(sums).tolist(), "explained_score": torch.cat(scores).tolist(),
                   "canonical_logit_error": logit_error}
    return MethodResult(torch.cat(maps), diagnostics)
