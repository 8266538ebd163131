"""The classify task kind: a causal LM scored by label words (one token per class, the LM head at the answer
position only), or an encoder with a new head; accuracy, higher is better."""

from __future__ import annotations

import sys
from collections import Counter

import torch
from torch import nn

from .booster import Booster
from .evaluate import LabelWordTask, answer_logits, classification_scores, label_word_scores, to_model_device
from .task import Task, batched, check_template, eval_mode


class ClassifyTask(Task):
    name = "classify"
    metric = "accuracy"
    higher_is_better = True
    encoder_ok = True
    default_template = "{text}\nAnswer:"

    @classmethod
    def columns(cls, options, labelled: bool = True) -> dict[str, str]:
        return {"text_column": options.text_column, **({"label_column": options.label_column} if labelled else {})}

    @classmethod
    def configure(cls, options, embedded, encoder) -> None:
        """An embedded set's own prompt and label words, unless given."""
        if embedded is None:
            return
        if options.label_words is None and embedded.label_words is not None:
            options.label_words = list(embedded.label_words)
        elif options.label_words is None and not encoder():
            raise ValueError(
                f"data {options.data!r} has no label words for a causal LM (its classes are not one-token "
                "words); use an encoder such as --model minilm, or pass --label-words, one per sorted class."
            )
        super().configure(options, embedded, encoder)

    @classmethod
    def classes(cls, data, options) -> list:
        classes = sorted(set(data[options.label_column]))
        if len(classes) < 2:
            raise ValueError(
                f"label_column={options.label_column!r} has a single class {classes}; "
                "classification needs at least two."
            )
        return classes

    def __init__(self, options, tokenizer, classes: list | None, head: bool = False):
        super().__init__(options, tokenizer, classes, head)
        self.label_ids: list[int] | None = None  # label-word classification: each class's token id
        if head:  # an encoder with a classification head: no prompt, no label words
            self.definition = LabelWordTask("{text}", (), options.max_length)
            return
        template = options.template or self.default_template
        check_template(template, "text")
        words = options.label_words
        if words is None:
            if not all(isinstance(c, str) for c in classes):
                raise ValueError(
                    f"the labels {classes[:6]} are not words; pass label_words with one "
                    "word per class, in the order of the sorted labels."
                )
            words = [f" {c}" for c in classes]
        if len(words) != len(classes):
            raise ValueError(f"label_words has {len(words)} words for {len(classes)} classes {classes}.")
        self.definition = LabelWordTask(template, tuple(words), options.max_length)
        self.label_ids = self.definition.label_token_ids(tokenizer)

    def prepare(self, data):
        """Rows of ``text`` and ``label`` (the class's index)."""
        from datasets import Dataset

        o = self.options
        index = {c: i for i, c in enumerate(self.classes)}
        # Built afresh, not with map(): map keeps a replaced column's old type (string labels stay strings).
        prepared = Dataset.from_dict(
            {"text": [str(t) for t in data[o.text_column]], "label": [index[c] for c in data[o.label_column]]}
        )
        texts = [self.definition.template.format(text=t) for t in prepared["text"]]
        self.truncated += sum(len(ids) > o.max_length for ids in self.tokenizer(texts).input_ids)
        return prepared

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
        inputs, labels = next(self.definition.batches(self.tokenizer, Dataset.from_list(rows), len(rows)))
        inputs["labels"] = torch.tensor(self.label_ids)[labels]
        return inputs

    def loss(self, model: nn.Module, inputs: dict[str, torch.Tensor], booster: Booster | None) -> torch.Tensor:
        if self.head:
            return model(**inputs).loss
        targets = inputs.pop("labels")  # label-word token ids (see collate)
        loss = nn.functional.cross_entropy(answer_logits(model, inputs).float(), targets)
        # The model computed no loss of its own, so the norm penalty's hook did not fire.
        if booster is not None and booster.config.norm_penalty > 0:
            return loss + booster.penalty().to(loss.device)
        return loss

    def evaluate(self, model: nn.Module, data, progress: bool = True) -> dict[str, float]:
        from tqdm.auto import tqdm

        with tqdm(total=len(data), desc="evaluate", unit="ex", file=sys.stderr, disable=not progress) as bar:
            if self.head:
                return head_scores(model, self.collate, data, progress=bar)
            return label_word_scores(model, self.tokenizer, self.definition, data, progress=bar)

    def score(self, model: nn.Module, splits: dict, progress: bool = True) -> dict[str, dict[str, float]]:
        """Every held-out split's metrics, and ``majority_accuracy``: the share of the split whose class is the
        training split's most common one, which is what a model that learned nothing scores."""
        metrics = super().score(model, splits, progress)
        if "train" in splits:
            majority = Counter(splits["train"]["label"]).most_common(1)[0][0]
            for name, split in splits.items():
                if name != "train":
                    metrics[name]["majority_accuracy"] = split["label"].count(majority) / len(split)
        return metrics

    def check_rows(self, data) -> None:
        """Refuse rows whose class the run never saw (it has no output for them), naming the first."""
        known = set(self.classes)
        unknown = [label for label in data[self.options.label_column] if label not in known]
        if unknown:
            raise ValueError(
                f"label_column={self.options.label_column!r} has {len(unknown)} value(s) this run was not trained on "
                f"(the first is {unknown[0]!r}); its classes are {self.classes}."
            )

    def predict(self, model: nn.Module, data, max_new_tokens: int = 64) -> dict[str, list]:
        """``predicted``: each row's class (as the data names it); ``probability``: the model's probability of it
        among the classes (softmax over the head's logits, or the label words' next-token logits)."""
        predicted = self.predict_texts(model, [str(t) for t in data[self.options.text_column]])
        return {"predicted": [label for label, _ in predicted], "probability": [round(p, 6) for _, p in predicted]}

    @eval_mode
    def predict_texts(self, model: nn.Module, texts: list[str], batch_size: int = 32) -> list[tuple]:
        from tqdm.auto import tqdm

        predictions = []
        for chunk in tqdm(batched(texts, batch_size), desc="predict", unit="batch", file=sys.stderr):
            inputs = self.collate([{"text": t, "label": 0} for t in chunk])
            inputs = to_model_device(model, {k: v for k, v in inputs.items() if k != "labels"})
            scores = model(**inputs).logits if self.head else answer_logits(model, inputs)[:, self.label_ids]
            probabilities = scores.float().softmax(-1).cpu()
            best = probabilities.argmax(-1)
            predictions += [(self.classes[int(i)], float(p[i])) for i, p in zip(best, probabilities)]
        return predictions


def head_scores(model: nn.Module, collate, data, batch_size: int = 32, progress=None) -> dict[str, float]:
    """``accuracy``: the share of examples whose gold class has the head's largest logit; ``loss``: the mean
    cross-entropy of the head's logits (the training loss, on this split)."""

    def batches():
        for start in range(0, len(data), batch_size):
            inputs = collate([data[i] for i in range(start, min(start + batch_size, len(data)))])
            yield inputs, inputs.pop("labels")

    return classification_scores(model, batches(), lambda m, inputs: m(**inputs).logits, progress)
