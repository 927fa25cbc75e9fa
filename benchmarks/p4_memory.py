"""P4: peak memory of streaming extraction, 35k faces against 3.5k faces.

FER2013 train + test (28,709 + 7,178 faces) are run through ``predict_dataset`` with a
result cache (decode, preprocess, forward, cache write, parquet parts), the first 3,500 and
the first 35,000 of them, each in a fresh subprocess whose peak RSS (``ru_maxrss``) is
reported. Streaming means memory does not grow with the dataset: goal ratio <= 1.2. The
network is MobileNetV3-small at 48 px (random weights from seed 0: memory does not depend on
them) so both runs finish in minutes on 2 cores; ``--architecture tf_efficientnet_b0_ns``
works too, and ``--model`` takes trained weights instead. ``embed_dataset`` returns every
feature vector as one array, so its memory grows by design (35,000 x feature_dim float32);
``--embed`` measures it as well. The outputs of the faces both runs share (the first few
probabilities or features) are compared: streaming more faces must not change them.

    OMP_NUM_THREADS=1 python benchmarks/p4_memory.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from common import machine_note, max_abs_difference, parse_with_smoke

GOAL = 1.2
#: The first faces whose outputs (probabilities; the first feature columns for embed) each
#: worker reports, to compare between the two sizes.
COMPARED_FACES, COMPARED_FEATURES = 8, 16
SMOKE = {"sizes": [8, 16]}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--sizes", type=int, nargs=2, default=[3500, 35000])
    parser.add_argument("--architecture", default="mobilenetv3_small_050", help="random weights of it (seed 0)")
    parser.add_argument("--model", type=Path, help="trained weights instead of --architecture")
    parser.add_argument("--input-size", type=int, default=48)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--embed", action="store_true", help="also embed_dataset (returns an O(N) array)")
    parser.add_argument("--worker", nargs=2, metavar=("TASK", "FACES"), help=argparse.SUPPRESS)
    return parse_with_smoke(parser, argv, SMOKE)


def worker(args: argparse.Namespace, task: str, count: int) -> dict:
    """Run ``task`` over the first ``count`` FER2013 faces in this process; its peak RSS and
    the outputs of the first :data:`COMPARED_FACES` faces."""
    import torch

    from fer_core.backends import InferenceOptions
    from fer_core.cache import ResultCache
    from fer_core.data import FaceDataset, Sample, open_dataset
    from fer_core.inference import PROB_COLUMNS, embed_dataset, predict_dataset
    from fer_core.models import FerModel, load_model

    class Joined(FaceDataset):
        """Datasets one after the other (FER2013 train, then test)."""

        def __init__(self, parts: list[FaceDataset]) -> None:
            super().__init__("fer2013:train+test", parts[0].emotions, parts[0].pre_cropped, parts[0].domain)
            self.parts = parts
            self.starts = np.cumsum([0] + [len(p) for p in parts])
            self._labels = np.concatenate([p.labels for p in parts])

        @property
        def labels(self) -> np.ndarray:
            return self._labels

        def _sample(self, index: int) -> Sample:
            part = int(np.searchsorted(self.starts, index, side="right")) - 1
            return self.parts[part][index - int(self.starts[part])]

        def read(self, sample: Sample) -> np.ndarray:
            return self.parts[0].read(sample)

    faces = Joined([open_dataset("fer2013:train", args.data), open_dataset("fer2013:test", args.data)])
    torch.manual_seed(0)
    model = load_model(args.model) if args.model else FerModel.from_architecture(args.architecture)
    model = FerModel(model.module, model.architecture, model.emotions, args.input_size)
    options = InferenceOptions(backend=args.backend, progress=False)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, ResultCache(Path(tmp) / "cache.sqlite") as cache:
        if task == "predict":
            table = predict_dataset(model, faces, Path(tmp) / "out", limit=count, cache=cache, options=options)
            done, first = len(table), table[list(PROB_COLUMNS)].to_numpy()[:COMPARED_FACES]
        else:
            keys, features = embed_dataset(model, faces, cache, limit=count, options=options)
            done, first = len(keys), features[:COMPARED_FACES, :COMPARED_FEATURES]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"faces": done, "peak_rss_mib": peak, "seconds": time.perf_counter() - start,
            "first_outputs": first.astype(float).tolist()}


def measure(args: argparse.Namespace) -> dict[str, dict]:
    """Per task: each size's worker result, the peak RSS ratio, and the largest difference
    between the two workers' outputs on the faces they share."""
    results = {}
    for task in ("predict", "embed") if args.embed else ("predict",):
        runs = []
        for count in args.sizes:
            command = [sys.executable, __file__, "--data", str(args.data), "--architecture", args.architecture,
                       "--input-size", str(args.input_size), "--backend", args.backend, "--worker", task, str(count)]
            command += ["--model", str(args.model)] if args.model else []
            output = subprocess.run(command, check=True, capture_output=True, text=True, env=os.environ).stdout
            runs.append(json.loads(output.strip().splitlines()[-1]))
            print(f"{task} {count} faces: peak RSS {runs[-1]['peak_rss_mib']:.0f} MiB, "
                  f"{runs[-1]['seconds']:.1f} s", flush=True)
        small, large = runs
        shared = min(len(small["first_outputs"]), len(large["first_outputs"]))
        results[task] = {"small": small, "large": large, "ratio": large["peak_rss_mib"] / small["peak_rss_mib"],
                         "output_difference": max_abs_difference(np.array(small["first_outputs"][:shared]),
                                                                 np.array(large["first_outputs"][:shared]))}
    return results


def report(args: argparse.Namespace, results: dict[str, dict]) -> int:
    """Print each task's peak RSS ratio and output agreement; the exit status."""
    ok = True
    network = args.model or args.architecture
    for task, result in results.items():
        small, large, ratio = result["small"], result["large"], result["ratio"]
        met = ratio <= GOAL
        ok &= met or task == "embed"
        print(f"P4 ({task}, {network} at {args.input_size} px, backend {args.backend}): peak RSS "
              f"{large['peak_rss_mib']:.0f} MiB over {large['faces']} faces vs {small['peak_rss_mib']:.0f} MiB over "
              f"{small['faces']}: {ratio:.3f}x (goal <= {GOAL}x): {'met' if met else 'NOT met'}; outputs of the "
              f"shared faces differ by {result['output_difference']:.1e}; {machine_note()}")
    return 0 if ok or args.smoke else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args, args.worker[0], int(args.worker[1]))))
        return 0
    return report(args, measure(args))


if __name__ == "__main__":
    raise SystemExit(main())
