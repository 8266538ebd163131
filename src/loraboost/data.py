"""Data sets in and their splits: CSV / JSON lines / parquet files, hub names and the embedded default,
checked with one-sentence errors, and sampled COLA-style (seeded fixed-size splits) as `datasets.Dataset`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from datasets import Dataset, load_dataset

from .assets import MOVIE_REVIEWS, TREC_QUESTIONS, data_file

FILE_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def load_data(source: str) -> Dataset:
    """A data set: an embedded one (``default`` = ``movie-reviews``, ``trec``), a CSV / TSV / JSON(L) /
    parquet file, or a hub name."""
    if source in EMBEDDED:
        return EMBEDDED[source].load()
    path = Path(source)
    if path.suffix.lower() in FILE_FORMATS or path.exists():
        if not path.is_file():
            raise ValueError(f"data file {source!r} does not exist; pass an existing CSV, JSON lines or parquet file, or 'default'.")
        kind = FILE_FORMATS.get(path.suffix.lower())
        if kind is None:
            raise ValueError(f"data file {source!r} has an unknown type; use .csv, .tsv, .json, .jsonl or .parquet.")
        if kind != "parquet":
            _check_utf8(path)
        options = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
        return load_dataset(kind, data_files=str(path), split="train", **options)
    try:
        return load_dataset(source, split="train")
    except Exception as error:  # the hub is unreachable offline, or the name is wrong
        raise ValueError(
            f"could not load the hub data set {source!r} ({type(error).__name__}); no hub is reachable offline, "
            "so pass a local CSV, JSON lines or parquet file instead."
        ) from error


def require_columns(data: Dataset, columns: dict[str, str]) -> None:
    """Raise naming the first missing column (by its role, e.g. ``text_column``) and the columns found."""
    for role, column in columns.items():
        if column not in data.column_names:
            raise ValueError(f"{role}={column!r} is not a column of the data; its columns are {data.column_names}.")


def _check_utf8(path: Path) -> None:
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"data file {str(path)!r} is not UTF-8 (byte {error.start} cannot be decoded); convert it to UTF-8, "
            "for example with iconv -f latin1 -t utf-8."
        ) from None


def movie_reviews(min_abs_score: float = 0.5) -> Dataset:
    """The Rotten Tomatoes sentences that SST was built from, with their mean human score.

    Label 1 (positive) when the score (-4..+4) is above zero, else 0; sentences scored within
    ``min_abs_score`` of zero are dropped, which gives a clean SST-2-like binary task.
    """
    texts, labels = [], []
    lines = data_file(MOVIE_REVIEWS).read_text(encoding="latin-1").splitlines()
    for line in lines[1:]:  # the first line is the header "id  sentiment  text"
        parts = line.split("\t", 2)
        if len(parts) != 3:
            continue
        score = float(parts[1])
        if abs(score) >= min_abs_score:
            texts.append(parts[2].strip())
            labels.append(int(score > 0))
    return Dataset.from_dict({"text": texts, "label": labels})


def trec_questions() -> Dataset:
    """TREC question classification (Li & Roth, train_5500) with its 6 coarse classes as labels.

    The embedded file concatenates several training sets; TREC's own are its last 5,452 lines,
    each ``COARSE:fine question``.
    """
    lines = data_file(TREC_QUESTIONS).read_text(encoding="latin-1").splitlines()[-5452:]
    labels, texts = zip(*(line.split(" ", 1) for line in lines))
    return Dataset.from_dict({"text": [t.strip() for t in texts], "label": [label.split(":")[0] for label in labels]})


@dataclass(frozen=True)
class EmbeddedTask:
    """An embedded labelled data set and how a causal LM is prompted for it (one label word per sorted class)."""

    load: Callable[[], Dataset]
    template: str
    label_words: tuple[str, ...]


EMBEDDED = {
    "movie-reviews": EmbeddedTask(movie_reviews, "Review: {text}\nSentiment (positive or negative):",
                                  (" negative", " positive")),
    # Classes sorted: ABBR, DESC, ENTY, HUM, LOC, NUM; each word is one token for SmolLM2.
    "trec": EmbeddedTask(trec_questions,
                         "Question: {text}\nType (abbreviation, description, entity, person, location or number):",
                         (" abbreviation", " description", " entity", " person", " location", " number")),
}
EMBEDDED["default"] = EMBEDDED["movie-reviews"]


def sample_splits(data: Dataset, sizes: dict[str, int], seed: int) -> dict[str, Dataset]:
    """Disjoint random splits of the requested sizes (e.g. train 1000 / validation 500 / test 1000)."""
    for name, size in sizes.items():
        if size < 1:
            raise ValueError(f"the {name} split would be empty ({name} size {size}); ask for at least 1 example.")
    needed = sum(sizes.values())
    if needed > len(data):
        raise ValueError(f"the splits {sizes} need {needed} examples but the data set has {len(data)}; ask for fewer.")
    shuffled = data.shuffle(seed=seed)
    splits, start = {}, 0
    for name, size in sizes.items():
        splits[name] = shuffled.select(range(start, start + size))
        start += size
    return splits
