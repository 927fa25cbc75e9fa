"""Training-step throughput of the contenders in :data:`CONTENDERS`, measured in one run: the
base optimizer (AdamW) in NCHW float32, SAM, channels_last, bf16 autocast, ``torch.compile``
and two threads instead of one; and what feeding the step costs (:func:`data_rates`).

Every contender uses the same network (from the same seed), the same real FER+ faces
(decoded and preprocessed once, so only the training step is timed) and the training
engine's own step (:meth:`fer_core.training.Trainer._train_step`: SAM's two passes with
BatchNorm statistics from the first pass only). channels_last converts the module and the
batches as :meth:`~fer_core.training.Trainer.fit` does with ``channels_last`` (the trainer's
default on CPU); bf16 autocast wraps the step in ``torch.autocast`` (on CUDA the trainer's own
``mixed_precision``); compiled contenders train ``torch.compile(module)`` (inductor; the first,
untimed step compiles); a two-thread contender sets ``torch.set_num_threads(2)`` around its
steps. Rounds alternate the contenders (A B C A B C ...) so that load on the
machine hits all alike; the median round time of each gives images per second, and
:data:`RATIOS` compares them, in wall-clock time and in the process's CPU time (with one
thread, the CPU time leaves out the waits for a core that other jobs cause); the load average
is printed at the start and the end. SAM computes two forward/backward passes per step, so it
should cost about 2x (at most 2.2x). ``--contenders`` measures a subset (the reference
always runs).

The first step of every contender starts from the same weights and dropout draws, so its
gradients are compared with the NCHW float32 step's (SAM's are those of its second pass, so
it is left out): the layouts and precisions must compute the same step.

    OMP_NUM_THREADS=1 python benchmarks/train_speed.py --ferplus data/real/ferplus \\
        --architecture tf_efficientnet_b0_ns --rounds 5
    OMP_NUM_THREADS=1 python benchmarks/train_speed.py --ferplus data/real/ferplus \\
        --architecture tf_efficientnet_b0_ns --input-size 112 --steps 1 --rounds 6 \\
        --contenders "adamw channels_last fp32" "adamw NCHW bf16 autocast" "adamw channels_last bf16 autocast"
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from pathlib import Path
from typing import Sequence

import torch

from common import interleaved_seconds, interleaved_timings, machine_note, parse_with_smoke, table
from fer_core.data import FerPlusDataset, TorchFaceDataset, collate_skip_bad, stratified_split
from fer_core.labels import NUM_CLASSES
from fer_core.models import TINY_ARCHITECTURE
from fer_core.preprocess import (AugmentSettings, Preprocessing, channels_first, pixel_augmentation,
                                 tensor_augmentation)
from fer_core.training import FaceTransform, Stage, Trainer, TrainSettings

#: SAM's cost over the base optimizer that still counts as "about 2x".
MAX_SAM_COST = 2.2
REFERENCE = "adamw NCHW fp32"


@dataclasses.dataclass(frozen=True)
class Contender:
    """One way to run the training step."""

    sam: bool = False
    channels_last: bool = False
    bf16: bool = False
    compiled: bool = False
    threads: int = 1


CONTENDERS = {
    REFERENCE: Contender(),
    "sam NCHW fp32": Contender(sam=True),
    "adamw channels_last fp32": Contender(channels_last=True),
    "adamw NCHW bf16 autocast": Contender(bf16=True),
    "adamw channels_last bf16 autocast": Contender(channels_last=True, bf16=True),
    "adamw channels_last fp32 compiled": Contender(channels_last=True, compiled=True),
    "adamw channels_last fp32 2 threads": Contender(channels_last=True, threads=2),
}
#: Each ratio: (slower, faster) contender, i.e. seconds[slower] / seconds[faster].
RATIOS = {
    "SAM cost (x AdamW step time)": ("sam NCHW fp32", REFERENCE),
    "channels_last speed-up (fp32)": (REFERENCE, "adamw channels_last fp32"),
    "bf16 autocast speed-up (NCHW)": (REFERENCE, "adamw NCHW bf16 autocast"),
    "bf16 autocast speed-up (channels_last)": ("adamw channels_last fp32", "adamw channels_last bf16 autocast"),
    "torch.compile speed-up (channels_last)": ("adamw channels_last fp32", "adamw channels_last fp32 compiled"),
    "2 threads speed-up (channels_last)": ("adamw channels_last fp32", "adamw channels_last fp32 2 threads"),
}
#: The smoke run leaves out compiling: inductor took minutes even for the tiny network here.
SMOKE = {"architecture": TINY_ARCHITECTURE, "input_size": 48, "batch_size": 8, "steps": 1, "rounds": 1, "data_faces": 16,
         "contenders": [name for name, contender in CONTENDERS.items() if not contender.compiled]}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ferplus", type=Path, default=Path("data/real/ferplus"), help="the FER+ folder")
    parser.add_argument("--architecture", default=TINY_ARCHITECTURE, help="e.g. tf_efficientnet_b0_ns")
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds of the contenders")
    parser.add_argument("--rho", type=float, default=0.05, help="SAM's radius")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-faces", type=int, default=256, help="faces timed for the data-feeding rates")
    parser.add_argument("--contenders", nargs="+", choices=list(CONTENDERS), default=list(CONTENDERS),
                        metavar="NAME", help=f"a subset of the contenders (default: all; {REFERENCE!r} always runs): "
                                             + ", ".join(map(repr, CONTENDERS)))
    args = parse_with_smoke(parser, argv, SMOKE)
    args.contenders = [name for name in CONTENDERS if name in {REFERENCE, *args.contenders}]
    return args


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


class Runner:
    """A trainer, its optimizer and its batches, laid out and cast as ``contender`` says."""

    def __init__(self, contender: Contender, base: TrainSettings, rho: float, batches: list, validation) -> None:
        settings = dataclasses.replace(base, sam_rho=rho if contender.sam else 0.0,
                                       channels_last=contender.channels_last, mixed_precision=contender.bf16)
        self.trainer = Trainer(Path("unused"), settings, validation, validation)  # never fit
        self.trainer.module.to(settings.device).train()
        layout = torch.channels_last if contender.channels_last else torch.contiguous_format
        self.trainer.module.to(memory_format=layout)
        self.batches = [(images.contiguous(memory_format=layout), targets) for images, targets in batches]
        self.optimizer = self.trainer._optimizer(settings.stages[0])
        self.network = torch.compile(self.trainer.module) if contender.compiled else self.trainer.module
        self.threads = contender.threads
        # the trainer autocasts on CUDA itself (mixed_precision); on CPU this does
        self.cpu_bf16 = contender.bf16 and self.trainer.device.type == "cpu"
        self.step_number = 0

    def step(self) -> float:
        """One training step on the next batch; its loss."""
        images, targets = self.batches[self.step_number % len(self.batches)]
        self.step_number += 1
        cast = torch.autocast("cpu", dtype=torch.bfloat16) if self.cpu_bf16 else contextlib.nullcontext()
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with cast:
                loss = self.trainer._train_step(self.network, self.optimizer, images, targets)
        finally:
            torch.set_num_threads(threads)
        if images.is_cuda:
            torch.cuda.synchronize()
        return loss

    def gradients(self) -> torch.Tensor:
        """Every parameter's gradient from the last step, flattened in a fixed layout."""
        return torch.cat([p.grad.float().contiguous().flatten() for p in self.trainer.module.parameters()
                          if p.grad is not None])


