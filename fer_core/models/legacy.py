"""Unpickling whole-model pickles made by older timm (HSEmotion's ``enet_b0_8_best_vgaf.pt`` ...).

Such files name classes where timm 0.4 kept them (``timm.models.layers.conv2d_same.Conv2dSame``)
and fail to load under current timm. :class:`LegacyUnpickler` finds each class at its current
path, or puts a permissive stand-in where a class is gone. The unpickled modules are used for
one thing only: their parameters and buffers (:func:`module_state`), which are then loaded
strictly into a freshly built current-timm network. Nothing of the old code is ever run.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

#: Old module paths -> where current timm keeps the same code (prefix match).
MODULE_MOVES: tuple[tuple[str, str], ...] = (
    ("timm.models.layers", "timm.layers"),
    ("timm.models.efficientnet_blocks", "timm.models._efficientnet_blocks"),
    ("timm.models.efficientnet_builder", "timm.models._efficientnet_builder"),
    ("timm.models.helpers", "timm.models._helpers"),
    ("timm.models.registry", "timm.models._registry"),
    ("timm.models.features", "timm.models._features"),
    ("timm.models.hub", "timm.models._hub"),
)


def current_module_path(module: str) -> str:
    """Where current code keeps what ``module`` held (``module`` itself if it did not move)."""
    for old, new in MODULE_MOVES:
        if module == old or module.startswith(old + "."):
            return new + module[len(old):]
    return module


class StandIn(nn.Module):
    """Takes the place of a class that no longer exists: accepts any arguments and keeps the
    pickled state (parameters, buffers, submodules) so that it can be read back."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()


@dataclass
class UnpickleReport:
    """What unpickling had to change: classes found at a new path, and classes stood in for."""

    moved: dict[str, str] = field(default_factory=dict)
    stand_ins: list[str] = field(default_factory=list)


class LegacyUnpickler(pickle.Unpickler):
    """An unpickler that resolves old timm class paths; records what it did in ``report``."""

    report: UnpickleReport

    def find_class(self, module: str, name: str) -> Any:
        target = current_module_path(module)
        try:
            found = super().find_class(target, name)
        except (ImportError, AttributeError):
            self.report.stand_ins.append(f"{module}.{name}")
            return type(name, (StandIn,), {"__module__": module, "__qualname__": name})
        if target != module:
            self.report.moved[f"{module}.{name}"] = f"{target}.{name}"
        return found


def unpickle_module(path: Path) -> tuple[Any, UnpickleReport]:
    """Unpickle a ``torch.save(model)`` file onto the CPU with :class:`LegacyUnpickler`.

    This runs whatever the pickle asks for: call it only on files the user trusts.
    """
    report = UnpickleReport()
    unpickler = type("LegacyUnpickler", (LegacyUnpickler,), {"report": report})
    pickle_module = SimpleNamespace(__name__=__name__, Unpickler=unpickler)
    obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=pickle_module)
    return obj, report


def module_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers of ``module`` and all its submodules, keyed by module
    path like ``state_dict()``, read without calling any method of the (possibly old) classes."""
    state: dict[str, torch.Tensor] = {}
    for prefix, sub in module.named_modules(remove_duplicate=False):
        non_persistent = getattr(sub, "_non_persistent_buffers_set", set())
        tensors = [*sub._parameters.items(), *((n, b) for n, b in sub._buffers.items() if n not in non_persistent)]
        for name, tensor in tensors:
            if tensor is not None:
                state[f"{prefix}.{name}" if prefix else name] = tensor.detach()
    return state


def layer_settings(module: nn.Module) -> dict[str, Any]:
    """Per layer, the settings that change outputs without changing any weight's shape:
    each convolution's padding rule (TF ``same`` or symmetric) and each batch norm's ``eps``."""
    settings: dict[str, Any] = {}
    for name, sub in module.named_modules():
        if hasattr(sub, "kernel_size") and hasattr(sub, "padding"):
            padding = tuple(sub.padding) if isinstance(sub.padding, (tuple, list)) else sub.padding
            settings[f"{name}:padding"] = (type(sub).__name__, padding)
        if "running_var" in sub._buffers:
            settings[f"{name}:eps"] = float(sub.eps)
    return settings
