"""Headless training: stages (frozen backbone, gradual unfreezing, full), AdamW or SAM,
soft targets, label smoothing, class weights, augmentation, warmup + cosine schedule,
atomic per-epoch checkpoints, exact resume, and the best epoch chosen on validation.

A run directory holds ``run.json`` (settings and data), ``history.json`` (per-epoch loss,
validation accuracy and macro-F1), ``checkpoint.pt`` (the last finished epoch) and
``best.safetensors`` / ``best.json`` (the model of the best validation epoch).

Under ``torchrun`` (inside :func:`fer_core.training.distributed.process_group`) the same loop is
data-parallel: ``batch_size`` is the global batch, split evenly over the ranks, so the steps
per epoch and the schedule do not depend on the number of processes; a DistributedSampler
(seeded with ``seed``, reshuffled each epoch) deals each rank its share of every global batch;
augmentation and dropout draw from a stream seeded per (seed, epoch, rank). Rank 0 alone
validates (the figures are exactly a single-process validation) and writes the run files;
the other ranks wait for it, and on resume every rank loads the checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import os
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from fer_core import __version__
from fer_core.data import FaceDataset, TorchFaceDataset, collate_skip_bad
from fer_core.errors import DataError, InvalidArgument
from fer_core.faces import FacePipeline
from fer_core.extraction import find_face
from fer_core.labels import EMOTIONS, NUM_CLASSES
from fer_core.models import FerModel, create_model, save_model
from fer_core.preprocess import AugmentSettings, Preprocessing, create_transform
from fer_core.runs import provenance_record, utc_now, write_json_atomic
from fer_core.scoring import DEFAULT_PROTOCOL, score, scoring_for
from fer_core.training import distributed
from fer_core.training.sam import SAM, FrozenBatchNormStats
from fer_core.validation import Interval, validate_params

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.json"
BEST = "best"


@validate_params({"epochs": [Interval(Integral, 1, None)], "lr": [Interval(Real, 0, None, closed="neither")],
                  "trainable": [str]})
@dataclass(frozen=True)
class Stage:
    """A training stage: ``epochs`` at peak ``lr`` with ``trainable`` parameters:
    ``"head"`` (backbone frozen), ``"all"``, or ``"top:N"`` (head plus the last N blocks)."""

    epochs: int
    lr: float
    trainable: str = "all"


def describe_stages(stages: tuple[Stage, ...]) -> str:
    """``head 3 epochs at lr 0.001, all 6 epochs at lr 0.0001``."""
    return ", ".join(f"{s.trainable} {s.epochs} epoch{'s' * (s.epochs != 1)} at lr {s.lr:g}" for s in stages)


#: HSEmotion's fine-tuning recipe: head only, then everything.
HSEMOTION_STAGES = (Stage(3, 1e-3, "head"), Stage(6, 1e-4, "all"))
#: The plan's gradual unfreezing for fine-tuning on synthetic faces (RQ2).
GRADUAL_UNFREEZING_STAGES = (Stage(2, 1e-3, "head"), Stage(2, 3e-4, "top:2"), Stage(2, 1e-4, "top:4"),
                             Stage(3, 5e-5, "all"))


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides a training run (stored in ``run.json``)."""

    architecture: str = "tf_efficientnet_b0_ns"
    input_size: int = 224
    stages: tuple[Stage, ...] = HSEMOTION_STAGES
    batch_size: int = 64
    optimizer: Literal["adamw", "adam"] = "adamw"
    weight_decay: float = 0.05
    sam_rho: float = 0.0  # > 0 wraps the optimizer in SAM (the plan's RobustOptimizer, rho 0.05)
    sam_bn_first_pass_only: bool = True
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    soft_targets: bool = True  # use vote distributions (FER+) when the data has them
    class_weights: bool = False  # inverse-frequency loss weights
    #: Logit adjustment (Menon et al. 2021): train on ``logits + tau * log(prior)`` with the training
    #: set's class prior, predict with the plain logits, so rare classes are not swamped (0: off).
    logit_adjustment: float = 0.0
    augment: AugmentSettings | None = field(default_factory=AugmentSettings)
    #: Mixup (Zhang et al. 2018): each batch is blended with a shuffled copy of itself, images and
    #: targets alike, by a weight drawn from Beta(alpha, alpha) (0: off).
    mixup_alpha: float = 0.0
    #: Keep an exponential moving average of the weights (Polyak averaging) with this decay per
    #: step; validation, the best epoch and the saved model use the average (0: off).
    ema_decay: float = 0.0
    #: Train (and run) on grey levels: for grey training sets such as FER+ and FER2013, so colour
    #: photos are seen as the training faces were. A fine-tuned model keeps its initial model's.
    grayscale: bool = False
    drop_rate: float = 0.2  # dropout before the classifier
    select_metric: Literal["accuracy", "macro_f1"] = "accuracy"
    seed: int = 0
    max_steps_per_epoch: int | None = None  # for quick trials and tests
    #: Data-loading processes for the training batches (0: in the training process). On a GPU the
    #: decoding and augmentation of one process (~500-800 faces/s measured here) starve the model.
    #: Each worker draws its augmentation from its own seeded stream, so a run is reproducible for
    #: a given count, but not equal across counts.
    loader_workers: int = 0
    device: str = "cpu"
    #: NHWC module and batches: the fastest layout measured for a CPU training step (B0 at 64 and 112 px
    #: 1.3-1.6x NCHW, bf16 autocast slower; ``benchmarks/train_speed.py``, docs/benchmarks.md).
    channels_last: bool = True
    mixed_precision: bool = False  # bf16 autocast on CUDA

    def __post_init__(self) -> None:
        if not self.stages:
            raise InvalidArgument("train stages: expected one or more Stage(epochs, lr, trainable), got none")
        if self.loader_workers < 0:
            raise InvalidArgument(f"loader_workers: expected 0 or more, got {self.loader_workers}")
        if not 0 <= self.ema_decay < 1:
            raise InvalidArgument(f"ema_decay: expected a number in [0, 1), got {self.ema_decay}")
        if self.mixup_alpha < 0:
            raise InvalidArgument(f"mixup_alpha: expected 0 or more, got {self.mixup_alpha}")
        for stage in self.stages:
            _trainable_filter(stage.trainable)

    @property
    def epochs(self) -> int:
        return sum(s.epochs for s in self.stages)

    def describe(self) -> str:
        """Every setting that shapes the run, in one line (printed when training starts)."""
        optimizer = self.optimizer + (f" + SAM (rho {self.sam_rho:g})" if self.sam_rho > 0 else "")
        extras = [f"at most {self.max_steps_per_epoch} step(s) per epoch" if self.max_steps_per_epoch else "",
                  "class weights" if self.class_weights else "",
                  f"logit adjustment {self.logit_adjustment:g}" if self.logit_adjustment else "",
                  f"mixup alpha {self.mixup_alpha:g}" if self.mixup_alpha else "",
                  f"weight average (EMA) decay {self.ema_decay:g}" if self.ema_decay else "",
                  "grey levels" if self.grayscale else ""]
        return (f"{self.architecture} at {self.input_size} px; {describe_stages(self.stages)}; batch {self.batch_size}, "
                f"{optimizer}, weight decay {self.weight_decay:g}, warmup {self.warmup_epochs:g} epoch(s), label "
                f"smoothing {self.label_smoothing:g}, {'soft' if self.soft_targets else 'hard'} targets, augmentation "
                f"{'on' if self.augment else 'off'}, dropout {self.drop_rate:g}, best epoch by val "
                f"{self.select_metric}, seed {self.seed}, {self.device}"
                + "".join(f", {extra}" for extra in extras if extra))

    def stage_of(self, epoch: int) -> tuple[int, Stage]:
        """The index and stage that ``epoch`` (0-based) belongs to."""
        end = 0
        for number, stage in enumerate(self.stages):
            end += stage.epochs
            if epoch < end:
                return number, stage
        raise ValueError(f"epoch {epoch} is past the last stage")


