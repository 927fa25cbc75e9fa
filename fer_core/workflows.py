"""The old path of :mod:`fer_core.jobs.workflows` (issue 13 moved the jobs under
:mod:`fer_core.jobs`); import from there in new code."""

from fer_core.jobs.workflows import (SHIPPED_WEIGHTS, StartRequest, TrainingData, TrainingStart, compare_runs,
                                     dataset_for, evaluate_model, face_pipeline_for,
                                     load_configured_model, resolve_weights, train_model, training_dataset,
                                     training_settings, training_start)

__all__ = ["SHIPPED_WEIGHTS", "StartRequest", "TrainingData", "TrainingStart", "compare_runs", "dataset_for",
           "evaluate_model", "face_pipeline_for", "load_configured_model", "resolve_weights",
           "train_model", "training_dataset", "training_settings", "training_start"]
