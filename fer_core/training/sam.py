"""Sharpness-aware minimisation (Foret et al., 2021): the plan's ``RobustOptimizer``.

Each step ascends to ``w + rho * g / ||g||``, takes the gradient there, restores ``w``
exactly and lets the base optimizer (Adam/AdamW) step with that gradient.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn


class SAM(torch.optim.Optimizer):
    """Wrap ``base_optimizer`` with a sharpness-aware ascent step of radius ``rho``.

    Use :meth:`step` with a closure that recomputes the loss and calls ``backward()``, or
    call :meth:`first_step` and :meth:`second_step` around the second backward pass.
    ``rho = 0`` reduces exactly to the base optimizer.
    """

    def __init__(self, params: Iterable, base_optimizer: type[torch.optim.Optimizer] = torch.optim.AdamW,
                 rho: float = 0.05, adaptive: bool = False, **base_kwargs: float) -> None:
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **base_kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    @torch.no_grad()
    def _grad_norm(self) -> torch.Tensor:
        norms = [((torch.abs(p) if group["adaptive"] else 1.0) * p.grad).norm(p=2)
                 for group in self.param_groups for p in group["params"] if p.grad is not None]
        return torch.norm(torch.stack(norms), p=2) if norms else torch.tensor(0.0)

    @torch.no_grad()
    def first_step(self) -> None:
        """Move to the worst nearby point ``w + e(w)``, remembering ``w``."""
        scale_base = self._grad_norm() + 1e-12
        for group in self.param_groups:
            scale = group["rho"] / scale_base
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["old_p"] = p.detach().clone()
                p.add_((torch.pow(p, 2) if group["adaptive"] else 1.0) * p.grad * scale.to(p))

    @torch.no_grad()
    def second_step(self) -> None:
        """Restore ``w`` exactly and step the base optimizer with the gradient taken at ``w + e(w)``."""
        for group in self.param_groups:
            for p in group["params"]:
                old = self.state[p].pop("old_p", None)
                if old is not None:
                    p.copy_(old)
        self.base_optimizer.step()

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        """Both steps; ``closure`` must recompute the loss and its gradients."""
        if closure is None:
            raise ValueError("SAM needs a closure that recomputes the loss and calls backward()")
        self.first_step()
        self.zero_grad()
        with torch.enable_grad():
            loss = closure()
        self.second_step()
        return loss

    def state_dict(self) -> dict:
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_optimizer.load_state_dict(state_dict)


RobustOptimizer = SAM


class FrozenBatchNormStats:
    """Context: BatchNorm layers use but do not update their running statistics (SAM's
    second pass, so the statistics come from the first pass only)."""

    def __init__(self, module: nn.Module) -> None:
        self.layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def __enter__(self) -> None:
        self.saved = [m.momentum for m in self.layers]
        for m in self.layers:
            m.momentum = 0.0

    def __exit__(self, *exc: object) -> None:
        for m, momentum in zip(self.layers, self.saved):
            m.momentum = momentum
