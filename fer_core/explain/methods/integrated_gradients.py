"""Integrated Gradients (Sundararajan et al.) from a black, blurred or mean-face baseline."""

from __future__ import annotations

import torch
from captum.attr import IntegratedGradients

from fer_core.explain.base import (BASELINE, POSITIVE_COUNT, POSITIVE_PIXELS, REDUCTION, make_baseline,
                                   reduce_channels, register_method)
from fer_core.models.factory import FerModel
from fer_core.validation import validate_params


@register_method("integrated_gradients")
@validate_params({"baseline": BASELINE, "n_steps": [POSITIVE_COUNT], "internal_batch_size": [POSITIVE_COUNT, None],
                  "blur_sigma": [POSITIVE_PIXELS, None], "reduction": REDUCTION})
def integrated_gradients(model: FerModel, inputs: torch.Tensor, targets: torch.Tensor,
                         baseline: str | torch.Tensor = "blurred", n_steps: int = 32,
                         internal_batch_size: int | None = 128, mean_face: torch.Tensor | None = None,
                         blur_sigma: float | None = None, reduction: str = "signed") -> torch.Tensor:
    """Path integral of the gradients from ``baseline`` (see :func:`make_baseline`) to each
    face over ``n_steps`` Gauss-Legendre points, ``internal_batch_size`` points per forward
    pass. With ``reduction="signed"`` a map sums to about logit(face) - logit(baseline)."""
    baselines = make_baseline(model, inputs, baseline, mean_face=mean_face, blur_sigma=blur_sigma)
    attributions = IntegratedGradients(model.module).attribute(
        inputs, baselines=baselines, target=targets, n_steps=n_steps, internal_batch_size=internal_batch_size)
    return reduce_channels(attributions, reduction)
