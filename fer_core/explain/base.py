"""The attribution registry and the one entry point over it, :func:`explain` (in the style of
``timm.create_model``): every method takes a :class:`FerModel`, a preprocessed batch and the
target classes, and returns one ``(N, H, W)`` map per face at the input resolution."""

from __future__ import annotations

import contextlib
import inspect
import math
from dataclasses import dataclass, field
from types import MappingProxyType
from numbers import Integral, Real
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fer_core.errors import InvalidArgument
from fer_core.models.factory import FerModel
from fer_core.validation import Interval, StrOptions, validate_params

#: What :func:`explain` accepts as ``target``: one class for every face, one class per face,
#: or ``"predicted"`` (each face's top class). Classes are indices or emotion names.
Target = int | str | Sequence[int | str]

#: Channel reductions of pixel attributions: sum of absolute values, or the signed sum.
REDUCTIONS = ("abs", "signed")
#: Named baselines: what a face is compared with (IG) or replaced by (deletion/insertion).
BASELINES = ("black", "blurred", "mean")
#: The argument checks shared by the methods (see :func:`fer_core.validation.validate_params`).
BASELINE = [StrOptions(BASELINES), torch.Tensor]
REDUCTION = [StrOptions(REDUCTIONS)]
POSITIVE_COUNT = Interval(Integral, 1, None)
#: A side or spread in pixels: a number > 0.
POSITIVE_PIXELS = Interval(Real, 0, None, closed="neither")


class AttributionMethod(Protocol):
    """``(model, inputs, targets, **params) -> (N, H, W)`` maps (or a :class:`MethodResult`
    with diagnostics); ``inputs`` is a detached copy of the batch on the model's device,
    ``targets`` a ``(N,)`` long tensor."""

    def __call__(self, model: FerModel, inputs: torch.Tensor, targets: torch.Tensor,
                 **params: Any) -> "torch.Tensor | MethodResult": ...


@dataclass(frozen=True, eq=False)
class Attribution:
    """Maps of one method over a batch: ``maps`` is ``(N, H, W)`` float32 at the input
    resolution; ``targets`` the class explained for each face; ``params`` every setting used
    (the method's defaults included)."""

    maps: np.ndarray
    method: str
    targets: tuple[int, ...]
    params: Mapping[str, Any] = field(default_factory=dict)
    #: What the method measured about its own maps (e.g. LRP's per-face conservation error).
    diagnostics: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The settings and diagnostics, JSON-ready (the maps are left out: they are arrays)."""
        return {"method": self.method, "targets": list(self.targets), "params": _json_ready(dict(self.params)),
                "shape": list(self.maps.shape), "diagnostics": _json_ready(dict(self.diagnostics))}


@dataclass(frozen=True)
class MethodResult:
    """What a method may return instead of bare ``(N, H, W)`` maps: the maps and its
    diagnostics of them (JSON-ready values, per-face lists in batch order)."""

    maps: torch.Tensor
    diagnostics: Mapping[str, Any]


_METHODS: dict[str, AttributionMethod] = {}
#: Every registered attribution method, by name.
METHODS: Mapping[str, AttributionMethod] = MappingProxyType(_METHODS)


def register_method(name: str) -> Callable[[AttributionMethod], AttributionMethod]:
    """Decorator registering an attribution method under ``name``."""
    def register(function: AttributionMethod) -> AttributionMethod:
        if name in _METHODS:
            raise InvalidArgument(f"attribution method {name!r} is already registered")
        _METHODS[name] = function
        return function
    return register


def method_names() -> list[str]:
    """Names :func:`explain` accepts."""
    return sorted(_METHODS)


#: Cell size functions by method: ``(model, **settings) -> side in input pixels`` of the finest
#: detail the method's map can hold (methods without one attribute single pixels).
_CELL_SIZES: dict[str, Callable[..., float]] = {}


def register_cell_size(name: str) -> Callable[[Callable[..., float]], Callable[..., float]]:
    """Decorator registering how coarse ``name``'s maps are (see :func:`map_cell_size`)."""
    def register(function: Callable[..., float]) -> Callable[..., float]:
        _CELL_SIZES[name] = function
        return function
    return register


