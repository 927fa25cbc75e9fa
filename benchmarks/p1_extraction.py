"""P1: end-to-end extraction speed against the bare model forward, in one run.

``embed_dataset`` and ``predict_dataset`` (each with a fresh result cache) read every image
file once (hashed, then decoded from the same bytes) in threads a few batches ahead, look each
window up in the cache, preprocess whole batches, run the forward on a compute thread and
write logits, features and faces to the cache while the next batch runs (``predict`` also its
parquet table). The bare forward runs the same backend on the same faces, already
preprocessed in memory, at the same batch size and resolution. Rounds alternate the three.
Goal: both end-to-end rates >= 0.9x the bare forward (decoding and writing overlap with
compute). The process CPU time of each path (all threads) is shown too: on a machine whose
cores are busy with other jobs, the reading, decoding and writing threads cannot run beside
the forward, so the wall-clock ratio falls towards the CPU-time ratio.

    OMP_NUM_THREADS=1 python benchmarks/p1_extraction.py --backend torch
    OMP_NUM_THREADS=1 python benchmarks/p1_extraction.py --backend onnx
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from common import interleaved_seconds, machine_note, shipped_model, table
from fer_core.backends import BACKENDS, load_backend
from fer_core.cache import ResultCache
from fer_core.data import open_dataset
from fer_core.inference import embed_dataset, predict_dataset

GOAL = 0.9


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--dataset", default="ferplus:test")
    parser.add_argument("--faces", type=int, default=640)
    parser.add_argument("--input-size", type=int, help="default: the shipped model's own (64 px)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backend", default="torch", choices=sorted(BACKENDS))
    parser.add_argument("--rounds", type=int, default=3)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    model = shipped_model(args.input_size)
    faces = open_dataset(args.dataset, args.data)
    faces = faces.subset(np.arange(min(args.faces, len(faces))))
    backend = load_backend(model, args.backend)
    images = [faces.read(sample) for sample in faces]
    size = args.batch_size
    prepared = [model.preprocessing.batch(images[i:i + size]) for i in range(0, len(images), size)]
    fresh = itertools.count()
    with tempfile.TemporaryDirectory() as tmp:
        def bare() -> None:
            for batch in prepared:
                backend.forward(batch)

        def embed() -> None:
            with ResultCache(Path(tmp) / f"embed-{next(fresh)}.sqlite") as cache:
                embed_dataset(model, faces, cache, batch_size=args.batch_size, progress=False, backend=args.backend)

        def predict() -> None:
            run = next(fresh)
            with ResultCache(Path(tmp) / f"predict-{run}.sqlite") as cache:
                predict_dataset(model, faces, Path(tmp) / f"predict-{run}", batch_size=args.batch_size,
                                progress=False, cache=cache, backend=args.backend)

        cpu: dict[str, list[float]] = {}

        def with_cpu(name: str, run):
            def timed() -> None:
                start = time.process_time()
                run()
                cpu.setdefault(name, []).append(time.process_time() - start)
            return timed
        paths = {"bare forward": bare, "embed (end to end)": embed, "predict (end to end)": predict}
        seconds = interleaved_seconds({name: with_cpu(name, run) for name, run in paths.items()}, args.rounds)
        cpu_seconds = {name: statistics.median(values) for name, values in cpu.items()}
    print(f"{model.architecture} at {model.input_size} px, backend {args.backend}, batch {args.batch_size}, "
          f"{len(faces)} {args.dataset} faces; {machine_note()}")
    print(table([{"path": name, "faces/s": len(faces) / s, "x bare": seconds["bare forward"] / s,
                  "CPU ms/face": 1000 * cpu_seconds[name] / len(faces),
                  "x bare (CPU)": cpu_seconds["bare forward"] / cpu_seconds[name]} for name, s in seconds.items()]))
    worst = min(seconds["bare forward"] / seconds[name] for name in ("embed (end to end)", "predict (end to end)"))
    print(f"P1: end to end {worst:.2f}x the bare forward (goal >= {GOAL}x): {'met' if worst >= GOAL else 'NOT met'}")
    return 0 if worst >= GOAL else 1


if __name__ == "__main__":
    raise SystemExit(main())
