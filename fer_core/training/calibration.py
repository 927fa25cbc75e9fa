"""Post-hoc logit adjustment (Menon et al., 2021): shift a trained classifier's bias by
``-tau * log(prior)`` (the training set's class frequencies), with ``tau`` chosen on a
validation set, so that a model trained on skewed data (FER+: 34% Neutral, 0.6% Contempt)
stops sinking rare expressions into the common ones. The network is otherwise unchanged.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from fer_core.data import FaceDataset, TorchFaceDataset, collate_skip_bad
from fer_core.errors import DataError, InvalidArgument
from fer_core.faces import FacePipeline
from fer_core.labels import EMOTION_INDEX, EMOTIONS, NUM_CLASSES
from fer_core.models import FerModel
from fer_core.scoring import Scoring, score, scoring_for
from fer_core.training.trainer import FaceTransform, class_log_prior

#: The strengths tried, in steps of 1/16: 0 is the model as trained, 1 subtracts the full prior
#: (balanced error for a model trained on the skewed data), and negative strengths add the prior
#: back, which a model trained with logit adjustment (balanced already) needs: one such model
#: read FER+ valid Neutral faces at recall 0.02 as trained and 0.74 at -0.375.
TAUS = tuple(np.round(np.arange(-1.0, 1.0001, 0.0625), 4))
#: Strengths whose validation macro-F1 is within this of the best count as tied; the tie goes
#: to the highest accuracy (a 0.005 F1 step is about one rare-class face on FER+ valid).
F1_TIE = 0.005


@dataclass(frozen=True)
class Calibration:
    """The chosen strength and, per strength tried, the validation figures it was chosen on."""

    tau: float
    table: tuple[dict[str, float], ...]
    validation: str


@torch.inference_mode()
def dataset_logits(model: FerModel, dataset: FaceDataset, face_pipeline: FacePipeline | None = None,
                   batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Logits over ``model.emotions`` (in that order) and canonical labels of ``dataset``'s
    labelled, readable faces, through the training engine's own preprocessing."""
    model.module.eval()
    wrapped = TorchFaceDataset(dataset, FaceTransform(model.preprocessing, dataset.pre_cropped, face_pipeline))
    logits, labels = [], []
    for batch in DataLoader(wrapped, batch_size=batch_size, collate_fn=collate_skip_bad):
        if batch is None:
            continue
        known = batch["label"] >= 0
        logits.append(model.module(batch["image"][known]).float().numpy())
        labels.append(batch["label"][known].numpy())
    wrapped.bad_files.warn_skipped()
    if not logits:
        raise DataError(f"{dataset.name}: no readable labelled faces")
    return np.concatenate(logits), np.concatenate(labels)


def log_prior_over(emotions: Sequence[str], train_labels: np.ndarray) -> np.ndarray:
    """The training set's log class prior over ``emotions``, in their order."""
    columns = [EMOTION_INDEX[e] for e in emotions]
    allowed = torch.zeros(NUM_CLASSES)
    allowed[columns] = 1.0
    return class_log_prior(train_labels, allowed).numpy()[columns]


def model_log_prior(model: FerModel, train_labels: np.ndarray) -> np.ndarray:
    """The training set's log class prior, in the order of ``model.emotions``."""
    return log_prior_over(model.emotions, train_labels)


def prior_shift_table(logits: np.ndarray, labels: np.ndarray, log_prior: np.ndarray, scoring: Scoring,
                      taus: Sequence[float] = TAUS) -> list[dict[str, Any]]:
    """Per strength ``tau``: accuracy, macro-F1, the lowest recall and each class's recall (over the
    classes ``labels`` holds) of ``scoring``'s argmax over ``logits - tau * log_prior``."""
    if not taus or any(not -2.0 <= t <= 2.0 for t in taus):
        raise InvalidArgument(f"taus: expected strengths in [-2, 2], got {list(taus)}")
    present = np.unique(labels)
    table = []
    for tau in taus:
        scores = score(labels, scoring.predict(logits - tau * log_prior), present)
        table.append({"tau": float(tau), "accuracy": scores.accuracy, "macro_f1": scores.macro_f1,
                      "min_recall": float(scores.recall.min()),
                      "recall": {EMOTIONS[c]: float(r) for c, r in zip(present, scores.recall)}})
    return table


def choose_tau(model: FerModel, logits: np.ndarray, labels: np.ndarray, log_prior: np.ndarray,
               validation: str, taus: Sequence[float] = TAUS) -> Calibration:
    """The strength with the best validation macro-F1 (over the validation set's classes,
    argmax over all of the model's classes); ties within :data:`F1_TIE` go to accuracy."""
    rows = prior_shift_table(logits, labels, log_prior, scoring_for("model", model.emotions), taus)
    table = [{key: row[key] for key in ("tau", "accuracy", "macro_f1", "min_recall")} for row in rows]
    best_f1 = max(row["macro_f1"] for row in table)
    chosen = max((row for row in table if row["macro_f1"] >= best_f1 - F1_TIE), key=lambda row: row["accuracy"])
    return Calibration(chosen["tau"], tuple(table), validation)


def adjusted_model(model: FerModel, log_prior: np.ndarray, calibration: Calibration,
                   train_label: str) -> FerModel:
    """A copy of ``model`` whose classifier bias is shifted by ``-tau * log_prior``; the
    shift and the table it was chosen on go into its provenance."""
    adjusted = copy.deepcopy(model)
    head = adjusted.module.get_classifier()
    if getattr(head, "bias", None) is None:
        raise InvalidArgument(f"{model.architecture}: the classifier has no bias to adjust")
    with torch.no_grad():
        head.bias -= torch.as_tensor(calibration.tau * log_prior, dtype=head.bias.dtype)
    adjusted.forget_fingerprint()
    previous = model.provenance.get("logit_adjustment")
    adjusted.provenance = {**model.provenance, "logit_adjustment": {
        "tau": calibration.tau, "prior_from": train_label, "chosen_on": calibration.validation,
        "rule": f"best validation macro-F1, ties within {F1_TIE} to accuracy", "table": list(calibration.table),
        "previous": previous, "parent_fingerprint": model.fingerprint}}
    return adjusted


def calibration_summary(calibration: Calibration) -> list[dict[str, Any]]:
    """The table as rows, the chosen strength marked."""
    return [{**row, "chosen": row["tau"] == calibration.tau} for row in calibration.table]