def _trainable_filter(trainable: str) -> int | None:
    """``None`` for all parameters, 0 for the head only, N for the last N blocks."""
    if trainable == "all":
        return None
    if trainable == "head":
        return 0
    kind, _, count = trainable.partition(":")
    if kind == "top" and count.isdigit():
        return int(count)
    raise InvalidArgument(f"stage trainable {trainable!r}: expected 'head', 'all' or 'top:N'")


def set_trainable(module: nn.Module, trainable: str) -> None:
    """Freeze everything but what ``trainable`` names (the classifier always trains)."""
    top = _trainable_filter(trainable)
    for p in module.parameters():
        p.requires_grad_(top is None)
    if top is None:
        return
    parts: list[nn.Module] = [module.get_classifier()]
    blocks = list(getattr(module, "blocks", []))
    if top > 0:
        parts += blocks[len(blocks) - top:] + [getattr(module, n) for n in ("conv_head", "bn2") if hasattr(module, n)]
    for part in parts:
        for p in part.parameters():
            p.requires_grad_(True)


class FaceTransform:
    """Image -> model input: :func:`~fer_core.extraction.find_face`, then the transform that
    :func:`~fer_core.preprocess.create_transform` makes of ``preprocessing`` (for training, with
    ``augment``, when it is given; else for evaluation, as prediction prepares faces)."""

    def __init__(self, preprocessing: Preprocessing, pre_cropped: bool, face_pipeline: FacePipeline | None = None,
                 augment: AugmentSettings | None = None) -> None:
        self.pre_cropped = pre_cropped
        self.face_pipeline = face_pipeline
        self.transform = create_transform(preprocessing, is_training=augment is not None, augment=augment)

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        return self.transform(find_face(rgb, self.pre_cropped, self.face_pipeline)[0].image)


