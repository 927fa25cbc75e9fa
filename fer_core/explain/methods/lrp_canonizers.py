"""A canonical copy of a timm EfficientNet / MobileNetV3 that LRP rules can be attached to.

The caller's network is deep-copied and the copy rewritten so that every operation is a module
with one LRP rule and the copy computes the same logits:

* each BatchNorm (timm's ``BatchNormAct2d`` included) is folded into the convolution whose
  output it normalises, found by tracing a forward pass, and replaced by its activation;
* every activation runs out of place (in-place SiLU would overwrite what the rules need);
* each squeeze-excite block becomes :class:`ConstantGate`: its gate is computed without
  gradient and relevance passes through the channel scaling unchanged;
* each residual block becomes :class:`SkipSum`: the skip connection's add is a
  :class:`zennit.layer.Sum` module, which splits relevance in proportion to the two terms.

Anything else (an unknown block, pooling type or normalisation) raises an InvalidArgument, so a
map is never computed over operations without a rule.
"""

from __future__ import annotations

import copy

import torch
from timm.layers import SelectAdaptivePool2d
from timm.models._efficientnet_blocks import (ConvBnAct, DepthwiseSeparableConv, EdgeResidual, InvertedResidual,
                                              SqueezeExcite)
from timm.models.efficientnet import EfficientNet
from timm.models.mobilenetv3 import MobileNetV3
from torch import nn
from zennit.layer import Sum
from zennit.types import Activation

from fer_core.errors import InvalidArgument

#: Networks whose own forward is their stages in sequence (stem, blocks, head, pooling, classifier).
SUPPORTED_NETWORKS = (EfficientNet, MobileNetV3)
#: Blocks whose only operation outside their child modules is the ``drop_path(x) + shortcut`` skip.
RESIDUAL_BLOCKS = (ConvBnAct, DepthwiseSeparableConv, EdgeResidual, InvertedResidual)
#: Leaf modules of a canonical network, each of which has an LRP rule (or is an identity).
SUPPORTED_LEAVES = (nn.Conv2d, nn.Linear, Activation, nn.Identity, nn.Flatten, nn.Dropout, nn.AdaptiveAvgPool2d, Sum)
#: Containers whose forward is the composition of their children.
SUPPORTED_CONTAINERS = (nn.Sequential, SelectAdaptivePool2d, *RESIDUAL_BLOCKS)


class ConstantGate(nn.Module):
    """A squeeze-excite block whose channel gate is a constant of the input: computed without
    gradient, so relevance (rule: pass-through) is not sent into the gate branch."""

    def __init__(self, excite: SqueezeExcite) -> None:
        super().__init__()
        self.excite = excite

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            squeezed = x.mean((2, 3), keepdim=True)
            gate = self.excite.gate(self.excite.conv_expand(self.excite.act1(self.excite.conv_reduce(squeezed))))
        return x * gate


class SkipSum(nn.Module):
    """A residual block whose skip connection adds through a :class:`zennit.layer.Sum`."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        block.has_skip = False
        self.block = block
        self.add = Sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.add(torch.stack([self.block(x), x], dim=-1))


def canonical_copy(network: nn.Module, input_size: int) -> nn.Module:
    """A rewritten deep copy of ``network`` (see the module docstring), in eval mode; the
    caller's network is not touched. ``input_size`` is the side used to trace the forward pass."""
    if not isinstance(network, SUPPORTED_NETWORKS):
        raise InvalidArgument(f"LRP supports timm EfficientNet and MobileNetV3 networks, got {type(network).__name__}")
    canonical = copy.deepcopy(network).eval()
    for module in canonical.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    _fold_batch_norms(canonical, input_size)
    _replace(canonical, lambda module: isinstance(module, SqueezeExcite), ConstantGate)
    _replace(canonical, lambda module: isinstance(module, RESIDUAL_BLOCKS) and bool(getattr(module, "has_skip", False)),
             SkipSum)
    _check_supported(canonical)
    return canonical


def _fold_batch_norms(network: nn.Module, input_size: int) -> None:
    """Fold every BatchNorm into the convolution that feeds it, and swap it for its activation."""
    produced_by: dict[int, nn.Conv2d] = {}
    kept: list[torch.Tensor] = []
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []
    orphans: list[nn.BatchNorm2d] = []

    def after_conv(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        kept.append(output)
        produced_by[id(output)] = module

    def before_norm(module: nn.Module, args: tuple) -> None:
        conv = produced_by.get(id(args[0]))
        (pairs.append((conv, module)) if conv is not None else orphans.append(module))

    handles = []
    for module in network.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(after_conv))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            handles.append(module.register_forward_pre_hook(before_norm))
    try:
        with torch.no_grad():
            parameter = next(network.parameters())
            network(torch.zeros(1, 3, input_size, input_size, device=parameter.device, dtype=parameter.dtype))
    finally:
        for handle in handles:
            handle.remove()
    norms = {id(module) for module in network.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)}
    folded = {id(norm) for _, norm in pairs}
    if orphans or norms - folded:
        raise InvalidArgument("LRP: a BatchNorm does not directly follow a convolution, so it cannot be folded "
                              f"({len(orphans) + len(norms - folded)} such layers); this architecture is not supported")
    for conv, norm in pairs:
        _fold(conv, norm)
    _replace(network, lambda module: id(module) in folded, _activation_of)


def _fold(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    with torch.no_grad():
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
        conv.weight.copy_(conv.weight * scale.view(-1, *([1] * (conv.weight.ndim - 1))))
        conv.bias = nn.Parameter((bias - norm.running_mean) * scale + norm.bias)


def _activation_of(norm: nn.BatchNorm2d) -> nn.Module:
    """What is left of a folded norm: timm's BatchNormAct2d keeps its activation (its dropout is
    an identity in eval mode)."""
    return getattr(norm, "act", nn.Identity())


def _replace(root: nn.Module, matches, build) -> None:
    for name, module in list(root.named_modules()):
        if name and matches(module):
            parent_name, _, child = name.rpartition(".")
            setattr(root.get_submodule(parent_name) if parent_name else root, child, build(module))


def _check_supported(network: nn.Module) -> None:
    unsupported: list[str] = []

    def visit(name: str, module: nn.Module, top: bool) -> None:
        if isinstance(module, ConstantGate):
            return
        children = list(module.named_children())
        if not children:
            if not isinstance(module, SUPPORTED_LEAVES):
                unsupported.append(f"{name or '<root>'} ({type(module).__name__})")
            return
        if not top and not isinstance(module, (*SUPPORTED_CONTAINERS, SkipSum)):
            unsupported.append(f"{name} ({type(module).__name__})")
            return
        for child_name, child in children:
            visit(f"{name}.{child_name}" if name else child_name, child, False)

    visit("", network, True)
    if unsupported:
        raise InvalidArgument(f"LRP has no rule for {type(network).__name__} module(s) {unsupported[:5]}"
                              f"{' ...' if len(unsupported) > 5 else ''}; supported: timm EfficientNet and MobileNetV3 "
                              "(convolutions, BatchNorm, activations, squeeze-excite, residual blocks, "
                              "average pooling)")
