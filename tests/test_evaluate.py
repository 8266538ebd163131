"""Scoring (label-word accuracy, response loss, a classifier head's accuracy): the parts that need no model,
such as where its CPU-built batches go."""

import torch
from torch import nn

from loraboost.evaluate import to_model_device


def test_scoring_batches_move_to_the_models_device():
    """Scoring builds its batches on the CPU; after training on a GPU they must follow the weights there
    (found on an H100: the quality benchmark failed at its first test-split scoring)."""
    model = nn.Linear(2, 2, device="meta")  # a device other than the batch's, without needing a GPU
    moved = to_model_device(model, {"input_ids": torch.ones(2, 3, dtype=torch.long), "note": "kept"})
    assert moved["input_ids"].device.type == "meta" and moved["input_ids"].shape == (2, 3)
    assert moved["note"] == "kept"