def map_cell_size(model: FerModel, method: str, **params: Any) -> float:
    """Side, in input pixels, of the finest detail ``method``'s maps hold with ``params``: 1 for
    pixel methods, the layer's stride for Grad-CAM (16 px for B0's ``blocks.4`` at 64 px: a
    4 x 4 map), the window for occlusion. A region narrower than this cannot be told from its
    neighbours."""
    settings = method_defaults(method)
    settings.update(params)
    function = _CELL_SIZES.get(method)
    return 1.0 if function is None else float(function(model, **settings))


@validate_params({"method": [StrOptions(method_names)]})
def method_defaults(method: str) -> dict[str, Any]:
    """Every parameter of ``method`` and its default value."""
    signature = inspect.signature(_METHODS[method])
    return {name: p.default for name, p in list(signature.parameters.items())[3:]}


@validate_params({"method": [StrOptions(method_names)]})
def explain(model: FerModel, faces: torch.Tensor, method: str, target: Target = "predicted",
            **params: Any) -> Attribution:
    """Attribute ``model``'s ``target`` scores on ``faces`` (a preprocessed ``(N, 3, S, S)``
    batch) with ``method`` (a name from :func:`method_names`); ``params`` are the method's
    settings (see :func:`method_defaults`)."""
    function = _METHODS[method]
    settings = method_defaults(method)
    unknown = sorted(set(params) - set(settings))
    if unknown:
        raise InvalidArgument(f"{method} has no parameter(s) {unknown}; its parameters: {sorted(settings)}")
    settings.update(params)
    inputs = check_batch(model, faces)
    with eval_mode(model.module):
        targets = resolve_targets(model, inputs, target)
        result = function(model, inputs, targets, **settings)
    maps, diagnostics = (result.maps, result.diagnostics) if isinstance(result, MethodResult) else (result, {})
    maps = maps.detach().float().cpu().numpy().astype(np.float32, copy=False)
    if maps.shape != (inputs.shape[0], *inputs.shape[2:]):
        raise RuntimeError(f"{method} returned maps of shape {maps.shape} for inputs {tuple(inputs.shape)}")
    return Attribution(maps, method, tuple(int(t) for t in targets.tolist()), MappingProxyType(settings),
                       MappingProxyType(dict(diagnostics)))


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Run the block with ``module`` (and every submodule) in eval mode, then give each
    submodule back the train/eval flag it had: every forward pass of :mod:`fer_core.explain`
    runs under it, so BatchNorm uses (and never updates) its running statistics and dropout is
    off, whatever mode the caller left the network in."""
    modes = [(child, child.training) for child in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for child, training in modes:
            child.training = training


def check_batch(model: FerModel, faces: torch.Tensor) -> torch.Tensor:
    """A detached float32 copy of ``faces`` on the model's device, checked to be ``(N, 3, H, W)``."""
    if model.test_time_flip:
        raise InvalidArgument("saliency explains one view of a face; this model averages each face with its mirror "
                              "image (test-time flip): explain the model without it")
    if not isinstance(faces, torch.Tensor) or faces.ndim != 4 or faces.shape[1] != 3 or faces.shape[0] == 0:
        shape = tuple(faces.shape) if isinstance(faces, torch.Tensor) else type(faces).__name__
        raise InvalidArgument(f"faces: expected a preprocessed (N, 3, H, W) tensor with N >= 1, got {shape}")
    if not torch.is_floating_point(faces):
        raise InvalidArgument(f"faces: expected a float tensor (see FerModel.preprocessing), got {faces.dtype}")
    return faces.detach().to(model.device, torch.float32).clone()


def resolve_targets(model: FerModel, inputs: torch.Tensor, target: Target) -> torch.Tensor:
    """``(N,)`` class indices of ``target`` for a batch of ``N`` faces."""
    count = inputs.shape[0]
    if isinstance(target, str) and target == "predicted":
        with torch.no_grad(), eval_mode(model.module):
            return model.logits(inputs).argmax(dim=1)
    if isinstance(target, (str, int, np.integer)):
        target = [target] * count
    elif not isinstance(target, Sequence) and not isinstance(target, (np.ndarray, torch.Tensor)):
        raise InvalidArgument(f"target: expected a class index, an emotion name, one per face or 'predicted', "
                          f"got {type(target).__name__}")
    indices = [_class_index(model, value) for value in list(target)]
    if len(indices) != count:
        raise InvalidArgument(f"target: expected one class per face ({count}), got {len(indices)}")
    return torch.tensor(indices, dtype=torch.long, device=inputs.device)


