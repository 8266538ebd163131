"""Raw text for continued pre-training: documents read from plain-text files (a path or a glob such as
``src/**/*.py``), and packed into fixed-size token blocks, joined by EOS, within one split at a time."""

from __future__ import annotations

import glob
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

GLOB_CHARACTERS = set("*?[")


def is_text_source(source: str) -> bool:
    """A glob, or an existing plain-text file or folder (not a table: those are read by ``data.load_data``)."""
    from .data import FILE_FORMATS

    if GLOB_CHARACTERS & set(source):
        return True
    path = Path(source)
    return path.is_dir() or (path.is_file() and path.suffix.lower() not in FILE_FORMATS)


def text_files(source: str) -> list[Path]:
    """The files a source names, sorted: a glob (``**`` descends into folders), a folder (every file below it),
    or one file; one sentence when it names none."""
    path = Path(source)
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()]
    elif GLOB_CHARACTERS & set(source):
        files = [Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file()]
    else:
        files = [path] if path.is_file() else []
    if not files:
        raise ValueError(
            f"data {source!r} matches no file; pass a text file, a folder, or a glob such as 'src/**/*.py'."
        )
    return sorted(files)


def read_documents(source: str) -> dict[str, list[str]]:
    """Every file a source names as one document (``text``, with its ``path``); a file that is not UTF-8 text
    (or holds a NUL byte, as binaries do) is named in one sentence."""
    texts, paths = [], []
    for file in text_files(source):
        raw = file.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is None or "\x00" in text:
            raise ValueError(
                f"data file {str(file)!r} is not UTF-8 text; the lm task reads plain-text files (narrow the glob, "
                "e.g. 'src/**/*.py')."
            )
        if text.strip():
            texts.append(text)
            paths.append(str(file))
    if not texts:
        raise ValueError(f"data {source!r} names only empty files; pass files that hold text.")
    return {"text": texts, "path": paths}


def pack(token_lists: Iterable[list[int]], eos: int, block_size: int) -> Iterator[list[int]]:
    """Documents' tokens joined by EOS (one after each document) and cut into blocks of ``block_size`` tokens;
    the last, shorter block is kept (it is scored and trained like the rest, padded in its batch)."""
    block: list[int] = []
    for tokens in token_lists:
        block.extend(tokens)
        block.append(eos)
        while len(block) >= block_size:
            yield block[:block_size]
            block = block[block_size:]
    if block:
        yield block


def padded(rows: list[dict], pad: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` / ``labels`` rows as a causal-LM batch: padding is masked out of attention and
    loss (labels -100)."""
    width = max(len(r["input_ids"]) for r in rows)
    return {
        "input_ids": torch.tensor([r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in rows]),
        "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows]),
        "labels": torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in rows]),
    }


def block_batch(blocks: list[list[int]], pad: int) -> dict[str, torch.Tensor]:
    """Blocks as a causal-LM batch: every real token is a label (the model shifts them)."""
    return padded([{"input_ids": b, "labels": b} for b in blocks], pad)
