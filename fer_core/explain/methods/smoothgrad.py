"""SmoothGrad (Smilkov et al.): gradients averaged over noisy copies (Captum's NoiseTunnel)."""

from __future__ import annotations

import torch
from captum.attr import NoiseTunnel, Saliency

from numbers import Real

from fer_core.explain.base import POSITIVE_COUNT, REDUCTION, reduce_channels, register_method
from fer_core.models.factory import FerModel
from fer_core.validation import Interval, validate_params


@register_method("smoothgrad")
@validate_params({"samples": [POSITIVE_COUNT], "noise": [Interval(Real, 0, None)],
                  "batch_size": [POSITIVE_COUNT, None], "reduction": REDUCTION})
def smoothgrad(model: FerModel, inputs: torch.Tensor, targets: torch.Tensor, samples: int = 16,
               noise: float = 0.15, batch_size: int | None = 64, reduction: str = "abs", seed: int = 0) -> torch.Tensor:
    """Mean gradient over ``samples`` noisy copies of each face; the Gaussian noise's standard
    deviation is ``noise`` times the faces' mean value range (max - min), as Smilkov et al.;
    ``batch_size`` noisy copies go through the network at once; the noise is drawn from
    ``seed``, so a face gets the same map every time."""
    spans = (inputs.amax(dim=(1, 2, 3)) - inputs.amin(dim=(1, 2, 3))).clamp_min(1e-6)
    stdevs = float(noise) * float(spans.mean())
    # Captum's smoothgrad averages the signed gradients; "abs" reduces that mean.
    with torch.random.fork_rng(devices=[inputs.device] if inputs.device.type == "cuda" else []):
        torch.manual_seed(seed)
        gradients = NoiseTunnel(Saliency(model.module)).attribute(
            inputs.requires_grad_(True), nt_type="smoothgrad", nt_samples=samples, nt_samples_batch_size=batch_size,
            stdevs=stdevs, target=targets, abs=False)
    return reduce_channels(gradients, reduction)
