"""The lm task kind, continued pre-training on raw text: documents (a text column, or text files by path or
glob) tokenized, joined by EOS and packed into blocks; loss per token and perplexity, lower is better."""

from __future__ import annotations

import math
import sys

import torch
from torch import nn

from .evaluate import mean_token_loss
from .packing import block_batch, is_text_source, pack, read_documents
from .task import Task, batched


class LmTask(Task):
    name = "lm"
    metric = "loss"  # per token; perplexity is reported beside it
    higher_is_better = False
    context_option = "block_size"

    @classmethod
    def load(cls, options):
        """Text files (a path, a folder or a glob) as one document each, an embedded set's text, or a table."""
        from datasets import Dataset

        from .data import EMBEDDED

        embedded = EMBEDDED.get(options.data)
        if embedded is not None and embedded.text is not None:
            return embedded.text()
        if embedded is None and is_text_source(options.data):
            return Dataset.from_dict(read_documents(options.data))
        return super().load(options)

    @classmethod
    def columns(cls, options, labelled: bool = True) -> dict[str, str]:
        return {"text_column": options.text_column}

    @classmethod
    def configure(cls, options, embedded, encoder) -> None:
        """Raw text needs no template."""

    def prepare(self, data):
        """The split's documents packed into blocks of ``block_size`` tokens (``input_ids``), EOS after each
        document; a split's blocks never reach into another split's documents. Tokenized once, here."""
        from datasets import Dataset

        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise ValueError("the lm task joins documents with the tokenizer's end-of-text token, and it has none.")
        texts = [str(t) for t in data[self.options.text_column]]
        token_lists = (self.tokenizer(text, add_special_tokens=False).input_ids for text in texts)
        return Dataset.from_dict({"input_ids": list(pack(token_lists, eos, self.options.block_size))})

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        return block_batch([r["input_ids"] for r in rows], self.pad_id)

    def evaluate(self, model: nn.Module, data, progress: bool = True) -> dict[str, float]:
        """Mean loss per predicted token over the split's blocks, and its perplexity; lower is better. The blocks
        stream through in batches: nothing is tokenized again."""
        from tqdm.auto import tqdm

        blocks = data["input_ids"]
        with tqdm(total=len(blocks), desc="evaluate", unit="block", file=sys.stderr, disable=not progress) as bar:
            loss = mean_token_loss(model, (block_batch(chunk, self.pad_id) for chunk in batched(blocks, 16)), bar)
        return {"loss": loss, "perplexity": math.exp(loss)}

    def cost(self, splits: dict) -> dict[str, int]:
        return {
            f"{name}_tokens": sum(len(block) for block in split["input_ids"])
            for name, split in splits.items()
            if name != "train"
        }

    def predict(self, model: nn.Module, data, max_new_tokens: int = 64) -> dict[str, list]:
        """``generated``: each row's text continued greedily."""
        prompts = [str(t) for t in data[self.options.text_column]]
        return {"generated": self.generate(model, prompts, max_new_tokens)}
