"""Task: the protocol every task kind keeps (its columns, batches, loss, metric and its direction, predict and
errors), so that run, cli, compare and the bench ask the kind and never switch on its name; and its helpers."""

from __future__ import annotations

import dataclasses
import string
import sys
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

from .booster import Booster
from .evaluate import to_model_device
from .options import RunOptions


def batched(items: list, size: int) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def eval_mode(function: Callable) -> Callable:
    """Run ``function(self, model, ...)`` with the model in eval mode and no gradients, restoring its mode."""

    def wrapped(self, model: nn.Module, *args, **kwargs) -> Any:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return function(self, model, *args, **kwargs)
        finally:
            model.train(was_training)

    return wrapped


class Task:
    """A task kind bound to a run's options and tokenizer. A kind is a subclass that sets the class attributes
    and implements the methods below; ``task_kinds.TASK_KINDS`` lists them by name.

    Class attributes: ``name`` (``--task``), ``metric`` (the held-out metric compare and the bench report),
    ``higher_is_better`` (its direction, for tables and figures), ``encoder_ok`` (an encoder with a new head can
    run it), ``default_template`` (the prompt template when none is given, or None), ``context_option`` (the
    option whose token count must fit the model's context).
    """

    name: ClassVar[str]
    metric: ClassVar[str]
    higher_is_better: ClassVar[bool]
    encoder_ok: ClassVar[bool] = False
    default_template: ClassVar[str | None] = None
    context_option: ClassVar[str] = "max_length"  # the option whose token count must fit the model's context

    def __init__(self, options: RunOptions, tokenizer, classes: list | None = None, head: bool = False):
        self.options, self.tokenizer, self.classes, self.head = options, tokenizer, classes, head
        self.truncated = 0  # examples longer than max_length among those prepared so far

    # ---- what the kind reads, before a model is loaded (class methods: no tokenizer needed yet)
    @classmethod
    def load(cls, options: RunOptions):
        """The run's data set (a table, an embedded set, or for lm text files)."""
        from .data import load_data

        return load_data(options.data)

    @classmethod
    def columns(cls, options: RunOptions, labelled: bool = True) -> dict[str, str]:
        """The columns the data must have, by their option name (e.g. ``{"text_column": "review"}``); without
        ``labelled``, only those needed to predict."""
        raise NotImplementedError

    @classmethod
    def configure(cls, options: RunOptions, embedded, encoder: Callable[[], bool]) -> None:
        """Fill what an embedded data set brings (its template, label words) into ``options`` unless given;
        ``encoder()`` tells whether the model is an encoder (it reads the model's config, so only on demand)."""
        if embedded is not None and options.template is None:
            options.template = embedded.template

    @classmethod
    def classes(cls, data, options: RunOptions) -> list | None:
        """The sorted classes of a classification task; None for the others."""
        return None

    # ---- what the kind does with a tokenizer and a model
    @property
    def pad_id(self) -> int:
        """The padding token (the end-of-text token where the tokenizer has none)."""
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id

    def prepare(self, data):
        """The split's rows in the kind's canonical columns (what ``collate`` batches); counts ``truncated``."""
        raise NotImplementedError

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, model: nn.Module, inputs: dict[str, torch.Tensor], booster: Booster | None) -> torch.Tensor:
        """The training loss of a batch (the model's own, unless the kind scores elsewhere)."""
        return model(**inputs).loss

    def evaluate(self, model: nn.Module, data, progress: bool = True) -> dict[str, float]:
        """The metrics of one prepared split, ``self.metric`` among them."""
        raise NotImplementedError

    def score(self, model: nn.Module, splits: dict, progress: bool = True) -> dict[str, dict[str, float]]:
        """The metrics of every split but ``train``."""
        return {name: self.evaluate(model, split, progress) for name, split in splits.items() if name != "train"}

    def check_rows(self, data) -> None:
        """Refuse labelled rows the run cannot score (a classifier's unseen class); nothing to check by default."""

    def predict(self, model: nn.Module, data, max_new_tokens: int = 64) -> dict[str, list]:
        """New columns for every row of ``data`` (its raw columns, read with this task's options)."""
        raise NotImplementedError

    @eval_mode
    def generate(self, model: nn.Module, prompts: list[str], max_new_tokens: int = 64, batch_size: int = 16) -> list:
        """Each prompt continued greedily for up to ``max_new_tokens`` tokens (the continuation only)."""
        from tqdm.auto import tqdm

        tokenizer = self.tokenizer
        tokenizer.padding_side = "left"  # generation continues from the last position of every row
        responses = []
        for chunk in tqdm(batched(prompts, batch_size), desc="generate", unit="batch", file=sys.stderr):
            inputs = tokenizer(
                chunk, return_tensors="pt", padding=True, truncation=True, max_length=self.options.max_length
            )
            inputs = to_model_device(model, dict(inputs))
            output = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            responses += tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return [response.strip() for response in responses]

    def cost(self, splits: dict) -> dict[str, int]:
        """What scoring costs: the examples (or blocks) and tokens of each held-out split."""
        return {f"{name}_examples": len(split) for name, split in splits.items() if name != "train"}


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


def other_data(finished, changes: dict[str, Any], labelled: bool = True):
    """A Task like the run's, reading ``changes["data"]`` through the run's columns and template unless changed,
    and that data set, checked: its columns exist and (``labelled``) its rows can be scored."""
    from .data import require_columns

    options = dataclasses.replace(finished.options, **changes)
    kind = type(finished.task)
    data = kind.load(options)
    require_columns(data, kind.columns(options, labelled))
    task = kind(options, finished.tokenizer, finished.task.classes, finished.task.head)
    if labelled:
        task.check_rows(data)
    return task, data
