"""Attribution throughput per method, and Integrated Gradients' internal batching against a
naive per-step loop, in one run.

Every registered method (``fer_core.explain.method_names()``) with its default settings
explains the same real FER+ test faces with the shipped model at its own 64 px (predicted
class as target); rounds alternate the methods; the figure is faces per second. Integrated
Gradients evaluates ``n_steps`` path points per face: Captum batches ``internal_batch_size``
of them per forward/backward; the naive loop runs one forward/backward per path point (the
same Gauss-Legendre points and weights). Both give the same maps (the script checks).

    OMP_NUM_THREADS=1 python benchmarks/attribution_throughput.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from captum.attr._utils.approximation_methods import approximation_parameters

from common import interleaved_seconds, machine_note, real_faces, shipped_model, table
from fer_core.explain import explain, method_names
from fer_core.explain.base import make_baseline, reduce_channels, resolve_targets
from fer_core.models import FerModel


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--faces", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n-steps", type=int, default=32)
    return parser.parse_args()


def naive_integrated_gradients(model: FerModel, inputs: torch.Tensor, targets: torch.Tensor,
                               n_steps: int) -> np.ndarray:
    """Integrated Gradients from a black baseline, one forward/backward per path point."""
    baseline = make_baseline(model, inputs, "black")
    step_sizes, alphas = approximation_parameters("gausslegendre")
    total = torch.zeros_like(inputs)
    rows = torch.arange(len(inputs))
    for weight, alpha in zip(step_sizes(n_steps), alphas(n_steps)):
        point = (baseline + alpha * (inputs - baseline)).requires_grad_(True)
        score = model.module(point)[rows, targets].sum()
        total += weight * torch.autograd.grad(score, point)[0]
    return reduce_channels(total * (inputs - baseline), "signed").detach().numpy()


def main() -> int:
    args = parse_args()
    model = shipped_model()
    batch = model.preprocessing.batch(real_faces("ferplus:test", args.data, args.faces, seed=3))
    methods = method_names()
    seconds = interleaved_seconds({m: (lambda m=m: explain(model, batch, m, "predicted")) for m in methods},
                                  args.rounds)
    print(f"{model.architecture} at {model.input_size} px, {args.faces} FER+ test faces per call, default settings; "
          f"{machine_note()}")
    print(table([{"method": m, "faces/s": args.faces / seconds[m], "ms/face": 1000 * seconds[m] / args.faces}
                 for m in methods]))
    targets = resolve_targets(model, batch, "predicted")
    batched = explain(model, batch, "integrated_gradients", tuple(targets.tolist()), n_steps=args.n_steps).maps
    naive = naive_integrated_gradients(model, batch, targets, args.n_steps)
    ig = interleaved_seconds({
        "captum, internal_batch_size=128": lambda: explain(model, batch, "integrated_gradients",
                                                           tuple(targets.tolist()), n_steps=args.n_steps),
        "naive loop, one pass per step": lambda: naive_integrated_gradients(model, batch, targets, args.n_steps),
    }, args.rounds)
    print(f"\nIntegrated Gradients, {args.n_steps} steps, {args.faces} faces; max |map difference| "
          f"{np.abs(batched - naive).max():.2e} (map scale {np.abs(naive).max():.2e})")
    print(table([{"variant": name, "faces/s": args.faces / s} for name, s in ig.items()]))
    speedup = ig["naive loop, one pass per step"] / ig["captum, internal_batch_size=128"]
    print(f"IG internal batching: {speedup:.2f}x the naive per-step loop")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
