"""Scoring (label-word accuracy and loss, response loss, a classifier head's accuracy and loss): the parts that
need no model, such as where its CPU-built batches go and what the class scores add up to."""

import pytest
import torch
from torch import nn

from loraboost.evaluate import classification_scores, to_model_device


def test_scoring_batches_move_to_the_models_device():
    """Scoring builds its batches on the CPU; after training on a GPU they must follow the weights there
    (found on an H100: the quality benchmark failed at its first test-split scoring)."""
    model = nn.Linear(2, 2, device="meta")  # a device other than the batch's, without needing a GPU
    moved = to_model_device(model, {"input_ids": torch.ones(2, 3, dtype=torch.long), "note": "kept"})
    assert moved["input_ids"].device.type == "meta" and moved["input_ids"].shape == (2, 3)
    assert moved["note"] == "kept"


def test_classification_scores_are_the_accuracy_and_mean_cross_entropy_over_all_batches():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0], [1.0, 1.0, 0.0], [0.0, 0.0, 5.0], [4.0, 0.0, 1.0]])
    labels = torch.tensor([0, 1, 1, 2, 0])
    model = nn.Linear(1, 1)
    model.train()
    batches = [({"rows": torch.arange(0, 2)}, labels[:2]), ({"rows": torch.arange(2, 5)}, labels[2:])]
    scores = classification_scores(model, batches, lambda m, inputs: logits[inputs["rows"]])
    assert scores["accuracy"] == 3 / 5  # row 1 scores class 2 highest; row 2 ties and argmax takes class 0
    assert scores["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)
    assert model.training  # eval mode only while scoring
