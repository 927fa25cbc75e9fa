"""Grad-CAM (Selvaraju et al.) and Grad-CAM++ (Chattopadhyay et al.) on a named layer of the
timm network, upsampled to the input size.

The layer's output is captured by a forward hook that hands the rest of the network a copy,
so in-place activations after it (timm's EfficientNet SiLU) cannot overwrite what the
gradient is taken with respect to.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fer_core.errors import InvalidArgument
from fer_core.explain.base import eval_mode, register_cell_size, register_method
from fer_core.models.factory import FerModel

#: Grad-CAM's default layer is the last whose map has at least this many cells a side (on FER+ faces
#: B0's 2 x 2 stages did no better than a random order in the deletion test, every 4 x 4 one did).
MIN_CAM_SIDE = 4


def layers(model: FerModel, input_size: int | None = None) -> list[str]:
    """Names of the network's :func:`stages` (e.g. ``conv_stem``, ``blocks.3``, ``conv_head``)
    whose output is a spatial map larger than one cell at ``input_size`` (default: the
    model's), in the order they run."""
    return list(_map_sides(model, input_size or model.input_size))


def default_layer(model: FerModel, input_size: int | None = None) -> str:
    """Grad-CAM's default layer: the last stage whose map is at least :data:`MIN_CAM_SIDE`
    cells a side (the last conv stage, ``bn2``, for EfficientNet at 224 px and B0 at 112 px; ``blocks.4``
    for B0 at 64 and 96 px, where ``bn2`` is 2 x 2 or 3 x 3: at 2 x 2 its maps measured no better
    than a random order in the deletion test), else the last spatial one."""
    sides = _map_sides(model, input_size or model.input_size)
    if not sides:
        raise InvalidArgument(f"{model.architecture} has no spatial layer at {input_size or model.input_size} px "
                              "for Grad-CAM")
    wide_enough = [name for name, side in sides.items() if side >= MIN_CAM_SIDE]
    return (wide_enough or list(sides))[-1]


def canonical_layer(model: FerModel, layer: str | None) -> str | None:
    """``layer`` as a stored result's key names it: None for the model's :func:`default_layer`,
    named or not (``blocks.4`` and None are one setting for B0 at 64 px), else the layer's name.
    Pass this to :func:`fer_core.precompute.explain_dataset` so maps precomputed with the default
    (``fer-core explain`` without ``--layer``) are found by a caller that names the layer."""
    return None if layer is None or layer == default_layer(model) else layer


#: Stage sides by (network class, stage names, input size): probed once, as they follow the
#: architecture and not the weights.
_SIDES: dict[tuple[str, tuple[str, ...], int], dict[str, int]] = {}


def _map_sides(model: FerModel, size: int) -> dict[str, int]:
    """Each spatial stage's output side (the smaller one), in the order the stages run."""
    candidates = dict(stages(model.module))
    key = (f"{model.architecture}:{type(model.module).__qualname__}", tuple(candidates), size)
    if key not in _SIDES:
        _SIDES[key] = _probe_sides(model, candidates, size)
    return dict(_SIDES[key])


def _probe_sides(model: FerModel, candidates: dict[str, nn.Module], size: int) -> dict[str, int]:
    order: dict[str, int] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[-1] * output.shape[-2] > 1:
                order.setdefault(name, int(min(output.shape[-2:])))
        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in candidates.items()]
    try:
        with torch.no_grad(), eval_mode(model.module):
            model.module(torch.zeros(1, 3, size, size, device=model.device))
    finally:
        for handle in handles:
            handle.remove()
    return order


def stages(root: nn.Module) -> list[tuple[str, nn.Module]]:
    """The top-level modules, with top-level ``nn.Sequential`` containers (timm's ``blocks``)
    replaced by their children (``blocks.0``, ``blocks.1``, ...)."""
    found: list[tuple[str, nn.Module]] = []
    for name, module in root.named_children():
        if isinstance(module, nn.Sequential):
            found.extend((f"{name}.{child}", submodule) for child, submodule in module.named_children())
        else:
            found.append((name, module))
    return found


def resolve_layer(model: FerModel, layer: str | None, input_size: int) -> tuple[str, nn.Module]:
    """``layer``'s name and module (default: :func:`default_layer`)."""
    if layer is None:
        layer = default_layer(model, input_size)
    try:
        return layer, model.module.get_submodule(layer)
    except AttributeError as error:
        raise InvalidArgument(f"layer: {model.architecture} has no module {layer!r}; "
                              f"its stages: {layers(model, input_size)}") from error


def activation_and_gradient(model: FerModel, inputs: torch.Tensor, targets: torch.Tensor,
                            layer: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(N, K, h, w)`` output of ``layer`` and the gradient of each face's target logit
    with respect to it."""
    name, module = resolve_layer(model, layer, inputs.shape[-1])
    captured: list[torch.Tensor] = []

    def keep(module: nn.Module, args: tuple, output: object) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            raise InvalidArgument(f"layer {name!r} must output an (N, K, h, w) map; "
                                  "fer_core.explain.layers(model) lists the layers that do")
        captured.append(output)
        return output.clone()

    handle = module.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model.module(inputs.detach().clone().requires_grad_(True))
            score = logits.gather(1, targets[:, None]).sum()
            (gradient,) = torch.autograd.grad(score, captured[0])
    finally:
        handle.remove()
    return captured[0].detach(), gradient.detach()


def _upsample(cam: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    return F.interpolate(cam[:, None], size=inputs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


@register_method("gradcam")
def gradcam(model: FerModel, inputs: torch.Tensor, targets: torch.Tensor, layer: str | None = None) -> torch.Tensor:
    """ReLU of the layer's channels weighted by their spatially averaged gradients."""
    activation, gradient = activation_and_gradient(model, inputs, targets, layer)
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    return _upsample(F.relu((weights * activation).sum(dim=1)), inputs)


@register_method("gradcam++")
def gradcam_plus_plus(model: FerModel, inputs: torch.Tensor, targets: torch.Tensor,
                      layer: str | None = None) -> torch.Tensor:
    """Grad-CAM++: channel weights are the positive gradients weighted per position by
    alpha = g^2 / (2 g^2 + sum(A) g^3), the closed form for an exponential score."""
    activation, gradient = activation_and_gradient(model, inputs, targets, layer)
    squared, cubed = gradient ** 2, gradient ** 3
    denominator = 2 * squared + activation.sum(dim=(2, 3), keepdim=True) * cubed
    alpha = torch.where(denominator != 0, squared / torch.where(denominator != 0, denominator,
                                                                 torch.ones_like(denominator)),
                        torch.zeros_like(denominator))
    weights = (alpha * F.relu(gradient)).sum(dim=(2, 3), keepdim=True)
    return _upsample(F.relu((weights * activation).sum(dim=1)), inputs)


@register_cell_size("gradcam")
@register_cell_size("gradcam++")
def cam_cell_size(model: FerModel, layer: str | None = None, **_: object) -> float:
    """Input pixels per cell of the layer's map at the model's input size."""
    name, module = resolve_layer(model, layer, model.input_size)
    side = _map_sides(model, model.input_size).get(name) or _probe_sides(model, {name: module}, model.input_size).get(name)
    if side is None:
        raise InvalidArgument(f"layer {name!r} has no spatial map; fer_core.explain.layers(model) lists those that do")
    return model.input_size / side
