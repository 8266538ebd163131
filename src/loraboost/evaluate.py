"""Classification with a causal LM by label words: the prompt, the loss on the label word, and
accuracy by comparing the label words' likelihood. The LM head runs at the answer position only."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from datasets import Dataset
from torch import nn


@dataclass(frozen=True)
class LabelWordTask:
    """A prompt template with ``{text}`` and one label word per class (each a single token)."""

    template: str
    label_words: tuple[str, ...]
    max_length: int = 96

    def label_token_ids(self, tokenizer) -> list[int]:
        ids = [tokenizer(w, add_special_tokens=False).input_ids for w in self.label_words]
        for word, tokens in zip(self.label_words, ids):
            if len(tokens) != 1:
                raise ValueError(f"label word {word!r} is {len(tokens)} tokens for this tokenizer; use one-token words.")
        return [t[0] for t in ids]

    def batches(self, tokenizer, data: Dataset, batch_size: int, shuffle_seed: int | None = None
                ) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """Left-padded prompts (so the answer position is the last one) and their labels."""
        if shuffle_seed is not None:
            data = data.shuffle(seed=shuffle_seed)
        tokenizer.padding_side = "left"
        tokenizer.truncation_side = "left"  # a long review loses its start, never the answer cue
        for start in range(0, len(data), batch_size):
            rows = data[start:start + batch_size]
            prompts = [self.template.format(text=t) for t in rows["text"]]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length)
            enc["position_ids"] = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            yield dict(enc), torch.tensor(rows["label"])


def answer_logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token logits at the last position only (``logits_to_keep=1``): on a 49k vocabulary
    computing the LM head over the whole sequence would be a large share of the step."""
    return model(**inputs, logits_to_keep=1).logits[:, -1, :]


def label_word_loss(model: nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor,
                    label_ids: list[int]) -> torch.Tensor:
    """Cross-entropy of the gold label word over the whole vocabulary, at the answer position."""
    targets = torch.tensor(label_ids)[labels]
    return nn.functional.cross_entropy(answer_logits(model, inputs).float(), targets)


@torch.no_grad()
def label_word_accuracy(model: nn.Module, tokenizer, task: LabelWordTask, data: Dataset,
                        batch_size: int = 32, progress=None) -> float:
    """Share of examples whose gold label word is the likeliest of the label words."""
    was_training = model.training
    model.eval()
    label_ids = task.label_token_ids(tokenizer)
    correct = 0
    # Similar lengths batched together waste less compute on padding; the order does not matter here.
    data = data.add_column("_length", [len(t) for t in data["text"]]).sort("_length")
    for inputs, labels in task.batches(tokenizer, data, batch_size):
        predicted = answer_logits(model, inputs)[:, label_ids].argmax(-1)
        correct += int((predicted == labels).sum())
        if progress is not None:
            progress.update(len(labels))
    model.train(was_training)
    return correct / len(data)
