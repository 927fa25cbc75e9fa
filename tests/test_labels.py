"""The one label space and the maps into it."""

import numpy as np
import pytest

from fer_core.errors import DataError
from fer_core.scoring import scoring_for
from fer_core.labels import (AFFECTNET, CLASS_FOLDERS, EMOTIONS, FER2013_CSV, FER2013_FOLDERS, FERPLUS_VOTES,
                             LABEL_MAPS, VALENCE_GROUPS, folder_name, parse_emotion, valence_index)


def test_hsemotion_order():
    assert EMOTIONS == ("Anger", "Contempt", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise")


@pytest.mark.parametrize("label_map", list(LABEL_MAPS.values()), ids=list(LABEL_MAPS))
def test_every_map_round_trips(label_map):
    for source in label_map.source_names:
        emotion = label_map.emotion(source)
        if emotion is not None:
            assert label_map.emotion(label_map.source_name(emotion)) == emotion
            assert EMOTIONS[label_map.index(source)] == emotion


def test_dataset_orders_are_explicit():
    assert [FER2013_CSV.emotion(i) for i in range(7)] == [
        "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Neutral"]
    assert [AFFECTNET.emotion(i) for i in range(8)] == [
        "Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]
    assert FERPLUS_VOTES.index("unknown") == -1 and FERPLUS_VOTES.index("NF") == -1
    assert FERPLUS_VOTES.emotions == EMOTIONS
    assert "Contempt" not in FER2013_FOLDERS.emotions and len(FER2013_FOLDERS.emotions) == 7
    assert [folder_name(e) for e in EMOTIONS] == [
        "angry", "contempt", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    assert CLASS_FOLDERS.emotion("surprised") == "Surprise"
    with pytest.raises(DataError, match="unknown class 'smiling'"):
        CLASS_FOLDERS.emotion("smiling")


def test_seven_class_scoring_drops_contempt():
    logits = np.zeros((2, 8))
    logits[0, EMOTIONS.index("Contempt")] = 5.0
    logits[0, EMOTIONS.index("Sadness")] = 1.0
    logits[1, EMOTIONS.index("Happiness")] = 3.0
    for protocol in ("seven", "dataset"):  # FER2013's 7 classes: both drop the contempt logit
        scoring = scoring_for(protocol, EMOTIONS, FER2013_FOLDERS.emotions)
        assert list(scoring.predict(logits)) == [EMOTIONS.index("Sadness"), EMOTIONS.index("Happiness")]
        assert "Contempt" not in scoring.classes


def test_valence_groups_cover_every_emotion_once():
    members = [e for group in VALENCE_GROUPS.values() for e in group]
    assert sorted(members) == sorted(EMOTIONS)
    groups = list(VALENCE_GROUPS)
    assert [groups[g] for g in valence_index(np.arange(8))] == [
        "negative", "negative", "negative", "negative", "positive", "neutral", "negative", "positive"]


@pytest.mark.parametrize(("typed", "emotion"), [("fear", "Fear"), ("FEAR", "Fear"), ("happy", "Happiness"),
                                                ("Happiness", "Happiness"), (" surprised ", "Surprise"),
                                                ("angry", "Anger")])
def test_parse_emotion_accepts_any_case_and_folder_names(typed, emotion):
    assert parse_emotion(typed) == emotion


def test_parse_emotion_names_the_choices():
    with pytest.raises(DataError, match="unknown emotion 'joy'"):
        parse_emotion("joy")
