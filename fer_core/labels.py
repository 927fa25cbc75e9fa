"""One label space: the 8 HSEmotion classes, and explicit maps from every dataset's names.

The canonical order is HSEmotion's (alphabetical):
0 Anger, 1 Contempt, 2 Disgust, 3 Fear, 4 Happiness, 5 Neutral, 6 Sadness, 7 Surprise.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Sequence

import numpy as np

from fer_core.errors import DataError

EMOTIONS: tuple[str, ...] = (
    "Anger", "Contempt", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise",
)
NUM_CLASSES = len(EMOTIONS)
EMOTION_INDEX: Mapping[str, int] = MappingProxyType({name: i for i, name in enumerate(EMOTIONS)})

#: Valence groups for grouped accuracy. Surprise counts as positive (high arousal,
#: mildly positive valence on Russell's circumplex); contempt is negative.
VALENCE_GROUPS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "positive": ("Happiness", "Surprise"),
    "negative": ("Anger", "Contempt", "Disgust", "Fear", "Sadness"),
    "neutral": ("Neutral",),
})
VALENCE_OF: Mapping[str, str] = MappingProxyType(
    {emotion: group for group, members in VALENCE_GROUPS.items() for emotion in members}
)

#: One colour per emotion and per domain, in every figure (the dashboard's and the exported report's).
EMOTION_COLORS: Mapping[str, str] = MappingProxyType({
    "Anger": "#d62728", "Contempt": "#8c564b", "Disgust": "#2ca02c", "Fear": "#9467bd",
    "Happiness": "#ffbf00", "Neutral": "#7f7f7f", "Sadness": "#1f77b4", "Surprise": "#e377c2",
})
DOMAIN_COLORS: Mapping[str, str] = MappingProxyType({"real": "#17becf", "synthetic": "#ff7f0e"})


@dataclass(frozen=True)
class LabelMap:
    """A dataset's own class names, in its own index order, mapped onto :data:`EMOTIONS`.

    ``source_names[i]`` is the dataset's name for its class index ``i``; ``to_emotion`` maps
    each source name to a canonical emotion (or to ``None`` for names that are not an
    emotion, such as FER+'s ``unknown`` and ``NF``).
    """

    name: str
    source_names: tuple[str, ...]
    to_emotion: Mapping[str, str | None]

    def __post_init__(self) -> None:
        missing = [n for n in self.source_names if n not in self.to_emotion]
        bad = [e for e in self.to_emotion.values() if e is not None and e not in EMOTION_INDEX]
        if missing or bad:
            raise ValueError(f"label map {self.name!r}: unmapped names {missing}, unknown emotions {bad}")

    @property
    def emotions(self) -> tuple[str, ...]:
        """The canonical emotions this dataset has, in canonical order."""
        present = {e for e in (self.to_emotion[n] for n in self.source_names) if e is not None}
        return tuple(e for e in EMOTIONS if e in present)

    def emotion(self, source: str | int) -> str | None:
        """The canonical emotion of a source name or source index."""
        key = self.source_names[source] if isinstance(source, (int, np.integer)) else source
        if key not in self.to_emotion:
            raise DataError(f"{self.name}: unknown class {source!r}; expected one of {list(self.source_names)}")
        return self.to_emotion[key]

    def index(self, source: str | int) -> int:
        """The canonical index (into :data:`EMOTIONS`) of a source name or index; -1 if none."""
        emotion = self.emotion(source)
        return -1 if emotion is None else EMOTION_INDEX[emotion]

    def source_name(self, emotion: str) -> str:
        """The dataset's own name for a canonical emotion (first match)."""
        for name in self.source_names:
            if self.to_emotion[name] == emotion:
                return name
        raise DataError(f"{self.name} has no class for {emotion!r}; it has {list(self.emotions)}")


#: Folder names of the Kaggle FER2013 image folders (sorted, as on disk).
FER2013_FOLDERS = LabelMap(
    "fer2013-folders",
    ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"),
    MappingProxyType({"angry": "Anger", "disgust": "Disgust", "fear": "Fear", "happy": "Happiness",
                      "neutral": "Neutral", "sad": "Sadness", "surprise": "Surprise"}),
)
#: The Kaggle FER2013 CSV's ``emotion`` column: 0 Angry ... 6 Neutral.
FER2013_CSV = LabelMap(
    "fer2013-csv",
    ("Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"),
    MappingProxyType({"Angry": "Anger", "Disgust": "Disgust", "Fear": "Fear", "Happy": "Happiness",
                      "Sad": "Sadness", "Surprise": "Surprise", "Neutral": "Neutral"}),
)
#: FER+ vote columns of ``fer2013new.csv``, in file order.
FERPLUS_VOTES = LabelMap(
    "ferplus-votes",
    ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF"),
    MappingProxyType({"neutral": "Neutral", "happiness": "Happiness", "surprise": "Surprise",
                      "sadness": "Sadness", "anger": "Anger", "disgust": "Disgust", "fear": "Fear",
                      "contempt": "Contempt", "unknown": None, "NF": None}),
)
#: AffectNet's expression index order.
AFFECTNET = LabelMap(
    "affectnet",
    ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"),
    MappingProxyType({"Neutral": "Neutral", "Happy": "Happiness", "Sad": "Sadness", "Surprise": "Surprise",
                      "Fear": "Fear", "Disgust": "Disgust", "Anger": "Anger", "Contempt": "Contempt"}),
)
#: Folder names accepted for class folders (real and synthetic); written names come first.
CLASS_FOLDERS = LabelMap(
    "class-folders",
    ("angry", "contempt", "disgust", "fear", "happy", "neutral", "sad", "surprise",
     "anger", "happiness", "sadness", "surprised", "disgusted", "fearful"),
    MappingProxyType({"angry": "Anger", "anger": "Anger", "contempt": "Contempt", "disgust": "Disgust",
                      "disgusted": "Disgust", "fear": "Fear", "fearful": "Fear", "happy": "Happiness",
                      "happiness": "Happiness", "neutral": "Neutral", "sad": "Sadness", "sadness": "Sadness",
                      "surprise": "Surprise", "surprised": "Surprise"}),
)

LABEL_MAPS: Mapping[str, LabelMap] = MappingProxyType(
    {m.name: m for m in (FER2013_FOLDERS, FER2013_CSV, FERPLUS_VOTES, AFFECTNET, CLASS_FOLDERS)}
)


def parse_emotion(text: str) -> str:
    """The canonical emotion a person typed: a canonical name or class-folder name in any case
    (``fear``, ``Happy``, ``happiness`` -> ``Fear``, ``Happiness``, ``Happiness``)."""
    folded = text.strip().lower()
    for emotion in EMOTIONS:
        if emotion.lower() == folded:
            return emotion
    if CLASS_FOLDERS.to_emotion.get(folded):
        return CLASS_FOLDERS.to_emotion[folded]
    raise DataError(f"unknown emotion {text!r}; expected one of {list(EMOTIONS)} (any case)")


def folder_name(emotion: str) -> str:
    """The class-folder name written for a canonical emotion (``Happiness`` -> ``happy``)."""
    return CLASS_FOLDERS.source_name(emotion)


def class_indices(emotions: Sequence[str]) -> np.ndarray:
    """Canonical indices of ``emotions`` (validated)."""
    unknown = [e for e in emotions if e not in EMOTION_INDEX]
    if unknown:
        raise DataError(f"unknown emotions {unknown}; expected names from {list(EMOTIONS)}")
    return np.array([EMOTION_INDEX[e] for e in emotions], dtype=np.int64)


def valence_index(indices: np.ndarray) -> np.ndarray:
    """Map canonical class indices to valence-group indices (order of :data:`VALENCE_GROUPS`)."""
    groups = list(VALENCE_GROUPS)
    table = np.array([groups.index(VALENCE_OF[e]) for e in EMOTIONS])
    return table[np.asarray(indices, dtype=np.int64)]
