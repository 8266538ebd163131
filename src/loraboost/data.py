"""Data sets in and their splits: the embedded movie-review sentiment task, sampled COLA-style
(fixed-size train / validation / test splits drawn with a seed) as `datasets.Dataset` objects."""

from __future__ import annotations

from datasets import Dataset

from .assets import MOVIE_REVIEWS, data_file


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


def sample_splits(data: Dataset, sizes: dict[str, int], seed: int) -> dict[str, Dataset]:
    """Disjoint random splits of the requested sizes (e.g. train 1000 / validation 500 / test 1000)."""
    needed = sum(sizes.values())
    if needed > len(data):
        raise ValueError(f"the splits {sizes} need {needed} examples but the data set has {len(data)}; ask for fewer.")
    shuffled = data.shuffle(seed=seed)
    splits, start = {}, 0
    for name, size in sizes.items():
        splits[name] = shuffled.select(range(start, start + size))
        start += size
    return splits
