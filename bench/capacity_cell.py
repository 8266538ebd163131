"""The capacity cell's base: a tiny Llama pre-trained full-rank on a mix of film dialog and a third of the
torch package's Python files, so that adapting it to the other Python files is a job where rank binds.

    python bench/capacity_cell.py                 # build into runs/capacity-cell (minutes; cached: reused when built)
    python bench/quality.py --models tiny-llama --tasks python-code --jobs 2   # the grid on it (issue 32)

What it builds, seeded so that two builds on the same machine give the same bytes:
- a byte-level BPE of VOCAB tokens trained on the pre-training mix (tokenizers, as transformers' fast tokenizers);
- a Llama of width WIDTH, LAYERS blocks and tied embeddings (1.7 M parameters), pre-trained for STEPS steps of
  BATCH x BLOCK tokens with AdamW (warm-up, cosine decay);
- ``adapt.jsonl``: the Python files not pre-trained on, one document per file (the lm task splits them by file);
- ``forget.jsonl``: film-dialog exchanges not pre-trained on, the held-out forgetting set;
- ``build.json``: the command's settings, the split sizes, the pre-training loss curve and the build time.
The Python files are the installed torch package's (the Makefile pins torch 2.13.0; BSD-3-Clause); the dialog is
the Cornell movie-dialog pairs of the embedded data package.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import transformers

from loraboost.data import movie_dialog_text, python_code
from loraboost.packing import pack

VOCAB, WIDTH, LAYERS, HEADS, FFN = 4096, 128, 6, 4, 352
STEPS, BATCH, BLOCK, LR, WARMUP = 1500, 16, 128, 3e-3, 100
PRETRAIN_SHARE = 1 / 3  # of the Python files; the rest is the adaptation data
FORGET_EXCHANGES = 2000  # dialog exchanges held out for the forgetting set
EOS = "<|endoftext|>"
DEFAULT_OUTPUT = Path("runs/capacity-cell")


def split_corpora(seed: int, pretrain_share: float, forget: int, limit: int | None = None):
    """(pre-training documents, adaptation documents, forgetting documents): the Python files shuffled with the
    seed and cut by file; the dialog exchanges shuffled with the seed, ``forget`` of them held out."""
    code, dialog = python_code(), movie_dialog_text()
    files = list(zip(code["path"], code["text"]))
    exchanges = list(dialog["text"])
    random.Random(seed).shuffle(files)
    random.Random(seed + 1).shuffle(exchanges)
    if limit:  # a small build for the tests
        files, exchanges = files[:limit], exchanges[: limit * 10]
    cut = int(len(files) * pretrain_share)
    pretrain = [text for _, text in files[:cut]] + exchanges[forget:]
    random.Random(seed + 2).shuffle(pretrain)
    return pretrain, files[cut:], exchanges[:forget]


def train_tokenizer(texts: list[str], vocab: int) -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE of ``vocab`` tokens with one end-of-text token (also the padding)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, pad_token=EOS)


def build(
    out: Path,
    seed: int = 0,
    vocab: int = VOCAB,
    width: int = WIDTH,
    layers: int = LAYERS,
    heads: int = HEADS,
    ffn: int = FFN,
    steps: int = STEPS,
    batch: int = BATCH,
    block: int = BLOCK,
    limit: int | None = None,
    forget: int = FORGET_EXCHANGES,
) -> dict:
    """Build the base model, tokenizer and data files into ``out`` (reused when ``build.json`` is there)."""
    if (out / "build.json").is_file():
        return json.loads((out / "build.json").read_text())
    start = time.perf_counter()
    torch.manual_seed(seed)
    pretrain, adapt, held_out = split_corpora(seed, PRETRAIN_SHARE, forget, limit)
    tokenizer = train_tokenizer(pretrain, vocab)
    token_lists = (tokenizer(text, add_special_tokens=False).input_ids for text in pretrain)
    blocks = [b for b in pack(token_lists, tokenizer.eos_token_id, block) if len(b) == block]
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2 * block,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = transformers.LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / WARMUP) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0)))),
    )
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed)).tolist()
    curve = []
    model.train()
    for step in range(steps):
        chosen = [order[(step * batch + i) % len(order)] for i in range(batch)]
        ids = torch.tensor([blocks[i] for i in chosen])
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 50 == 0 or step == steps - 1:
            curve.append([step + 1, round(loss.item(), 4)])
            print(f"capacity cell: pre-training step {step + 1}/{steps}, loss {loss.item():.3f}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out / "base")
    tokenizer.save_pretrained(out / "base")
    with (out / "adapt.jsonl").open("w") as f:
        for path, text in adapt:
            f.write(json.dumps({"path": path, "text": text}) + "\n")
    with (out / "forget.jsonl").open("w") as f:
        for text in held_out:
            f.write(json.dumps({"text": text}) + "\n")
    report = {
        "command": "python bench/capacity_cell.py" + (f" --output {out}" if out != DEFAULT_OUTPUT else ""),
        "seed": seed,
        "shape": {"vocab": len(tokenizer), "width": width, "layers": layers, "heads": heads, "ffn": ffn},
        "parameters": sum(p.numel() for p in model.parameters()),
        "pretraining": {"steps": steps, "batch": batch, "block": block, "lr": LR, "blocks_available": len(blocks)},
        "documents": {"pretrain": len(pretrain), "adapt_files": len(adapt), "forget_exchanges": len(held_out)},
        "loss_curve": curve,
        "seconds": round(time.perf_counter() - start, 1),
        "threads": torch.get_num_threads(),
    }
    (out / "build.json").write_text(json.dumps(report, indent=1))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    report = build(args.output, seed=args.seed)
    print(json.dumps({k: v for k, v in report.items() if k != "loss_curve"}, indent=1))


if __name__ == "__main__":
    main()
