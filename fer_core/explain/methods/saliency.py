"""Vanilla gradients (Simonyan et al.): the gradient of the target logit w.r.t. the pixels."""

from __future__ import annotations

import torch
from captum.attr import Saliency

from fer_core.explain.base import REDUCTION, reduce_channels, register_method
from fer_core.models.factory import FerModel
from fer_core.validation import validate_params


@register_method("saliency")
@validate_params({"reduction": REDUCTION})
def saliency(model: FerModel, inputs: torch.Tensor, targets: torch.Tensor, reduction: str = "abs") -> torch.Tensor:
    """Gradient maps, channels reduced by ``reduction`` (``"abs"`` or ``"signed"``)."""
    gradients = Saliency(model.module).attribute(inputs.requires_grad_(True), target=targets, abs=False)
    return reduce_channels(gradients, reduction)