def data_rates(ferplus: Path, settings: TrainSettings, count: int) -> dict[str, float]:
    """Faces per second that feed a training step in one process: the trainer's path (read the
    PNG, decode, resize, augment, normalise) and the same faces held in memory as one uint8
    tensor (augment and normalise only)."""
    faces = FerPlusDataset(ferplus, "train").subset(range(count))
    preprocessing = Preprocessing(settings.input_size)
    from_files = TorchFaceDataset(faces, FaceTransform(preprocessing, pre_cropped=True, augment=AugmentSettings()))
    in_memory = torch.stack([channels_first(preprocessing.resize(faces.read(face))) for face in faces])
    pixel_aug, tensor_aug = pixel_augmentation(AugmentSettings()), tensor_augmentation(AugmentSettings())
    seconds = interleaved_seconds({
        "from files": lambda: [from_files[i] for i in range(count)],
        "in-memory uint8": lambda: [tensor_aug(preprocessing.normalize(pixel_aug(pixels))) for pixels in in_memory],
    }, rounds=3)
    return {name: count / value for name, value in seconds.items()}


def measure(args: argparse.Namespace) -> dict:
    """Median seconds per step of each contender, the :data:`RATIOS`, and each contender's
    first-step gradients relative to the reference's (``|g - g_ref| / |g_ref|``)."""
    base = TrainSettings(architecture=args.architecture, input_size=args.input_size, stages=(Stage(1, 1e-3, "all"),),
                         batch_size=args.batch_size, augment=None, soft_targets=False, device=args.device)
    batches = real_batches(args.ferplus, base, count=4)
    validation = FerPlusDataset(args.ferplus, "valid")
    runners, first_gradients = {}, {}
    for name in args.contenders:
        contender = CONTENDERS[name]
        runners[name] = Runner(contender, base, args.rho, batches, validation)
        torch.manual_seed(0)  # the same dropout draws in every contender's first step
        runners[name].step()  # the first step is also the warm-up
        if not contender.sam:
            first_gradients[name] = runners[name].gradients()
    reference = first_gradients[REFERENCE]
    gradient_difference = {name: float((g - reference).norm() / reference.norm()) for name, g in first_gradients.items()}

    def steps(runner: Runner) -> None:
        for _ in range(args.steps):
            runner.step()
    load_at_start = machine_note()
    timings = interleaved_timings({name: (lambda r=runner: steps(r)) for name, runner in runners.items()},
                                  args.rounds, warmup=0)
    per_step = {name: t.wall / args.steps for name, t in timings.items()}
    cpu_per_step = {name: t.cpu / args.steps for name, t in timings.items()}
    measured = {label: pair for label, pair in RATIOS.items() if set(pair) <= set(per_step)}
    return {"seconds_per_step": per_step, "cpu_seconds_per_step": cpu_per_step,
            "images_per_second": {n: args.batch_size / s for n, s in per_step.items()},
            "ratios": {label: per_step[slower] / per_step[faster] for label, (slower, faster) in measured.items()},
            "cpu_ratios": {label: cpu_per_step[slower] / cpu_per_step[faster]
                           for label, (slower, faster) in measured.items()},
            "gradient_difference": gradient_difference, "data_faces_per_second": data_rates(args.ferplus, base, args.data_faces),
            "load_at_start": load_at_start, "machine": machine_note()}


