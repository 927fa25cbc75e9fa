"""Shared pieces of the benchmark scripts: real faces, the shipped model at any input size,
interleaved timing, a note of the machine's load and the ``--smoke`` switch.

Every benchmark compares things measured in the same run, in alternating rounds, so that
load from other jobs on a shared machine hits every contender alike; figures are the
median over rounds. Every script has ``main(argv)``: ``measure(args)`` returns its figures and
the outputs it compares, ``report(args, result)`` prints them; ``--smoke`` runs it on a few
faces for one round (``tests/test_benchmarks_smoke.py``), which checks that it runs and that
what it compares agrees, not its speed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from fer_core.data import FaceDataset, open_dataset
from fer_core.models import FerModel, load_model

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "weights" / "fer_b0_ferplus.safetensors"
SMOKE_HELP = ("a few faces, one round, seconds: checks that the benchmark runs and that the outputs it compares "
              "agree (the test suite runs it); not a measurement")


def machine_note() -> str:
    """Threads and the load average, to print next to every figure."""
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, torch threads {torch.get_num_threads()}, "
            f"{os.cpu_count()} CPUs, load average {load}")


def parse_with_smoke(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                     smoke: Mapping[str, Any]) -> argparse.Namespace:
    """``argv`` parsed by ``parser`` with a ``--smoke`` switch added: with it, the ``smoke``
    values replace the defaults (options given explicitly still win)."""
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**smoke)
        args = parser.parse_args(argv)
    return args


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    """``--model``: the weights to benchmark (the shipped B0 by default)."""
    parser.add_argument("--model", type=Path, default=SHIPPED, help="weights file (default: the shipped B0)")


def benchmark_model(weights: Path = SHIPPED, input_size: int | None = None) -> FerModel:
    """The shipped B0 (or ``weights``; float32), run at ``input_size`` (its own size by default:
    64 px for B0): a fully convolutional network takes any size, so the 224 px speed figures
    use real weights."""
    model = load_model(weights)
    model.module.float()
    if input_size is not None:
        model = FerModel(model.module, model.architecture, model.emotions, input_size, model.mean, model.std,
                         dict(model.provenance))
    return model


def dataset(spec: str, data_root: Path) -> FaceDataset:
    """An installed dataset by name (``ferplus:test``)."""
    return open_dataset(spec, data_root)


def real_faces(spec: str, data_root: Path, count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` decoded RGB faces of ``spec``, drawn at random (fixed seed)."""
    faces = dataset(spec, data_root)
    rows = np.random.default_rng(seed).choice(len(faces), size=min(count, len(faces)), replace=False)
    return [faces.read(faces[int(i)]) for i in rows]


def max_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    """The largest absolute difference of two arrays of one shape (inf when the shapes differ)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max()) if a.shape == b.shape and a.size else float("inf")


@dataclass(frozen=True)
class Timing:
    """Median seconds of one call: wall clock, and CPU time of this process (all its threads).
    On cores shared with other jobs the wall clock includes waiting for a core; the CPU time
    does not, so a ratio of CPU times is the steadier figure for single-threaded work."""

    wall: float
    cpu: float


def interleaved_timings(contenders: Mapping[str, Callable[[], object]], rounds: int,
                        warmup: int = 1) -> dict[str, Timing]:
    """Median :class:`Timing` of one call of each contender, over ``rounds`` rounds that call
    each once in turn (A B A B ..., after ``warmup`` untimed calls each)."""
    for run in contenders.values():
        for _ in range(warmup):
            run()
    wall: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: Timing(statistics.median(wall[name]), statistics.median(cpu[name])) for name in contenders}


def interleaved_seconds(contenders: Mapping[str, Callable[[], object]], rounds: int,
                        warmup: int = 1) -> dict[str, float]:
    """The median wall-clock seconds of :func:`interleaved_timings`."""
    return {name: timing.wall for name, timing in interleaved_timings(contenders, rounds, warmup).items()}


def table(rows: list[dict[str, object]]) -> str:
    """Rows of equal keys as a fixed-width text table."""
    if not rows:
        return ""
    columns = list(rows[0])
    cells = [[f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)
