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

Outside the timed rounds, one pass checks the outputs against the bare forward's: the
features ``embed`` returns (from a fresh cache and read back from the same cache) and the
probabilities ``predict`` writes.

``--stages`` then profiles where ``embed``'s CPU time goes: each stage of its path
(:data:`STAGES`) run alone on the calling thread over the same faces, in alternating rounds,
as CPU milliseconds per face. Their sum against the end-to-end CPU time leaves the pipeline's
own cost (threads, queues, hand-offs); ``forward / sum of the stages`` is the most the
end-to-end path reaches when no second core is free to run the other stages beside the
forward (a loaded machine), so it says how cheap they must become for the goal.

    OMP_NUM_THREADS=1 python benchmarks/p1_extraction.py --backend torch
    OMP_NUM_THREADS=1 python benchmarks/p1_extraction.py --backend onnx --stages
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from common import (Timing, add_model_argument, benchmark_model, interleaved_timings, machine_note,
                    max_abs_difference, parse_with_smoke, table)
from fer_core.backends import INFERENCE_BACKENDS, InferenceOptions, load_backend
from fer_core.cache import CacheKey, ResultCache
from fer_core.data import FaceDataset, open_dataset
from fer_core.extraction import FORWARD_KINDS, FacePreparer, read_content
from fer_core.inference import PROB_COLUMNS, embed_dataset, predict_dataset
from fer_core.models import FerModel

