"""The sft task kind: prompt -> response pairs through a template, or conversations (a messages column of
role/content turns) through the tokenizer's chat template; loss on the response / assistant tokens only."""

from __future__ import annotations

import math
import sys

import torch
from torch import nn

from .evaluate import ResponseTask, mean_token_loss, response_loss
from .packing import padded
from .task import Task, batched, check_template


class SftTask(Task):
    name = "sft"
    metric = "loss"  # per response token; perplexity is reported beside it
    higher_is_better = False
    default_template = "{prompt}\n"

    @classmethod
    def columns(cls, options, labelled: bool = True) -> dict[str, str]:
        if options.messages_column:
            return {"messages_column": options.messages_column}
        return {
            "prompt_column": options.prompt_column,
            **({"response_column": options.response_column} if labelled else {}),
        }

    def __init__(self, options, tokenizer, classes=None, head: bool = False):
        super().__init__(options, tokenizer, classes, head)
        if options.messages_column:
            if not getattr(tokenizer, "chat_template", None):
                raise ValueError(
                    f"--messages-column {options.messages_column!r} needs the tokenizer's chat template, and this "
                    "model's tokenizer has none; use prompt and response columns with a --template instead."
                )
            if not tokenizer.is_fast:
                raise ValueError("--messages-column needs a fast tokenizer (tokenizer.json) to mark assistant tokens.")
            self.definition = None
            return
        template = options.template or self.default_template
        check_template(template, "prompt")
        self.definition = ResponseTask(template, options.max_length)

    def prepare(self, data):
        """``prompt`` / ``response`` rows, or for conversations the tokens and their labels (-100 off the
        assistant's turns), cut to ``max_length``."""
        from datasets import Dataset

        o = self.options
        if self.definition is None:
            encoded = [self.conversation_tokens(m, row) for row, m in enumerate(data[o.messages_column], start=1)]
            self.truncated += sum(len(ids) > o.max_length for ids, _ in encoded)
            return Dataset.from_dict(
                {
                    "input_ids": [ids[: o.max_length] for ids, _ in encoded],
                    "labels": [y[: o.max_length] for _, y in encoded],
                }
            )
        prepared = Dataset.from_dict(
            {"prompt": [str(p) for p in data[o.prompt_column]], "response": [str(r) for r in data[o.response_column]]}
        )
        texts = [
            self.definition.template.format(prompt=p) + r for p, r in zip(prepared["prompt"], prepared["response"])
        ]
        self.truncated += sum(len(ids) > o.max_length for ids in self.tokenizer(texts).input_ids)
        return prepared

    def conversation_tokens(self, messages, row: int) -> tuple[list[int], list[int]]:
        """A conversation through the chat template, and its labels: each assistant turn's tokens (its content
        and end-of-turn), found by where the rendered text before and after that turn ends."""
        column = self.options.messages_column
        turns = check_messages(messages, column, row)
        render = self.tokenizer.apply_chat_template
        full = render(turns, tokenize=False)
        spans = []
        for k, turn in enumerate(turns):
            if turn["role"] != "assistant":
                continue
            start = len(render(turns[:k], tokenize=False, add_generation_prompt=True)) if k else 0
            end = len(render(turns[: k + 1], tokenize=False))
            if not full.startswith(render(turns[: k + 1], tokenize=False)):
                raise ValueError(
                    f"the chat template renders earlier turns differently as the conversation in row {row} of "
                    f"{column!r} grows, so its assistant tokens cannot be marked; use prompt and response columns."
                )
            spans.append((start, end))
        encoded = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = encoded["input_ids"]
        labels = [
            token if any(start <= first < end for start, end in spans) else -100
            for token, (first, _) in zip(ids, encoded["offset_mapping"])
        ]
        return ids, labels

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        from datasets import Dataset

        if self.definition is None:
            return padded(rows, self.pad_id)
        return next(self.definition.batches(self.tokenizer, Dataset.from_list(rows), len(rows)))

    def evaluate(self, model: nn.Module, data, progress: bool = True) -> dict[str, float]:
        """Mean loss per response (assistant) token, and its perplexity; lower is better."""
        from tqdm.auto import tqdm

        with tqdm(total=len(data), desc="evaluate", unit="ex", file=sys.stderr, disable=not progress) as bar:
            if self.definition is None:
                rows = [data[i] for i in range(len(data))]
                loss = mean_token_loss(model, (padded(chunk, self.pad_id) for chunk in batched(rows, 16)), bar)
                return {"loss": loss, "perplexity": math.exp(loss)}
            return response_loss(model, self.tokenizer, self.definition, data, progress=bar)

    def predict(self, model: nn.Module, data, max_new_tokens: int = 64) -> dict[str, list]:
        """``generated``: each row's response, decoded greedily (after the template, or after the conversation
        up to its last assistant turn, with the chat template's generation prompt)."""
        o = self.options
        if self.definition is None:
            prompts = []
            for row, messages in enumerate(data[o.messages_column], start=1):
                turns = check_messages(messages, o.messages_column, row, need_assistant=False)
                while turns and turns[-1]["role"] == "assistant":
                    turns = turns[:-1]
                prompts.append(self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True))
        else:
            prompts = [self.definition.template.format(prompt=str(p)) for p in data[o.prompt_column]]
        return {"generated": self.generate(model, prompts, max_new_tokens)}


def check_messages(messages, column: str, row: int, need_assistant: bool = True) -> list[dict]:
    """A conversation as a list of ``{role, content}`` turns with text content; one sentence naming the row."""
    where = f"row {row} of {column!r}"
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where} is not a list of turns; write each conversation as [{{role, content}}, ...].")
    for turn in messages:
        if (
            not isinstance(turn, dict)
            or not isinstance(turn.get("role"), str)
            or not isinstance(turn.get("content"), str)
        ):
            raise ValueError(
                f"{where} has a turn that is not {{role: text, content: text}} ({str(turn)[:60]!r}); fix that turn."
            )
    if need_assistant and not any(turn["role"] == "assistant" for turn in messages):
        raise ValueError(f"{where} has no assistant turn, so it has nothing to learn; add one or drop the row.")
    return [{"role": turn["role"], "content": turn["content"]} for turn in messages]