def report(args: argparse.Namespace, result: dict) -> int:
    """Print the contenders' rates, their gradient agreement and the ratios; the exit status."""
    print(f"{args.architecture} at {args.input_size} px, batch {args.batch_size}, {args.device}, "
          f"{args.rounds} alternating rounds x {args.steps} steps each; at the start: {result['load_at_start']}; "
          f"at the end: {result['machine']}")
    print(table([{"contender": name, "img/s": rate, "median step ms": 1000 * result["seconds_per_step"][name],
                  "median step CPU ms": 1000 * result["cpu_seconds_per_step"][name],
                  "first-step grad rel. diff": result["gradient_difference"].get(name, "n/a (SAM)")}
                 for name, rate in result["images_per_second"].items()]))
    for label, ratio in result["ratios"].items():
        print(f"  {label}: {ratio:.2f}x (CPU time: {result['cpu_ratios'][label]:.2f}x)")
    step_rate = max(result["images_per_second"].values())
    for name, rate in result["data_faces_per_second"].items():
        print(f"  data {name}: {rate:.0f} faces/s in one process; feeding the fastest step ({step_rate:.0f} img/s) "
              f"takes {step_rate / (rate + step_rate):.0%} of a training epoch without loader workers")
    sam_cost = result["ratios"].get("SAM cost (x AdamW step time)")
    if sam_cost is not None:
        print(f"  SAM {'within' if sam_cost <= MAX_SAM_COST else 'OVER'} {MAX_SAM_COST}x the base optimizer")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return report(args, measure(args))


if __name__ == "__main__":
    raise SystemExit(main())
