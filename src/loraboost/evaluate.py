"""How a causal LM is batched and scored: classification by label words (loss on the label word, accuracy by
the label words' likelihood, LM head at the answer position only), prompt -> response batches, and the mean
loss per predicted token that sft and lm report (with its perplexity)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
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
                raise ValueError(
                    f"label word {word!r} is {len(tokens)} tokens for this tokenizer; use one-token words."
                )
        first_word_of: dict[int, str] = {}
        for word, (token,) in zip(self.label_words, ids):
            if token in first_word_of:  # two classes would score the same logit: one of them could never win
                raise ValueError(
                    f"label words {first_word_of[token]!r} and {word!r} are the same token ({token}) for "
                    "this tokenizer, so their classes cannot be told apart; use a different word per class."
                )
            first_word_of[token] = word
        return [t[0] for t in ids]

    def batches(
        self, tokenizer, data: Dataset, batch_size: int, shuffle_seed: int | None = None
    ) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """Left-padded prompts (so the answer position is the last one) and their labels."""
        if shuffle_seed is not None:
            data = data.shuffle(seed=shuffle_seed)
        tokenizer.padding_side = "left"
        tokenizer.truncation_side = "left"  # a long review loses its start, never the answer cue
        for start in range(0, len(data), batch_size):
            rows = data[start : start + batch_size]
            prompts = [self.template.format(text=t) for t in rows["text"]]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length)
            enc["position_ids"] = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            yield dict(enc), torch.tensor(rows["label"])


def to_model_device(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch's tensors on the device of the model's weights: the Trainer moves its own batches, but
    scoring after training on a GPU gets batches built on the CPU."""
    device = next(model.parameters()).device
    return {name: value.to(device) if torch.is_tensor(value) else value for name, value in batch.items()}


def answer_logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token logits at the last position only (``logits_to_keep=1``): on a 49k vocabulary
    computing the LM head over the whole sequence would be a large share of the step."""
    return model(**inputs, logits_to_keep=1).logits[:, -1, :]


@torch.no_grad()
def classification_scores(
    model: nn.Module,
    batches: Iterable[tuple[dict[str, torch.Tensor], torch.Tensor]],
    scores: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor],
    progress=None,
) -> dict[str, float]:
    """Over ``batches`` (inputs, gold class), with ``scores(model, inputs)`` giving one row of class scores
    (logits) per example and the model in eval mode: ``accuracy``, the share whose gold class scores highest,
    and ``loss``, the mean cross-entropy of the gold class among the classes."""
    was_training = model.training
    model.eval()
    correct, loss, count = 0, 0.0, 0
    for inputs, labels in batches:
        logits = scores(model, to_model_device(model, inputs)).float().cpu()
        correct += int((logits.argmax(-1) == labels).sum())
        loss += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
        count += len(labels)
        if progress is not None:
            progress.update(len(labels))
    model.train(was_training)
    return {"accuracy": correct / count, "loss": loss / count}


def label_word_scores(
    model: nn.Module, tokenizer, task: LabelWordTask, data: Dataset, batch_size: int = 32, progress=None
) -> dict[str, float]:
    """``accuracy``: the share of examples whose gold label word is the likeliest of the label words; ``loss``:
    the mean cross-entropy of the gold label word among the label words."""
    label_ids = task.label_token_ids(tokenizer)
    # Similar lengths batched together waste less compute on padding; the order does not matter here.
    data = data.add_column("_length", [len(t) for t in data["text"]]).sort("_length")
    return classification_scores(
        model,
        task.batches(tokenizer, data, batch_size),
        lambda m, inputs: answer_logits(m, inputs)[:, label_ids],
        progress,
    )


@dataclass(frozen=True)
class ResponseTask:
    """Supervised fine-tuning on prompt -> response pairs: the loss covers the response tokens only."""

    template: str = "{prompt}\n"
    max_length: int = 256

    def batches(
        self,
        tokenizer,
        data: Dataset,
        batch_size: int,
        prompt_column: str = "prompt",
        response_column: str = "response",
        shuffle_seed: int | None = None,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Right-padded prompt + response + EOS, with labels -100 on the prompt and the padding."""
        if shuffle_seed is not None:
            data = data.shuffle(seed=shuffle_seed)
        for start in range(0, len(data), batch_size):
            rows = data[start : start + batch_size]
            sequences, labels = [], []
            for prompt, response in zip(rows[prompt_column], rows[response_column]):
                p = tokenizer(self.template.format(prompt=prompt)).input_ids
                r = tokenizer(str(response), add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
                ids = (p + r)[: self.max_length]
                sequences.append(ids)
                labels.append(([-100] * len(p) + r)[: self.max_length])
            width = max(map(len, sequences))
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            yield {
                "input_ids": torch.tensor([s + [pad] * (width - len(s)) for s in sequences]),
                "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences]),
                "labels": torch.tensor([y + [-100] * (width - len(y)) for y in labels]),
            }


@torch.no_grad()
def mean_token_loss(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], progress=None) -> float:
    """Mean loss per predicted token over causal-LM batches (labels -100 where nothing is predicted): each batch's
    mean loss weighted by its count of predicted tokens, with the model in eval mode."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for batch in batches:
        count = int((batch["labels"][:, 1:] != -100).sum())
        total += model(**to_model_device(model, batch)).loss.item() * count
        tokens += count
        if progress is not None:
            progress.update(len(batch["input_ids"]))
    model.train(was_training)
    return total / max(tokens, 1)


def response_loss(
    model: nn.Module,
    tokenizer,
    task: ResponseTask,
    data: Dataset,
    batch_size: int = 16,
    prompt_column: str = "prompt",
    response_column: str = "response",
    progress=None,
) -> dict[str, float]:
    """Mean loss per response token on held-out pairs, and its perplexity."""
    batches = task.batches(tokenizer, data, batch_size, prompt_column, response_column)
    loss = mean_token_loss(model, batches, progress)
    return {"loss": loss, "perplexity": math.exp(loss)}
