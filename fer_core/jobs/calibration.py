"""``fer-core calibrate``: post-hoc logit adjustment of a trained model as a job."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fer_core.config import Config
from fer_core.jobs.options import JobOptions
from fer_core.jobs.workflows import dataset_for, load_configured_model
from fer_core.models import FerModel, save_model
from fer_core.training.calibration import (Calibration, adjusted_model, choose_tau, dataset_logits,
                                           model_log_prior)


@dataclass(frozen=True)
class Calibrated:
    """What :func:`calibrate` did: the ``calibration`` (the strength and the table it was
    chosen on), the ``model`` it wrote to ``path``, and the validation set's label."""

    calibration: Calibration
    model: FerModel
    path: Path
    validation: str


def calibrate(config: Config, weights: Path, train_spec: str, val_spec: str, out: Path,
              fp16: bool = False) -> Calibrated:
    """Shift the classifier bias of ``weights`` by ``-tau * log(prior of train_spec)``, ``tau``
    chosen on ``val_spec`` (never a test set), and save the result to ``out`` (float16 with
    ``fp16``)."""
    model = load_configured_model(config, weights)
    train, val = dataset_for(config, train_spec), dataset_for(config, val_spec)
    pipeline = None if val.pre_cropped else JobOptions.from_config(config).face_pipeline(model.input_size)
    log_prior = model_log_prior(model, train.labels)
    calibration = choose_tau(model, *dataset_logits(model, val, pipeline), log_prior, val.label)
    adjusted = adjusted_model(model, log_prior, calibration, train.label)
    path = save_model(adjusted, out, dtype=torch.float16 if fp16 else torch.float32)
    return Calibrated(calibration, adjusted, path, val.label)
