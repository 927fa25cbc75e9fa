"""Occlusion (Zeiler and Fergus): the drop of the target logit when a window is grayed out."""

from __future__ import annotations

import torch
from captum.attr import Occlusion

from fer_core.errors import InvalidArgument
from fer_core.explain.base import (BASELINE, POSITIVE_COUNT, POSITIVE_PIXELS, make_baseline, reduce_channels,
                                   register_cell_size, register_method)
from fer_core.models.factory import FerModel
from fer_core.validation import validate_params


@register_method("occlusion")
@validate_params({"window": [POSITIVE_COUNT], "stride": [POSITIVE_COUNT], "baseline": BASELINE,
                  "blur_sigma": [POSITIVE_PIXELS, None], "perturbations_per_eval": [POSITIVE_COUNT]})
def occlusion(model: FerModel, inputs: torch.Tensor, targets: torch.Tensor, window: int = 8, stride: int = 4,
              baseline: str | torch.Tensor = "blurred", mean_face: torch.Tensor | None = None,
              blur_sigma: float | None = None, perturbations_per_eval: int = 16) -> torch.Tensor:
    """Slide a ``window`` x ``window`` patch by ``stride`` pixels, replacing the face under it
    with ``baseline`` (see :func:`make_baseline`); each pixel gets the mean logit drop of the
    windows covering it (positive: the region supports the target)."""
    side = min(inputs.shape[-2:])
    for name, value in (("window", window), ("stride", stride)):
        if value > side:
            raise InvalidArgument(f"occlusion {name}: expected at most the face's side ({side} pixels), got {value}")
    baselines = make_baseline(model, inputs, baseline, mean_face=mean_face, blur_sigma=blur_sigma)
    attributions = Occlusion(model.module).attribute(
        inputs, sliding_window_shapes=(3, window, window), strides=(3, stride, stride), baselines=baselines,
        target=targets, perturbations_per_eval=perturbations_per_eval)
    # The window spans the three channels, so every channel holds the same value.
    return reduce_channels(attributions, "signed") / 3


@register_cell_size("occlusion")
def occlusion_cell_size(model: FerModel, window: int = 8, **_: object) -> float:
    """The occluding window: detail inside one window is averaged away."""
    return float(window)