def _class_index(model: FerModel, value: Any) -> int:
    if isinstance(value, torch.Tensor) and value.ndim == 0:
        value = value.item()
    if isinstance(value, str) and value in model.emotions:
        return model.emotions.index(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value < len(model.emotions):
        return int(value)
    raise InvalidArgument(f"target: expected a class index in [0, {len(model.emotions)}) or one of "
                          f"{list(model.emotions)}, got {value!r}")


@validate_params({"reduction": REDUCTION})
def reduce_channels(attributions: torch.Tensor, reduction: str) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, H, W)``: the sum of absolute values (``"abs"``) or the signed sum."""
    return attributions.abs().sum(dim=1) if reduction == "abs" else attributions.sum(dim=1)


@validate_params({"sigma": [POSITIVE_PIXELS]})
def gaussian_blur(batch: torch.Tensor, sigma: float) -> torch.Tensor:
    """``batch`` blurred per channel by a Gaussian of ``sigma`` pixels (reflect padding)."""
    radius = max(1, min(math.ceil(3 * sigma), min(batch.shape[-2:]) - 1))
    offsets = torch.arange(-radius, radius + 1, dtype=batch.dtype, device=batch.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = batch.shape[1]
    rows = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    cols = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    padded = F.pad(batch, (radius, radius, radius, radius), mode="reflect")
    return F.conv2d(F.conv2d(padded, rows, groups=channels), cols, groups=channels)


@validate_params({"size": [Interval(Integral, 2, None)], "sigma": [POSITIVE_PIXELS, None]})
def centre_prior(size: int, sigma: float | None = None) -> np.ndarray:
    """A ``(size, size)`` float32 Gaussian centred on the crop (``sigma`` defaults to a quarter
    of the side) that ignores the face: the control a saliency method must beat. Its pixel order
    is the distance from the centre whatever ``sigma`` (deletion / insertion only use the order)."""
    spread = size / 4 if sigma is None else sigma
    offsets = np.arange(size, dtype=np.float64) + 0.5 - size / 2
    squared = offsets[:, None] ** 2 + offsets[None, :] ** 2
    return np.exp(-0.5 * squared / spread ** 2).astype(np.float32)


@validate_params({"baseline": BASELINE})
def make_baseline(model: FerModel, inputs: torch.Tensor, baseline: str | torch.Tensor, *,
                  mean_face: torch.Tensor | None = None, blur_sigma: float | None = None) -> torch.Tensor:
    """A baseline batch shaped like ``inputs`` (preprocessed): ``"black"`` (zero pixels),
    ``"blurred"`` (each face blurred, ``blur_sigma`` defaults to a tenth of the side),
    ``"mean"`` (``mean_face``, a preprocessed ``(3, H, W)`` face), or a tensor broadcastable
    to ``inputs``."""
    if isinstance(baseline, torch.Tensor):
        return _broadcast(baseline, inputs, "baseline")
    if baseline == "black":
        black = model.preprocessing.normalize(torch.zeros(3, 1, 1, dtype=torch.uint8)).to(inputs.device)
        return black.expand_as(inputs).clone()
    if baseline == "blurred":
        return gaussian_blur(inputs, blur_sigma if blur_sigma is not None else inputs.shape[-1] / 10)
    if mean_face is None:  # baseline "mean"
        raise InvalidArgument("baseline 'mean' needs mean_face: a preprocessed (3, H, W) mean face")
    return _broadcast(mean_face, inputs, "mean_face")


def _broadcast(tensor: torch.Tensor, inputs: torch.Tensor, name: str) -> torch.Tensor:
    try:
        return torch.broadcast_to(tensor.detach().to(inputs.device, inputs.dtype), inputs.shape).clone()
    except RuntimeError as error:
        raise InvalidArgument(f"{name}: expected a tensor broadcastable to {tuple(inputs.shape)}, "
                              f"got {tuple(tensor.shape)}") from error


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, torch.Tensor):
        return f"tensor{list(value.shape)}"
    if isinstance(value, np.generic):
        return value.item()
    return value
