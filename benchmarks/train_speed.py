"""Training throughput of the base optimizer (AdamW) against SAM, measured in one run.

Both use the same network (from the same seed), the same real FER+ faces (decoded and
preprocessed once, so only the training step is timed) and the training engine's own step
(:meth:`fer_core.training.Trainer._train_step`: SAM's two passes with BatchNorm statistics
from the first pass only). Rounds alternate between the two so that load on the machine hits
both alike; the median step time of each gives images per second. SAM computes two
forward/backward passes per step, so it should cost about 2x (at most 2.2x).

    OMP_NUM_THREADS=1 python benchmarks/train_speed.py --ferplus .testdata/ferplus
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch

from fer_core.data import FerPlusDataset, TorchFaceDataset, collate_skip_bad, stratified_split
from fer_core.labels import NUM_CLASSES
from fer_core.models import TINY_ARCHITECTURE
from fer_core.preprocess import Preprocessing
from fer_core.training import FaceTransform, Stage, Trainer, TrainSettings

#: SAM's cost over the base optimizer that still counts as "about 2x".
MAX_RATIO = 2.2


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ferplus", type=Path, default=Path("data/real/ferplus"), help="the FER+ folder")
    parser.add_argument("--architecture", default=TINY_ARCHITECTURE, help="e.g. tf_efficientnet_b0_ns")
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds of each optimizer")
    parser.add_argument("--rho", type=float, default=0.05, help="SAM's radius")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args()


def real_batches(ferplus: Path, settings: TrainSettings, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` batches of real FER+ training faces, preprocessed once, with one-hot targets."""
    dataset = FerPlusDataset(ferplus, "train")
    share = count * settings.batch_size / len(dataset)
    faces = dataset.subset(stratified_split(dataset.labels, {"use": share, "rest": 1 - share}, seed=0)["use"])
    wrapped = TorchFaceDataset(faces, FaceTransform(Preprocessing(settings.input_size), pre_cropped=True))
    batches = []
    for start in range(0, count * settings.batch_size, settings.batch_size):
        batch = collate_skip_bad([wrapped[i] for i in range(start, start + settings.batch_size)])
        targets = torch.nn.functional.one_hot(batch["label"], NUM_CLASSES).float()
        batches.append((batch["image"].to(settings.device), targets.to(settings.device)))
    return batches


def step_seconds(trainer: Trainer, optimizer: torch.optim.Optimizer, batches: list, steps: int) -> list[float]:
    """Wall time of each of ``steps`` training steps."""
    times = []
    for step in range(steps):
        images, targets = batches[step % len(batches)]
        start = time.perf_counter()
        trainer._train_step(optimizer, images, targets)
        if images.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    args = parse_args()
    base = TrainSettings(architecture=args.architecture, input_size=args.input_size, stages=(Stage(1, 1e-3, "all"),),
                         batch_size=args.batch_size, augment=None, soft_targets=False, device=args.device)
    variants = {"adamw": base, "sam": dataclasses.replace(base, sam_rho=args.rho)}
    batches = real_batches(args.ferplus, base, count=4)
    dataset = FerPlusDataset(args.ferplus, "valid")
    trainers, optimizers, times = {}, {}, {name: [] for name in variants}
    for name, settings in variants.items():
        trainer = Trainer(Path("unused"), settings, dataset, dataset)  # never fit; same seed, same initial weights
        trainer.module.to(args.device).train()
        trainers[name], optimizers[name] = trainer, trainer._optimizer(settings.stages[0])
        step_seconds(trainer, optimizers[name], batches, 2)  # warm-up
    for _ in range(args.rounds):
        for name in variants:
            times[name] += step_seconds(trainers[name], optimizers[name], batches, args.steps)
    rate = {name: args.batch_size / statistics.median(t) for name, t in times.items()}
    ratio = rate["adamw"] / rate["sam"]
    threads = torch.get_num_threads()
    print(f"{args.architecture} at {args.input_size} px, batch {args.batch_size}, {args.device} "
          f"({threads} threads), {args.rounds} x {args.steps} steps each:")
    for name, value in rate.items():
        print(f"  {name}: {value:.1f} img/s (median step {1000 * statistics.median(times[name]):.1f} ms)")
    print(f"  SAM costs {ratio:.2f}x the base optimizer ({'within' if ratio <= MAX_RATIO else 'OVER'} {MAX_RATIO}x)")
    print("\n| architecture | input | batch | device | AdamW img/s | SAM img/s | SAM cost |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {args.architecture} | {args.input_size} | {args.batch_size} | {args.device} ({threads} threads) "
          f"| {rate['adamw']:.1f} | {rate['sam']:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
