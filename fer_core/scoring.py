"""Scoring protocols: which classes a prediction may be, and the one mapping from a model's
logits (in ``model.emotions`` order, any subset and order of the 8 classes) to the canonical
probability columns and the protocol's prediction.

Protocols (:data:`PROTOCOLS`, chosen with ``--score-over``):

- ``model`` (the default): argmax over every class the model has. A prediction may be a class
  the test set lacks (a Neutral sink on a folder without Neutral faces shows as errors).
- ``dataset``: argmax over the test set's classes only (the model's other logits dropped): a
  2-class test set becomes a 2-way choice, so its accuracy is not comparable to the others.
- ``seven``: argmax over the model's classes without Contempt (HSEmotion's protocol for
  7-class data such as FER2013 and AffectNet-7).

Probabilities are always the model's softmax over all of its outputs, whatever the protocol;
a canonical class the model has no output for gets NaN.

Every table's figures come from one function, :func:`score` (accuracy, balanced accuracy,
macro- and weighted F1, per-class precision / recall / F1 / support), over the faces
:func:`scored_rows` keeps: evaluation runs, training's validation, calibration, the sweep and
the cross-domain tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from fer_core.errors import InvalidArgument
from fer_core.labels import EMOTIONS, class_indices
from fer_core.validation import StrOptions, validate_params

#: Fewer true classes than this in a test set draw a warning: its accuracy says little.
MIN_TEST_CLASSES = 3


class ScoringWarning(UserWarning):
    """A figure that is hard to read or compare: too few classes, or classes never predictable."""


@dataclass(frozen=True)
class Protocol:
    """A named rule for the classes a prediction may be: ``choose(model emotions, dataset
    emotions)`` gives them (any order; they are put in canonical order)."""

    name: str
    description: str
    choose: Callable[[Sequence[str], Sequence[str]], Sequence[str]]


PROTOCOLS: Mapping[str, Protocol] = MappingProxyType({p.name: p for p in (
    Protocol("model", "argmax over all of the model's classes", lambda model, data: model),
    Protocol("dataset", "argmax over the test set's classes only (the model's other logits dropped)",
             lambda model, data: [e for e in model if e in data]),
    Protocol("seven", "argmax over the model's classes without Contempt (HSEmotion's protocol for 7-class data)",
             lambda model, data: [e for e in model if e != "Contempt"]),
)})
DEFAULT_PROTOCOL = "model"


def canonical_probabilities(logits: np.ndarray, model_emotions: Sequence[str]) -> np.ndarray:
    """``(N, 8)`` float32 softmax over the model's outputs, column ``j`` for ``EMOTIONS[j]``
    (NaN where the model has no output for that class)."""
    logits = np.asarray(logits, dtype=np.float64).reshape(-1, len(model_emotions))
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    probabilities = np.full((len(logits), len(EMOTIONS)), np.nan, dtype=np.float32)
    probabilities[:, class_indices(model_emotions)] = shifted / shifted.sum(1, keepdims=True)
    return probabilities


@dataclass(frozen=True)
class Scoring:
    """A protocol applied to one model and test set: ``classes`` (canonical order) are what a
    prediction may be; ``warnings`` what makes the figure hard to read or compare."""

    protocol: str
    model_emotions: tuple[str, ...]
    classes: tuple[str, ...]
    warnings: tuple[str, ...] = ()

    @property
    def description(self) -> str:
        return PROTOCOLS[self.protocol].description

    def record(self) -> dict[str, Any]:
        """What run.json keeps: protocol, classes, description and warnings."""
        return {"protocol": self.protocol, "classes": list(self.classes), "description": self.description,
                "warnings": list(self.warnings)}

    def summary(self) -> str:
        """One line for a figure: ``scored over the model's 8 classes (--score-over model)``."""
        return scoring_summary(self.record())

    def predict(self, logits: np.ndarray) -> np.ndarray:
        """Canonical class indices (into :data:`EMOTIONS`) of the argmax over :attr:`classes` of
        ``(N, len(model_emotions))`` logits in the model's order."""
        logits = np.asarray(logits).reshape(-1, len(self.model_emotions))
        columns = [self.model_emotions.index(e) for e in self.classes]
        return class_indices(self.classes)[logits[:, columns].argmax(1)]

    def score(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:func:`canonical_probabilities` and :meth:`predict` of the same logits."""
        return canonical_probabilities(logits, self.model_emotions), self.predict(logits)


@validate_params({"protocol": [StrOptions(PROTOCOLS)]})
def scoring_for(protocol: str, model_emotions: Sequence[str], dataset_emotions: Sequence[str] = EMOTIONS,
                labels: np.ndarray | None = None) -> Scoring:
    """``protocol`` (a name of :data:`PROTOCOLS`) for a model whose outputs are
    ``model_emotions`` on a test set of ``dataset_emotions`` (its faces' canonical ``labels``,
    -1 unknown, when known: the warnings then count the classes that have faces)."""
    model_emotions = tuple(model_emotions)
    chosen = set(PROTOCOLS[protocol].choose(model_emotions, dataset_emotions))
    classes = tuple(e for e in EMOTIONS if e in chosen)
    if not classes:
        raise InvalidArgument(f"score over {protocol}: the model's classes {list(model_emotions)} and the test set's "
                              f"{list(dataset_emotions)} leave nothing to predict")
    if labels is None:
        present = [e for e in EMOTIONS if e in set(dataset_emotions)]
    else:
        known = np.unique(np.asarray(labels)[np.asarray(labels) >= 0])
        present = [EMOTIONS[i] for i in known]
    warnings = []
    if present and len(present) < MIN_TEST_CLASSES:
        warnings.append(f"the test set has only {len(present)} class(es) ({', '.join(present)}): its accuracy "
                        f"reflects few choices; compare it only with runs scored the same way")
    never = [e for e in present if e not in chosen]
    if never:
        warnings.append(f"true class(es) {', '.join(never)} can never be predicted under --score-over {protocol}")
    return Scoring(protocol, model_emotions, classes, tuple(warnings))


def scoring_summary(record: Mapping[str, Any] | str | None) -> str:
    """One line describing a run's recorded scoring (a record of :meth:`Scoring.record`, or the
    sentence older runs stored): which classes a prediction could be and the protocol."""
    if not isinstance(record, Mapping):
        return str(record) if record else "scoring not recorded"
    classes = list(record.get("classes", []))
    protocol = record.get("protocol", "?")
    over = f"the model's {len(classes)} classes" if protocol == "model" else \
        f"{len(classes)} classes ({', '.join(classes)})"
    return f"scored over {over} (--score-over {protocol})"


def scored_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a predictions table that a score counts: labelled (``label >= 0``) and read
    (no ``error``)."""
    return table[(table["label"] >= 0) & table["error"].isna()]


@dataclass(frozen=True)
class Scores:
    """The figures of one prediction set (see :func:`score`); the per-class arrays follow the
    ``classes`` it was scored over."""

    n: int
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    weighted_f1: float
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray


def score(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[int]) -> Scores:
    """The one scoring of predictions (canonical class indices): ``accuracy`` over every face;
    per-class figures, ``macro_f1`` and ``weighted_f1`` over ``classes`` (the true classes a
    table reports; a predicted class outside them counts as an error of its face's class and
    lowers no class's precision); ``balanced_accuracy``: the mean recall over the ``classes``
    that have faces (scikit-learn's, without its warning about predictions outside them)."""
    y_true, y_pred, classes = np.asarray(y_true), np.asarray(y_pred), list(classes)
    precision, recall, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=classes,
                                                                         zero_division=0)
    return Scores(n=int(len(y_true)), accuracy=float(skm.accuracy_score(y_true, y_pred)),
                  balanced_accuracy=float(recall[support > 0].mean()),
                  macro_f1=float(skm.f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)),
                  weighted_f1=float(skm.f1_score(y_true, y_pred, labels=classes, average="weighted",
                                                 zero_division=0)),
                  precision=precision, recall=recall, f1=f1, support=support)