GOAL = 0.9
SMOKE = {"faces": 8, "batch_size": 4, "rounds": 1}
#: The stages of ``embed``'s path that ``--stages`` times one by one, in the order they run.
STAGES = ("read + hash (read_content)", "decode + resize + normalise (prepare_batch)", "forward",
          "cache keys (CacheKey)", "cache: open, look up, store, close")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data"))
    add_model_argument(parser)
    parser.add_argument("--dataset", default="ferplus:test")
    parser.add_argument("--faces", type=int, default=640)
    parser.add_argument("--input-size", type=int, help="default: the model's own (64 px for the shipped B0)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--backend", default="torch", choices=sorted(INFERENCE_BACKENDS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stages", action="store_true", help="also each stage's CPU time alone (a profile)")
    return parse_with_smoke(parser, argv, SMOKE)


def stage_timings(model: FerModel, faces: FaceDataset, folder: Path, args: argparse.Namespace) -> dict[str, Timing]:
    """:data:`STAGES` of ``embed``'s path over ``faces``, each run alone on this thread, in
    alternating rounds (each stage takes the previous one's output)."""
    preparer = FacePreparer(model, None)
    preparation = preparer.fingerprint(faces.pre_cropped)
    backend = load_backend(model, args.backend)
    samples = [faces[i] for i in range(len(faces))]
    spans = [slice(start, start + args.batch_size) for start in range(0, len(samples), args.batch_size)]
    fresh = itertools.count()
    done: dict[str, list] = {}

    def read() -> None:
        done["read"] = [read_content(faces, sample) for sample in samples]

    def prepare() -> None:
        done["prepared"] = [preparer.prepare_batch(faces, samples[span], [p for p, _ in done["read"][span]])
                            for span in spans]

    def forward() -> None:
        done["outputs"] = [backend.forward(batch) for _, batch in done["prepared"]]

    def keys() -> None:
        done["keys"] = [[CacheKey(kind, model.fingerprint, preparation, content) for kind in FORWARD_KINDS]
                        for _, content in done["read"]]

    def cache() -> None:
        with ResultCache(folder / f"stages-{next(fresh)}.sqlite") as store:
            for span, (logits, features), (prepared, _) in zip(spans, done["outputs"], done["prepared"]):
                store.get_many([key for row_keys in done["keys"][span] for key in row_keys])
                entries: dict[CacheKey, np.ndarray] = {}
                for row_keys, *outputs, face in zip(done["keys"][span], logits.numpy(), features.numpy(), prepared):
                    box = np.array([face.face_found, face.face_score, *face.box], np.float32)
                    entries.update(zip(row_keys, (*outputs, box)))  # FORWARD_KINDS' order
                store.put_many(entries)
    return interleaved_timings(dict(zip(STAGES, (read, prepare, forward, keys, cache))), args.rounds)


def pass_options(args: argparse.Namespace) -> InferenceOptions:
    """The dataset passes' settings: the benchmark's batch size and backend, no progress bars."""
    return InferenceOptions(batch_size=args.batch_size, backend=args.backend, progress=False)


def output_checks(model: FerModel, faces: FaceDataset, bare_logits: np.ndarray, bare_features: np.ndarray,
                  folder: Path, args: argparse.Namespace) -> dict[str, float]:
    """Max |difference| of the end-to-end outputs from the bare forward's, and the cache's
    entries per face."""
    options = pass_options(args)
    with ResultCache(folder / "check.sqlite") as cache:
        _, computed = embed_dataset(model, faces, cache, options=options)
        entries = len(cache)
        _, stored = embed_dataset(model, faces, cache, options=options)
        table = predict_dataset(model, faces, folder / "check", cache=cache, options=options)
    probabilities = torch.from_numpy(bare_logits).double().softmax(dim=1).numpy()
    return {"embed features": max_abs_difference(computed, bare_features),
            "embed features read back from the cache": max_abs_difference(stored, computed),
            "predict probabilities": max_abs_difference(table[list(PROB_COLUMNS)].to_numpy(), probabilities),
            "cache entries per face": entries / len(faces)}


def measure(args: argparse.Namespace) -> dict:
    """Median seconds (and process CPU seconds) of the bare forward, ``embed`` and ``predict``
    over the faces, and :func:`output_checks`."""
    model = benchmark_model(args.model, args.input_size)
    faces = open_dataset(args.dataset, args.data)
    faces = faces.subset(np.arange(min(args.faces, len(faces))))
    backend = load_backend(model, args.backend)
    images = [faces.read(sample) for sample in faces]
    size = args.batch_size
    prepared = [model.preprocessing.batch(images[i:i + size]) for i in range(0, len(images), size)]
    fresh = itertools.count()
    options = pass_options(args)
    with tempfile.TemporaryDirectory() as tmp:
        def bare() -> None:
            for batch in prepared:
                backend.forward(batch)

        def embed() -> None:
            with ResultCache(Path(tmp) / f"embed-{next(fresh)}.sqlite") as cache:
                embed_dataset(model, faces, cache, options=options)

        def predict() -> None:
            run = next(fresh)
            with ResultCache(Path(tmp) / f"predict-{run}.sqlite") as cache:
                predict_dataset(model, faces, Path(tmp) / f"predict-{run}", cache=cache, options=options)

        paths = {"bare forward": bare, "embed (end to end)": embed, "predict (end to end)": predict}
        load_at_start = machine_note()
        timings = interleaved_timings(paths, args.rounds)
        bare_logits, bare_features = (np.concatenate(parts) for parts in
                                      zip(*((o.numpy() for o in backend.forward(batch)) for batch in prepared)))
        checks = output_checks(model, faces, bare_logits, bare_features, Path(tmp), args)
        stages = stage_timings(model, faces, Path(tmp), args) if args.stages else {}
    return {"model": f"{model.architecture} at {model.input_size} px", "faces": len(faces),
            "seconds": {name: timing.wall for name, timing in timings.items()},
            "cpu_seconds": {name: timing.cpu for name, timing in timings.items()}, "checks": checks,
            "stage_cpu_seconds": {name: timing.cpu for name, timing in stages.items()},
            "load_at_start": load_at_start, "machine": machine_note()}


def report(args: argparse.Namespace, result: dict) -> int:
    """Print the rates, the output checks and the goal; the exit status."""
    seconds, cpu_seconds, count = result["seconds"], result["cpu_seconds"], result["faces"]
    print(f"{result['model']}, backend {args.backend}, batch {args.batch_size}, {count} {args.dataset} faces, "
          f"{args.rounds} alternating rounds; at the start: {result['load_at_start']}; at the end: {result['machine']}")
    print(table([{"path": name, "faces/s": count / s, "x bare": seconds["bare forward"] / s,
                  "CPU ms/face": 1000 * cpu_seconds[name] / count,
                  "x bare (CPU)": cpu_seconds["bare forward"] / cpu_seconds[name]} for name, s in seconds.items()]))
    print("outputs against the bare forward: " + "; ".join(f"{name} {value:.3g}"
                                                          for name, value in result["checks"].items()))
    worst = min(seconds["bare forward"] / seconds[name] for name in ("embed (end to end)", "predict (end to end)"))
    print(f"P1: end to end {worst:.2f}x the bare forward (goal >= {GOAL}x): {'met' if worst >= GOAL else 'NOT met'}")
    stages = result["stage_cpu_seconds"]
    if stages:
        embed, summed = cpu_seconds["embed (end to end)"], sum(stages.values())
        others = summed - stages["forward"]
        rows = [{"stage of embed, run alone": name, "CPU ms/face": 1000 * s / count, "share of the sum": s / summed}
                for name, s in stages.items()]
        rows += [{"stage of embed, run alone": "sum of the stages", "CPU ms/face": 1000 * summed / count,
                  "share of the sum": 1.0},
                 {"stage of embed, run alone": "embed end to end minus the sum (threads, queues, hand-offs)",
                  "CPU ms/face": 1000 * (embed - summed) / count, "share of the sum": (embed - summed) / summed}]
        print(table(rows))
        print(f"with no core free beside the model, end to end reaches at most forward / sum of the stages = "
              f"{stages['forward'] / summed:.2f}x; for {GOAL}x the other stages may cost "
              f"{1000 * (1 / GOAL - 1) * stages['forward'] / count:.3f} CPU ms/face (they cost "
              f"{1000 * others / count:.3f})")
    return 0 if worst >= GOAL or args.smoke else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return report(args, measure(args))


if __name__ == "__main__":
    raise SystemExit(main())
