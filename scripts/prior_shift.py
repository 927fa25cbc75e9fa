"""Is a model's miss a threshold, or a blind spot? Re-read finished evaluations with the class prior
shifted: each face's argmax over ``log p - tau * log(prior)``, the post-hoc logit adjustment
``fer-core calibrate`` applies, for several strengths ``tau`` on top of the model as evaluated.
No model is run: the probabilities come from each evaluation's ``predictions.parquet``.

    python scripts/prior_shift.py runs/shipped-ferplus-valid runs/shipped-sd_faces --prior ferplus:train

A class whose recall stays low at every strength, while the rest of the table falls apart, is not
read by the model at all (a blind spot); one that rises at a small strength was a threshold. Each
table is printed under the protocol it was scored with, beside the evaluation's own accuracy (its
first row, tau 0, must equal it).
"""

from __future__ import annotations

import argparse
from typing import Sequence

import numpy as np

from fer_core.config import load_config
from fer_core.data.registry import open_dataset
from fer_core.runs import Run
from fer_core.scoring import scoring_for
from fer_core.training.calibration import log_prior_over, prior_shift_table

DEFAULT_TAUS = "0,0.25,0.5,0.75,1,1.5"
#: probabilities below this (float32 softmax underflow) are read as this, so their log stays finite
PROBABILITY_FLOOR = 1e-30


def shifted_tables(run: Run, train_labels: np.ndarray, taus: Sequence[float]) -> list[dict]:
    """``run``'s faces re-read at each strength (see :func:`prior_shift_table`), the prior taken from
    ``train_labels`` over the run's model's classes, and scored with the run's own protocol."""
    emotions = run.info["model"]["emotions"]
    log_prior = log_prior_over(emotions, train_labels)
    predictions = run.predictions
    probabilities = predictions[[f"prob_{e}" for e in emotions]].to_numpy(dtype=np.float64)
    readable = np.isfinite(probabilities).all(1) & (predictions["label"].to_numpy() >= 0)
    scoring = scoring_for(run.metrics["scoring"]["protocol"], emotions, run.info["dataset"]["emotions"])
    logits = np.log(np.maximum(probabilities[readable], PROBABILITY_FLOOR))
    return prior_shift_table(logits, predictions["label"].to_numpy()[readable], log_prior, scoring, taus)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="evaluation run folders (fer-core evaluate --name ...)")
    parser.add_argument("--prior", required=True, help="the dataset whose class frequencies are the prior, "
                                                       "the model's training set (e.g. ferplus:train)")
    parser.add_argument("--taus", default=DEFAULT_TAUS, help=f"strengths, comma-separated (default {DEFAULT_TAUS})")
    parser.add_argument("--config", help="configs/config.yaml by default (its data root holds --prior)")
    args = parser.parse_args(argv)
    taus = [float(t) for t in args.taus.split(",")]
    config = load_config(args.config)
    train_labels = np.asarray(open_dataset(args.prior, config.resolve(config.data.root)).labels)
    for folder in args.runs:
        run = Run.load(folder)
        table = shifted_tables(run, train_labels, taus)
        protocol = run.metrics["scoring"]["description"]
        print(f"{run.id}: {run.info['dataset']['label']}, {run.info['dataset']['faces']} faces, {protocol}, "
              f"prior {args.prior}; as evaluated: accuracy {run.metrics['accuracy']:.4f}")
        classes = list(table[0]["recall"])
        print(f"{'tau':>6} {'accuracy':>9} {'macro-F1':>9}  " + " ".join(f"{c[:9]:>9}" for c in classes))
        for row in table:
            print(f"{row['tau']:6.3f} {row['accuracy']:9.4f} {row['macro_f1']:9.4f}  "
                  + " ".join(f"{row['recall'][c]:9.3f}" for c in classes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
