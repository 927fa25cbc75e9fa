"""Attribution throughput per method, and Integrated Gradients' internal batching against a
naive per-step loop, in one run.

Every registered method (``fer_core.explain.method_names()``) with its default settings
explains the same real FER+ test faces with the shipped model at its own 64 px (predicted
class as target); rounds alternate the methods; the figure is faces per second. Integrated
Gradients evaluates ``n_steps`` path points per face: Captum batches ``internal_batch_size``
of them per forward/backward; the naive loop runs one forward/backward per path point (the
same Gauss-Legendre points and weights, from the same baseline, :data:`IG_BASELINE`). Both
give the same maps (the script checks), and every method's maps must be finite.

    OMP_NUM_THREADS=1 python benchmarks/attribution_throughput.py
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from captum.attr._utils.approximation_methods import approximation_parameters

from common import (add_model_argument, benchmark_model, interleaved_seconds, machine_note, max_abs_difference,
                    parse_with_smoke, real_faces, table)
from fer_core.explain import explain, method_names
from fer_core.explain.base import make_baseline, reduce_channels, resolve_targets
from fer_core.models import FerModel


#: The baseline of the Integrated Gradients comparison (the method's default), given to both variants.
IG_BASELINE = "blurred"
SMOKE = {"faces": 2, "rounds": 1, "n_steps": 4, "warmup": 0}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data"))
    add_model_argument(parser)
    parser.add_argument("--faces", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each method first")
    parser.add_argument("--n-steps", type=int, default=32)
    return parse_with_smoke(parser, argv, SMOKE)


def naive_integrated_gradients(model: FerModel, inputs: torch.Tensor, targets: torch.Tensor,
                               n_steps: int) -> np.ndarray:
    """Integrated Gradients from :data:`IG_BASELINE`, one forward/backward per path point."""
    baseline = make_baseline(model, inputs, IG_BASELINE)
    step_sizes, alphas = approximation_parameters("gausslegendre")
    total = torch.zeros_like(inputs)
    rows = torch.arange(len(inputs))
    for weight, alpha in zip(step_sizes(n_steps), alphas(n_steps)):
        point = (baseline + alpha * (inputs - baseline)).requires_grad_(True)
        score = model.module(point)[rows, targets].sum()
        total += weight * torch.autograd.grad(score, point)[0]
    return reduce_channels(total * (inputs - baseline), "signed").detach().numpy()


def measure(args: argparse.Namespace) -> dict:
    """Median seconds per call of every method and of the two Integrated Gradients variants;
    whether every method's maps are finite, and the variants' largest map difference."""
    model = benchmark_model(args.model)
    batch = model.preprocessing.batch(real_faces("ferplus:test", args.data, args.faces, seed=3))
    finite: dict[str, bool] = {}

    def run(method: str) -> None:
        finite[method] = bool(np.isfinite(explain(model, batch, method, "predicted").maps).all())
    seconds = interleaved_seconds({m: (lambda m=m: run(m)) for m in method_names()}, args.rounds, args.warmup)
    targets = tuple(resolve_targets(model, batch, "predicted").tolist())
    batched = explain(model, batch, "integrated_gradients", targets, n_steps=args.n_steps, baseline=IG_BASELINE).maps
    naive = naive_integrated_gradients(model, batch, torch.tensor(targets), args.n_steps)
    ig = interleaved_seconds({
        "captum, internal_batch_size=128": lambda: explain(model, batch, "integrated_gradients", targets,
                                                           n_steps=args.n_steps, baseline=IG_BASELINE),
        "naive loop, one pass per step": lambda: naive_integrated_gradients(model, batch, torch.tensor(targets),
                                                                            args.n_steps),
    }, args.rounds, args.warmup)
    return {"model": f"{model.architecture} at {model.input_size} px", "seconds": seconds, "finite": finite,
            "ig_seconds": ig, "ig_map_difference": max_abs_difference(batched, naive),
            "ig_map_scale": float(np.abs(naive).max()), "machine": machine_note()}


def report(args: argparse.Namespace, result: dict) -> int:
    """Print each method's rate and the Integrated Gradients comparison; the exit status."""
    seconds, ig = result["seconds"], result["ig_seconds"]
    print(f"{result['model']}, {args.faces} FER+ test faces per call, default settings; {result['machine']}")
    print(table([{"method": m, "faces/s": args.faces / s, "ms/face": 1000 * s / args.faces,
                  "finite maps": result["finite"][m]} for m, s in seconds.items()]))
    print(f"\nIntegrated Gradients, {args.n_steps} steps, {args.faces} faces; max |map difference| "
          f"{result['ig_map_difference']:.2e} (map scale {result['ig_map_scale']:.2e})")
    print(table([{"variant": name, "faces/s": args.faces / s} for name, s in ig.items()]))
    speedup = ig["naive loop, one pass per step"] / ig["captum, internal_batch_size=128"]
    print(f"IG internal batching: {speedup:.2f}x the naive per-step loop")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return report(args, measure(args))


if __name__ == "__main__":
    raise SystemExit(main())
