"""What the boosting engine adds to a training step, on the real SmolLM2-135M (batch 8 x 64 tokens).

For each method it times, side by side in one process: the training step (forward, backward,
AdamW step), `booster.step` on steps without a round change, and `booster.step` on steps that
change the round (merge, re-initialise, reset the optimizer, pick layers).

    python bench/engine_overhead.py [--steps 24] [--out bench/results/engine_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from review_text import review_token_rows
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraboost import BoostConfig, Booster
from loraboost.assets import default_model_dir

BATCH, LENGTH = 8, 64


def real_batch(tokenizer) -> dict[str, torch.Tensor]:
    """8 sequences of 64 tokens of real movie-review text."""
    ids = review_token_rows(tokenizer, BATCH, LENGTH)
    return {"input_ids": ids, "labels": ids.clone()}


def measure(method: str, config: BoostConfig, model_dir: Path, batch, steps: int) -> dict:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    booster = Booster(model, config, total_steps=steps)
    opt = torch.optim.AdamW(booster.parameters(), lr=1e-4)
    train_s, plain_step_s, change_s = [], [], []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        booster.model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
        t1 = time.perf_counter()
        changed = booster.step(opt)
        t2 = time.perf_counter()
        if i == 0:
            continue  # the first step pays one-off allocation costs
        train_s.append(t1 - t0)
        (change_s if changed else plain_step_s).append(t2 - t1)
    train = statistics.median(train_s)
    return {
        "method": method,
        "config": config.to_dict(),
        "trainable_params": sum(p.numel() for p in booster.parameters()),
        "live_params": sum(p.numel() for s in booster.live_slots for p in (s.A, s.B)),
        "train_step_s": train,
        "booster_step_s": statistics.median(plain_step_s),
        "booster_step_share": statistics.median(plain_step_s) / train,
        "round_changes": len(change_s),
        "round_change_s": statistics.mean(change_s) if change_s else None,
        "round_change_in_steps": statistics.mean(change_s) / train if change_s else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=24, help="training steps timed per method")
    parser.add_argument("--out", default="bench/results/engine_overhead.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    model_dir = default_model_dir()
    batch = real_batch(AutoTokenizer.from_pretrained(model_dir))
    # Short rounds so that several round changes fall inside the timed steps.
    runs = {
        "xgblora": BoostConfig(method="xgblora", steps_per_round=4),
        "cola": BoostConfig(method="cola", rounds=4),
        "lora": BoostConfig(method="lora"),
    }
    results = [measure(name, cfg, model_dir, batch, args.steps) for name, cfg in runs.items()]
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}",
        "batch": [BATCH, LENGTH],
        "steps": args.steps,
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"{'method':8} {'train step':>11} {'booster.step':>13} {'share':>7} {'round change':>13} {'in steps':>9}")
    for r in results:
        change = f"{r['round_change_s'] * 1e3:10.1f} ms" if r["round_change_s"] else "          -"
        steps = f"{r['round_change_in_steps']:9.3f}" if r["round_change_s"] else "        -"
        print(
            f"{r['method']:8} {r['train_step_s']:9.3f} s {r['booster_step_s'] * 1e6:10.1f} us "
            f"{r['booster_step_share']:7.4%} {change} {steps}"
        )


if __name__ == "__main__":
    main()
