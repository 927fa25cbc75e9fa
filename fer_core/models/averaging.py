"""Weight averaging ("model soup", Wortsman et al. 2022): one model whose weights are the mean of
several models fine-tuned from a common start, e.g. two consecutive training cycles' best epochs."""

from __future__ import annotations

import copy
from typing import Sequence

import torch

from fer_core.errors import InvalidArgument
from fer_core.models.factory import FerModel

#: What the averaged models must share to be averaged (and what the average inherits).
SHARED_FIELDS = ("architecture", "emotions", "input_size", "mean", "std", "grayscale")


def average_models(models: Sequence[FerModel]) -> FerModel:
    """A model whose floating-point tensors (weights and BatchNorm running statistics) are the mean
    of ``models``' and whose integer buffers (BatchNorm's batch counters) are the first model's.

    The models must share architecture, classes in order, input size, normalisation and colour (so
    their tensors have the same names and shapes). The provenance lists each source's provenance and
    fingerprint under ``averaged_from``. Averaging only makes sense for models fine-tuned from one start (the
    same basin); that is the caller's to judge: check the average on validation data.
    """
    if len(models) < 2:
        raise InvalidArgument(f"average_models() argument 'models': expected at least 2 models, got {len(models)}")
    first = models[0]
    for position, model in enumerate(models[1:], start=2):
        for name in SHARED_FIELDS:
            if getattr(model, name) != getattr(first, name):
                raise InvalidArgument(f"model {position} differs from model 1 in {name}: "
                                      f"{getattr(model, name)!r} vs {getattr(first, name)!r}")
    states = [model.module.state_dict() for model in models]
    averaged = {key: torch.stack([state[key].float() for state in states]).mean(0).to(value.dtype)
                if value.is_floating_point() else value.clone() for key, value in states[0].items()}
    result = copy.deepcopy(first)
    result.module.load_state_dict(averaged)   # the copy computes its own fingerprint
    result.test_time_flip = False
    result.provenance = {"head_trained": all(m.provenance.get("head_trained", True) for m in models),
                         "averaged_from": [{"fingerprint": m.fingerprint, "provenance": m.provenance} for m in models],
                         "averaging": "uniform mean of every floating-point tensor (weights and BatchNorm statistics)"}
    return result
