"""`make demo`: LoRA, COLA and XGBLoRA fine-tune the embedded SmolLM2-135M on movie-review sentiment,
offline, and are compared with the untuned model on the same held-out test split.

    python -m loraboost.demo [--quick] [--methods lora cola xgblora] [--epochs 1] [--lr 2e-3]

The budget fits about ten minutes on a 2-core CPU: 640 training examples seen once (40 steps of 16),
300 test examples. XGBLoRA's round length is set to a quarter of the run (4 rounds), since its
default of 50 steps per round would not end a single round in 40 steps.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from .assets import default_model_dir
from .booster import Booster
from .config import BoostConfig
from .data import movie_reviews, sample_splits
from .evaluate import LabelWordTask, label_word_accuracy, label_word_loss

XGBLORA_ROUNDS = 4
TASK = LabelWordTask(template="Review: {text}\nSentiment (positive or negative):", label_words=(" negative", " positive"))


def fine_tune(method: str, model_dir: Path, tokenizer, train, epochs: int, batch_size: int, lr: float,
              seed: int) -> tuple[torch.nn.Module, Booster, list[float]]:
    """Train a fresh copy of the default model with ``method``'s preset; returns the model, booster, losses."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    total = epochs * math.ceil(len(train) / batch_size)
    overrides = {"steps_per_round": max(1, total // XGBLORA_ROUNDS)} if method == "xgblora" else {}
    booster = Booster(model, BoostConfig(method=method, seed=seed, **overrides), total_steps=total)
    opt = torch.optim.AdamW(booster.parameters(), lr=lr, weight_decay=0.0)
    scheduler = booster.lr_scheduler(opt, total_steps=total, warmup_steps=total // 20)
    label_ids = TASK.label_token_ids(tokenizer)
    losses = []
    with tqdm(total=total, desc=f"train {method}", unit="step", file=sys.stderr) as bar:
        for epoch in range(epochs):
            for inputs, labels in TASK.batches(tokenizer, train, batch_size, shuffle_seed=seed + epoch):
                loss = label_word_loss(booster.model, inputs, labels, label_ids)
                loss.backward()
                opt.step()
                scheduler.step()
                opt.zero_grad()
                booster.step(opt)
                losses.append(loss.item())
                bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}", round=booster.round)
                bar.update()
    return booster.model, booster, losses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loraboost.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller budget (160 train / 100 test)")
    parser.add_argument("--methods", nargs="+", default=["lora", "cola", "xgblora"], help="presets to compare")
    parser.add_argument("--train-size", type=int, default=640)
    parser.add_argument("--test-size", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (linear warm-up and decay)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="runs/demo", help="folder for results.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_size, args.test_size, args.epochs = 160, 100, 1

    model_dir = default_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    splits = sample_splits(movie_reviews(), {"train": args.train_size, "test": args.test_size}, seed=args.seed)
    print(f"movie-review sentiment: {len(splits['train'])} train / {len(splits['test'])} test examples, "
          f"seed {args.seed}; model {model_dir.name}", file=sys.stderr)

    def evaluate(model, name):
        with tqdm(total=len(splits["test"]), desc=f"eval {name}", unit="ex", file=sys.stderr) as bar:
            return label_word_accuracy(model, tokenizer, TASK, splits["test"], progress=bar)

    rows = []
    start = time.perf_counter()
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    rows.append({"method": "base (untuned)", "accuracy": evaluate(base, "base"), "trainable": 0, "rounds_merged": 0,
                 "seconds": time.perf_counter() - start})
    del base
    for method in args.methods:
        start = time.perf_counter()
        model, booster, losses = fine_tune(method, model_dir, tokenizer, splits["train"], args.epochs,
                                           args.batch_size, args.lr, args.seed)
        name = f"xgblora (kappa={booster.plan.steps_per_round})" if method == "xgblora" else method
        rows.append({"method": name, "accuracy": evaluate(model, method),
                     "trainable": sum(p.numel() for p in booster.parameters()),
                     "rounds_merged": len(booster.ledger), "seconds": time.perf_counter() - start,
                     "final_loss": sum(losses[-10:]) / len(losses[-10:])})

    print(f"\n{'method':20} {'test accuracy':>13} {'trainable':>10} {'merged':>7} {'time':>7}")
    for r in rows:
        print(f"{r['method']:20} {r['accuracy']:13.3f} {r['trainable']:10,d} {r['rounds_merged']:7d} {r['seconds']:6.0f}s")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"\nresults: {out / 'results.json'}  (one seed; the benchmarks in BENCHMARKS.md average several)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