def class_weights(labels: np.ndarray) -> torch.Tensor:
    """Inverse-frequency weights over the 8 classes, mean 1 over the classes present."""
    counts = np.bincount(labels[labels >= 0], minlength=NUM_CLASSES).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1), 0.0)
    weights /= weights[counts > 0].mean()
    return torch.tensor(weights, dtype=torch.float32)


def class_log_prior(labels: np.ndarray, allowed: torch.Tensor) -> torch.Tensor:
    """Log class frequencies over the 8 classes (one pseudo-count each for the ``allowed`` classes,
    so a class with no majority label keeps a finite prior; 0 for classes not allowed)."""
    counts = np.bincount(labels[labels >= 0], minlength=NUM_CLASSES).astype(np.float64) + allowed.numpy()
    prior = counts / counts.sum()
    return torch.tensor(np.where(allowed.numpy() > 0, np.log(np.maximum(prior, 1e-12)), 0.0), dtype=torch.float32)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float,
                       weights: torch.Tensor | None, allowed: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against target distributions, smoothed over the ``allowed`` classes."""
    if smoothing:
        targets = (1 - smoothing) * targets + smoothing * allowed / allowed.sum()
    logits = logits.masked_fill(allowed == 0, -1e4)
    loss = -(targets * F.log_softmax(logits.float(), dim=1)).sum(1)
    if weights is not None:
        loss = loss * (targets @ weights)
    return loss.mean()


def _check_data(train: FaceDataset, val: FaceDataset) -> None:
    for dataset, role in ((train, "training"), (val, "validation")):
        if len(dataset) == 0:
            raise DataError(f"the {role} set {dataset.name} is empty")
    present = [EMOTIONS[i] for i in np.unique(train.labels[train.labels >= 0])]
    if len(present) < 2:
        raise DataError(f"the training set {train.name} has {len(present)} class(es) {present}; at least 2 are needed")


class Trainer:
    """Train ``settings.architecture`` on ``train``, select on ``val``, in ``run_dir``.

    Start a model from ``init`` (e.g. HSEmotion backbone weights) or from scratch.
    :meth:`fit` resumes from ``run_dir/checkpoint.pt`` when one exists. For data-parallel
    training, build the trainer inside :func:`~fer_core.training.distributed.process_group`.
    """

    def __init__(self, run_dir: Path | str, settings: TrainSettings, train: FaceDataset, val: FaceDataset,
                 init: FerModel | None = None, face_pipeline: FacePipeline | None = None,
                 extra_info: dict[str, Any] | None = None) -> None:
        _check_data(train, val)
        self.run_dir = Path(run_dir)
        self.settings = settings
        self.train_data, self.val_data = train, val
        self.preprocessing = (dataclasses.replace(init.preprocessing, input_size=settings.input_size) if init
                              else Preprocessing(settings.input_size))
        if settings.grayscale:
            self.preprocessing = dataclasses.replace(self.preprocessing, grayscale=True)
        if init is not None and init.architecture != settings.architecture:
            raise InvalidArgument(f"the initial model is {init.architecture}, but training asks for "
                                  f"{settings.architecture}")
        with torch.random.fork_rng(devices=[]):  # the same seed gives the same initial weights
            torch.manual_seed(settings.seed)
            self.module = init.module if init is not None else create_model(settings.architecture, NUM_CLASSES,
                                                                                     drop_rate=settings.drop_rate)
        self.init_info = {"from": "scratch"} if init is None else {"from": init.provenance, "fingerprint": init.fingerprint}
        self.face_pipeline = face_pipeline
        self.extra_info = extra_info or {}
        self.device = distributed.local_device(settings.device)
        self.allowed = torch.zeros(NUM_CLASSES)
        self.allowed[[EMOTIONS.index(e) for e in train.emotions]] = 1.0
        self.weights = class_weights(train.labels) if settings.class_weights else None
        self.log_prior = class_log_prior(train.labels, self.allowed) * settings.logit_adjustment
        self.average: WeightAverage | None = None

    # -- pieces ---------------------------------------------------------------------------
    def _loader(self, dataset: FaceDataset, train: bool, epoch: int) -> tuple[DataLoader, TorchFaceDataset]:
        transform = FaceTransform(self.preprocessing, dataset.pre_cropped, self.face_pipeline,
                                  self.settings.augment if train else None)
        wrapped = TorchFaceDataset(dataset, transform)
        if train and distributed.is_active():  # each rank: its share of every global batch
            sampler = DistributedSampler(wrapped, distributed.world_size(), distributed.rank(), shuffle=True,
                                         seed=self.settings.seed, drop_last=True)
            sampler.set_epoch(epoch)
            return DataLoader(wrapped, batch_size=self.settings.batch_size // distributed.world_size(), sampler=sampler,
                              drop_last=True, collate_fn=collate_skip_bad, num_workers=0), wrapped
        generator = torch.Generator().manual_seed(self.settings.seed * 100_003 + epoch)
        workers = self.settings.loader_workers
        loader = DataLoader(wrapped, batch_size=self.settings.batch_size, shuffle=train, drop_last=train,
                            generator=generator, collate_fn=collate_skip_bad, num_workers=workers,
                            pin_memory=workers > 0 and self.settings.device.startswith("cuda"))
        return loader, wrapped

    def _optimizer(self, stage: Stage) -> torch.optim.Optimizer:
        params = [p for p in self.module.parameters() if p.requires_grad]
        base = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[self.settings.optimizer]
        kwargs = {"lr": stage.lr, "weight_decay": self.settings.weight_decay}
        if self.settings.sam_rho > 0:
            return SAM(params, base, rho=self.settings.sam_rho, **kwargs)
        return base(params, **kwargs)

    def _steps_per_epoch(self) -> int:
        steps = len(self.train_data) // self.settings.batch_size
        if self.settings.max_steps_per_epoch:
            steps = min(steps, self.settings.max_steps_per_epoch)
        if steps == 0:
            raise DataError(f"the training set ({len(self.train_data)} faces) is smaller than one batch "
                            f"({self.settings.batch_size})")
        return steps

    def _schedule(self, optimizer: torch.optim.Optimizer, stage_number: int, stage: Stage) -> torch.optim.lr_scheduler.LambdaLR:
        steps = self._steps_per_epoch()
        total = stage.epochs * steps
        warmup = min(total - 1, round(self.settings.warmup_epochs * steps)) if stage_number == 0 else 0

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return torch.optim.lr_scheduler.LambdaLR(optimizer.base_optimizer if isinstance(optimizer, SAM) else optimizer,
                                                 factor)

    def _targets(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.settings.soft_targets:
            return batch["soft_label"].float()
        return F.one_hot(batch["label"].clamp(min=0), NUM_CLASSES).float()

    @property
    def _selected_module(self) -> nn.Module:
        """What is validated and saved: the weight average when one is kept, else the weights."""
        return self.average.module if self.average is not None else self.module

    def _train_step(self, network: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                    targets: torch.Tensor) -> float:
        """One optimizer step on ``network`` (the module, or its DDP wrapper); the local batch loss."""
        autocast = torch.autocast("cuda", dtype=torch.bfloat16,
                                  enabled=self.settings.mixed_precision and self.device.type == "cuda")

        def loss_fn() -> torch.Tensor:
            with autocast:
                logits = network(images)
            if self.settings.logit_adjustment:
                logits = logits.float() + self.log_prior.to(logits.device)
            loss = soft_cross_entropy(logits, targets, self.settings.label_smoothing, self.weights, self.allowed)
            loss.backward()
            return loss

        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn()
        if isinstance(optimizer, SAM):
            optimizer.first_step()
            optimizer.zero_grad(set_to_none=True)
            if self.settings.sam_bn_first_pass_only:
                with FrozenBatchNormStats(self.module):
                    loss_fn()
            else:
                loss_fn()
            optimizer.second_step()
        else:
            optimizer.step()
        return float(loss.detach())

    @torch.inference_mode()
    def validate(self) -> dict[str, float]:
        """Loss, accuracy and macro-F1 on the validation set (scored as evaluations are by default:
        over all the model's classes; macro-F1 over the validation set's classes)."""
        module = self._selected_module.eval()
        loader, wrapped = self._loader(self.val_data, train=False, epoch=0)
        truths, preds, losses = [], [], []
        scoring = scoring_for(DEFAULT_PROTOCOL, EMOTIONS, self.val_data.emotions)
        for batch in loader:
            if batch is None:
                continue
            logits = module(batch["image"].to(self.device)).float().cpu()
            known = batch["label"] >= 0
            losses.append(F.cross_entropy(logits[known], batch["label"][known], reduction="sum").item())
            preds.append(scoring.predict(logits[known].numpy()))
            truths.append(batch["label"][known].numpy())
        wrapped.bad_files.warn_skipped()
        y_true, y_pred = np.concatenate(truths), np.concatenate(preds)
        scores = score(y_true, y_pred, [EMOTIONS.index(e) for e in self.val_data.emotions])
        return {"val_loss": float(sum(losses) / len(y_true)), "val_accuracy": scores.accuracy,
                "val_macro_f1": scores.macro_f1}

    def _fer_model(self, provenance: dict[str, Any]) -> FerModel:
        return FerModel(self._selected_module, self.settings.architecture, EMOTIONS, self.preprocessing.input_size,
                        self.preprocessing.mean, self.preprocessing.std, provenance,
                        grayscale=self.preprocessing.grayscale)

    # -- checkpoints ------------------------------------------------------------------------
    def _save_checkpoint(self, state: dict[str, Any]) -> None:
        path = self.run_dir / CHECKPOINT
        tmp = path.with_name(f".{CHECKPOINT}.tmp")
        try:
            torch.save(state, tmp)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def _load_checkpoint(self) -> dict[str, Any] | None:
        path = self.run_dir / CHECKPOINT
        if not path.is_file():
            return None
        state = torch.load(path, map_location="cpu", weights_only=True)
        defaults = _plain(TrainSettings())  # a setting added since the checkpoint was written: its default
        if {**defaults, **state["settings"]} != {**defaults, **_plain(self.settings)}:
            raise InvalidArgument(f"{path} was written with other training settings; use a new run directory")
        self.module.load_state_dict(state["model"])
        return state

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, progress: bool = True) -> dict[str, Any]:
        """Train every remaining epoch; return the history and the best epoch."""
        if self.settings.batch_size % distributed.world_size():
            raise InvalidArgument(f"batch size {self.settings.batch_size} (the global batch) cannot be split evenly "
                                  f"over {distributed.world_size()} processes; use a multiple of "
                                  f"{distributed.world_size()}")
        main = distributed.is_main()
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        state = self._load_checkpoint()  # on every rank; before run.json: a refused resume leaves the run as it was
        if main:
            write_json_atomic(self.run_dir / "run.json", {
                "kind": "training", "created": utc_now(), "fer_core_version": __version__,
                "settings": _plain(self.settings), "init": self.init_info,
                "data": {"train": {"name": self.train_data.label, "size": len(self.train_data),
                                   "classes": self.train_data.class_counts(), "domain": self.train_data.domain},
                         "val": {"name": self.val_data.label, "size": len(self.val_data),
                                 "domain": self.val_data.domain}},
                **distributed.run_info(self.settings.batch_size), **self.extra_info,
                "provenance": provenance_record(self.run_dir, {"train": self.train_data, "val": self.val_data})})
        if progress and main:
            recipe = f"recipe {self.extra_info['recipe']}, " if "recipe" in self.extra_info else ""
            start = "from scratch" if self.init_info["from"] == "scratch" else f"from {self.init_info['fingerprint']}"
            print(f"training {self.run_dir.name} ({recipe}{start}): {self.settings.describe()}; train "
                  f"{self.train_data.label} ({len(self.train_data)} faces), val {self.val_data.label} "
                  f"({len(self.val_data)} faces)", flush=True)
        self.module.to(self.device)
        if self.settings.channels_last:
            self.module.to(memory_format=torch.channels_last)
        if self.settings.ema_decay:
            self.average = WeightAverage(self.module, self.settings.ema_decay)
            if state is not None:
                self.average.load_state_dict(state["average"])
        history: list[dict[str, Any]] = state["history"] if state else []
        best: dict[str, Any] | None = state["best"] if state else None
        start = len(history)
        network = optimizer = scheduler = None
        current_stage = -1
        for epoch in range(start, self.settings.epochs):
            stage_number, stage = self.settings.stage_of(epoch)
            if stage_number != current_stage:
                set_trainable(self.module, stage.trainable)
                network = distributed.wrap(self.module, self.device)
                optimizer = self._optimizer(stage)
                scheduler = self._schedule(optimizer, stage_number, stage)
                if state is not None and state["stage"] == stage_number:
                    optimizer.load_state_dict(state["optimizer"])
                    scheduler.load_state_dict(state["scheduler"])
                current_stage = stage_number
            torch.manual_seed(self.settings.seed * 100_003 + epoch + distributed.rank() * 2**32)
            self.module.train()
            loader, wrapped = self._loader(self.train_data, train=True, epoch=epoch)
            steps = self._steps_per_epoch()
            losses = []
            bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{self.settings.epochs}", unit="batch",
                       disable=not (progress and main), leave=False)
            for batch in itertools.islice(loader, steps):  # no extra batch read past the last step
                if batch is None:
                    continue
                images = batch["image"].to(self.device)
                targets = self._targets(batch).to(self.device)
                if self.settings.mixup_alpha:
                    images, targets = mixup(images, targets, self.settings.mixup_alpha)
                if self.settings.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                losses.append(self._train_step(network, optimizer, images, targets))
                scheduler.step()
                if self.average is not None:
                    self.average.update(self.module)
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
                bar.update()
            bar.close()
            wrapped.bad_files.warn_skipped()
            train_loss = distributed.mean_over_ranks(float(np.mean(losses)))  # equal shares: the global batch mean
            distributed.sync_buffers(self.module)
            if main:
                record = {"epoch": epoch + 1, "stage": stage_number, "train_loss": train_loss,
                          "lr": scheduler.get_last_lr()[0], **self.validate()}
                history.append(record)
                key = f"val_{self.settings.select_metric}"
                if best is None or record[key] > best[key]:
                    best = dict(record)
                    save_model(self._fer_model(self._provenance(best)), self.run_dir / BEST)
                self._save_checkpoint({"model": self.module.state_dict(), "optimizer": optimizer.state_dict(),
                                       "scheduler": scheduler.state_dict(), "stage": stage_number,
                                       "history": history, "best": best, "settings": _plain(self.settings),
                                       **({"average": self.average.state_dict()} if self.average else {})})
                write_json_atomic(self.run_dir / HISTORY, {"history": history, "best": best})
                if progress:
                    print(f"epoch {epoch + 1}: loss {record['train_loss']:.4f} val acc {record['val_accuracy']:.4f} "
                          f"macro-F1 {record['val_macro_f1']:.4f}", flush=True)
            history, best = distributed.broadcast_object((history, best))  # the other ranks wait for rank 0 here
        return {"history": history, "best": best}

    def _provenance(self, best: dict[str, Any]) -> dict[str, Any]:
        return {"head_trained": True, "trained_by": f"fer_core {__version__}", "run": self.run_dir.name,
                "train_data": self.train_data.label, "val_data": self.val_data.label, "init": self.init_info,
                "settings": _plain(self.settings), "selected_epoch": best, "created": utc_now()}


def mixup(images: torch.Tensor, targets: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup: ``lam * batch + (1 - lam) * shuffled batch`` for images and target distributions
    alike, ``lam`` from Beta(alpha, alpha) and the shuffle from torch's global generator (the
    trainer seeds it every epoch)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    order = torch.randperm(len(images)).to(images.device)
    return lam * images + (1 - lam) * images[order], lam * targets + (1 - lam) * targets[order]


class WeightAverage:
    """An exponential moving average of a module's parameters (buffers, such as batch-norm
    statistics, are copied as they are). The decay ramps up as ``min(decay, (1 + n) / (10 + n))``
    over the first updates, so an average of a fresh network is not held to its random start."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Move the average towards ``module``'s current weights."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(list(self.module.parameters()), [p.detach() for p in module.parameters()], 1 - decay)
        for mine, theirs in zip(self.module.buffers(), module.buffers()):
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


def _plain(settings: TrainSettings) -> dict[str, Any]:
    """Settings as JSON-ready values (what checkpoints compare on resume)."""
    return json_ready(dataclasses.asdict(settings))


def json_ready(value: Any) -> Any:
    """Tuples -> lists, recursively (so a value equals itself after a JSON round trip)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value
