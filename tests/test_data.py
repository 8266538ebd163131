"""The embedded data sets: their size, classes, and that their label words are one token each for the
embedded SmolLM2 tokenizer (label-word classification needs that)."""

import transformers

from loraboost.assets import default_model_dir
from loraboost.data import EMBEDDED, load_data
from loraboost.evaluate import LabelWordTask


def test_trec_is_the_5452_training_questions_with_six_coarse_classes():
    data = load_data("trec")
    assert len(data) == 5452
    assert sorted(set(data["label"])) == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    assert all(text and ":" not in text.split(" ")[0] for text in data["text"][:200])  # the label is stripped
    assert data[-1] == {"text": "What currency is used in Australia ?", "label": "ENTY"}


def test_movie_reviews_default_is_binary_and_balanced_enough():
    data = load_data("default")
    assert set(data["label"]) == {0, 1} and len(data) > 8000
    assert 0.3 < sum(data["label"]) / len(data) < 0.7


def test_embedded_label_words_are_one_token_each_and_match_the_classes():
    tokenizer = transformers.AutoTokenizer.from_pretrained(default_model_dir())
    for name, task in EMBEDDED.items():
        classes = sorted(set(task.load()["label"]))
        assert len(task.label_words) == len(classes), name
        ids = LabelWordTask(task.template, task.label_words, 64).label_token_ids(tokenizer)
        assert len(set(ids)) == len(classes), name  # distinct one-token words
