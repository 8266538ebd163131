"""Token batches of real movie-review text for the timing benchmarks.

Step time depends on shapes, not content, but real text keeps the loss and gradients realistic."""

from __future__ import annotations

import torch

from loraboost.assets import MOVIE_REVIEWS, data_file

LINES_PER_ROW = 60  # a review sentence is about 25 tokens: 60 sentences fill a row of up to ~1,500 tokens


def review_token_rows(tokenizer, rows: int, length: int) -> torch.Tensor:
    """``rows`` x ``length`` token ids cut from consecutive movie-review sentences (header line skipped)."""
    lines = data_file(MOVIE_REVIEWS).read_text(encoding="latin-1").splitlines()[1:]
    text = " ".join(line.split("\t")[-1] for line in lines[: LINES_PER_ROW * rows])
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    if len(ids) < rows * length:
        raise ValueError(f"the movie reviews hold {len(ids)} tokens, fewer than the {rows} x {length} asked for.")
    return ids[: rows * length].view(rows, length)
