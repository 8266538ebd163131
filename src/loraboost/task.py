"""Task: a run's task (label-word or head classification, or SFT) bound to its columns and tokenizer:
canonical rows, Trainer batches, the training loss and the held-out metrics."""

from __future__ import annotations

import dataclasses
import string
import sys
from collections import Counter
from typing import Any

import torch
from torch import nn

from .booster import Booster
from .evaluate import (
    LabelWordTask,
    ResponseTask,
    answer_logits,
    classification_scores,
    label_word_scores,
    response_loss,
    to_model_device,
)
from .options import RunOptions

DEFAULT_TEMPLATE = {"classify": "{text}\nAnswer:", "sft": "{prompt}\n"}


class Task:
    """Binds a task definition to its columns and tokenizer: collation for the Trainer, loss, metrics."""

    def __init__(self, options: RunOptions, tokenizer, classes: list | None, head: bool):
        self.options, self.tokenizer, self.classes, self.head = options, tokenizer, classes, head
        self.label_ids: list[int] | None = None  # label-word classification: each class's token id
        self.truncated = 0  # examples longer than max_length among those prepared so far
        template = options.template or DEFAULT_TEMPLATE[options.task]
        if not head:
            check_template(template, "text" if options.task == "classify" else "prompt")
        if head:  # an encoder with a classification head: no prompt, no label words
            self.definition = LabelWordTask("{text}", (), options.max_length)
        elif options.task == "classify":
            words = options.label_words
            if words is None:
                if not all(isinstance(c, str) for c in self.classes):
                    raise ValueError(
                        f"the labels {self.classes[:6]} are not words; pass label_words with one "
                        "word per class, in the order of the sorted labels."
                    )
                words = [f" {c}" for c in self.classes]
            if len(words) != len(self.classes):
                raise ValueError(f"label_words has {len(words)} words for {len(self.classes)} classes {self.classes}.")
            self.definition = LabelWordTask(template, tuple(words), options.max_length)
            self.label_ids = self.definition.label_token_ids(tokenizer)
        else:
            self.definition = ResponseTask(template, options.max_length)

    def prepare(self, data):
        """Rows in the task's canonical columns (``text``/``label`` index, or ``prompt``/``response``); the
        examples among them longer than ``max_length`` are added to ``truncated``."""
        from datasets import Dataset

        o = self.options
        # Built afresh, not with map(): map keeps a replaced column's old type (string labels stay strings).
        if o.task == "classify":
            index = {c: i for i, c in enumerate(self.classes)}
            prepared = Dataset.from_dict(
                {"text": [str(t) for t in data[o.text_column]], "label": [index[c] for c in data[o.label_column]]}
            )
        else:
            prepared = Dataset.from_dict(
                {
                    "prompt": [str(p) for p in data[o.prompt_column]],
                    "response": [str(r) for r in data[o.response_column]],
                }
            )
        self.truncated += self.count_truncated(prepared)
        return prepared

    def count_truncated(self, data) -> int:
        """Examples whose prompt (and response) exceed ``max_length`` tokens."""
        o, template = self.options, self.definition.template
        if o.task == "classify":
            texts = [template.format(text=t) for t in data["text"]]
        else:
            texts = [template.format(prompt=p) + r for p, r in zip(data["prompt"], data["response"])]
        return sum(len(ids) > o.max_length for ids in self.tokenizer(texts).input_ids)

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        from datasets import Dataset

        if self.head:
            inputs = self.tokenizer(
                [r["text"] for r in rows],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.options.max_length,
            )
            inputs["labels"] = torch.tensor([r["label"] for r in rows])
            return dict(inputs)
        batch = Dataset.from_list(rows)
        if self.options.task == "classify":
            inputs, labels = next(self.definition.batches(self.tokenizer, batch, len(rows)))
            inputs["labels"] = torch.tensor(self.label_ids)[labels]
            return inputs
        return next(self.definition.batches(self.tokenizer, batch, len(rows)))

    def loss(self, model: nn.Module, inputs: dict[str, torch.Tensor], booster: Booster | None) -> torch.Tensor:
        if self.options.task == "classify" and not self.head:
            targets = inputs.pop("labels")  # label-word token ids (see collate)
            loss = nn.functional.cross_entropy(answer_logits(model, inputs).float(), targets)
            # The model computed no loss of its own, so the norm penalty's hook did not fire.
            if booster is not None and booster.config.norm_penalty > 0:
                return loss + booster.penalty().to(loss.device)
            return loss
        return model(**inputs).loss

    def evaluate(self, model: nn.Module, data, progress: bool = True) -> dict[str, float]:
        from tqdm.auto import tqdm

        with tqdm(total=len(data), desc="evaluate", unit="ex", file=sys.stderr, disable=not progress) as bar:
            if self.head:
                return head_scores(model, self.collate, data, progress=bar)
            if self.options.task == "classify":
                return label_word_scores(model, self.tokenizer, self.definition, data, progress=bar)
            return response_loss(model, self.tokenizer, self.definition, data, progress=bar)

    def score(self, model: nn.Module, splits: dict, progress: bool = True) -> dict[str, dict[str, float]]:
        """The metrics of every split but ``train``; for classification also ``majority_accuracy``, the share
        of the split whose class is the training split's most common one: what a model that learned nothing
        scores."""
        metrics = {name: self.evaluate(model, split, progress) for name, split in splits.items() if name != "train"}
        if self.options.task == "classify" and "train" in splits:
            majority = Counter(splits["train"]["label"]).most_common(1)[0][0]
            for name, split in splits.items():
                if name != "train":
                    metrics[name]["majority_accuracy"] = split["label"].count(majority) / len(split)
        return metrics

    def check_labels(self, data) -> None:
        """Refuse rows whose class the run never saw (it has no output for them), naming the first."""
        known = set(self.classes)
        unknown = [label for label in data[self.options.label_column] if label not in known]
        if unknown:
            raise ValueError(
                f"label_column={self.options.label_column!r} has {len(unknown)} value(s) this run was not trained on "
                f"(the first is {unknown[0]!r}); its classes are {self.classes}."
            )

    @torch.no_grad()
    def predict(self, model: nn.Module, texts: list[str], batch_size: int = 32) -> list[tuple[Any, float]]:
        """Each text's predicted class (as the data names it) and the probability the model gives that class
        among the classes (softmax over the head's logits, or over the label words' next-token logits)."""
        from datasets import Dataset
        from tqdm.auto import tqdm

        rows = Dataset.from_dict({"text": [str(t) for t in texts], "label": [0] * len(texts)})
        was_training = model.training
        model.eval()
        predictions = []
        for start in tqdm(range(0, len(rows), batch_size), desc="predict", unit="batch", file=sys.stderr):
            inputs = self.collate([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
            inputs = to_model_device(model, {k: v for k, v in inputs.items() if k != "labels"})
            scores = model(**inputs).logits if self.head else answer_logits(model, inputs)[:, self.label_ids]
            probabilities = scores.float().softmax(-1).cpu()
            best = probabilities.argmax(-1)
            predictions += [(self.classes[int(i)], float(p[i])) for i, p in zip(best, probabilities)]
        model.train(was_training)
        return predictions

    @torch.no_grad()
    def generate(
        self, model: nn.Module, prompts: list[str], max_new_tokens: int = 64, batch_size: int = 16
    ) -> list[str]:
        """Each prompt's response, decoded greedily after the task's template (sft)."""
        from tqdm.auto import tqdm

        tokenizer, template = self.tokenizer, self.definition.template
        tokenizer.padding_side = "left"  # generation continues from the last position of every row
        was_training = model.training
        model.eval()
        responses = []
        for start in tqdm(range(0, len(prompts), batch_size), desc="generate", unit="batch", file=sys.stderr):
            batch = [template.format(prompt=p) for p in prompts[start : start + batch_size]]
            inputs = tokenizer(
                batch, return_tensors="pt", padding=True, truncation=True, max_length=self.options.max_length
            )
            inputs = to_model_device(model, dict(inputs))
            output = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            responses += tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        model.train(was_training)
        return [response.strip() for response in responses]


def check_template(template: str, placeholder: str) -> None:
    """A template holds ``{placeholder}`` and no other field (literal braces are written ``{{`` and ``}}``)."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:
        raise ValueError(
            f"template={template!r} is not a valid template ({error}); write literal braces as {{{{ and }}}}."
        ) from None
    if fields != {placeholder}:
        other = sorted(fields - {placeholder})
        problem = f"has {{{other[0]}}}, which is not a placeholder here" if other else f"has no {{{placeholder}}}"
        raise ValueError(
            f"template={template!r} {problem}; put {{{placeholder}}} where each example's {placeholder} goes, "
            "and write literal braces as {{ and }}."
        )


def majority_warning(metrics: dict[str, dict[str, float]]) -> str | None:
    """A warning when a classifier's test accuracy does not beat always answering the most common class."""
    test = metrics.get("test", {})
    if "majority_accuracy" not in test or test["accuracy"] > test["majority_accuracy"]:
        return None
    return (
        f"loraboost: warning: test accuracy {test['accuracy']:.3f} does not beat always answering the most common "
        f"training class ({test['majority_accuracy']:.3f}), so the model has not learned the task; train longer "
        "(--epochs, --max-steps) or try another --learning-rate."
    )


def head_scores(model: nn.Module, collate, data, batch_size: int = 32, progress=None) -> dict[str, float]:
    """``accuracy``: the share of examples whose gold class has the head's largest logit; ``loss``: the mean
    cross-entropy of the head's logits (the training loss, on this split)."""

    def batches():
        for start in range(0, len(data), batch_size):
            inputs = collate([data[i] for i in range(start, min(start + batch_size, len(data)))])
            yield inputs, inputs.pop("labels")

    return classification_scores(model, batches(), lambda m, inputs: m(**inputs).logits, progress)


def other_data(finished, changes: dict[str, Any], labelled: bool = True):
    """A Task like the run's, reading ``changes["data"]`` through the run's columns and template unless changed,
    and that data set, checked: its columns exist and (``labelled``) its classes are the run's."""
    from .data import load_data, require_columns

    options = dataclasses.replace(finished.options, **changes)
    data = load_data(options.data)
    if options.task == "classify":
        columns = {"text_column": options.text_column, **({"label_column": options.label_column} if labelled else {})}
    else:
        columns = {
            "prompt_column": options.prompt_column,
            **({"response_column": options.response_column} if labelled else {}),
        }
    require_columns(data, columns)
    task = Task(options, finished.tokenizer, finished.task.classes, finished.task.head)
    if labelled and options.task == "classify":
        task.check_labels(data)
    return task, data
