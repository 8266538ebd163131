"""`loraboost demo` (what `make demo` runs): LoRA, COLA and XGBLoRA fine-tune the embedded SmolLM2-135M
on movie-review sentiment, offline, compared with the untuned model on the same held-out test split.

The budget fits about ten minutes on a 2-core CPU: 640 training examples seen once (40 steps of 16),
300 test examples. XGBLoRA's round length is set to a quarter of the run (4 rounds), since its
default of 50 steps per round would not end a single round in 40 steps.
"""

from __future__ import annotations

import argparse
import math

from .compare import compare
from .config import BoostConfig
from .options import RunOptions

XGBLORA_ROUNDS = 4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="loraboost demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smaller budget for a smoke test (160 train / 100 test)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default: 0)")
    parser.add_argument("--output", default="runs/demo", help="folder for the runs, compare.md and compare.png")
    args = parser.parse_args(argv)
    train_size, test_size = (160, 100) if args.quick else (640, 300)
    options = RunOptions(
        model="default",
        data="default",
        task="classify",
        train_size=train_size,
        test_size=test_size,
        batch_size=16,
        epochs=1,
        learning_rate=2e-3,
        save_steps=10_000,
        output=args.output,
    )
    steps = math.ceil(train_size / options.batch_size)
    methods = {
        "lora": BoostConfig(method="lora"),
        "cola": BoostConfig(method="cola"),
        f"xgblora-kappa{steps // XGBLORA_ROUNDS}": BoostConfig(
            method="xgblora", steps_per_round=steps // XGBLORA_ROUNDS
        ),
    }
    print(
        f"loraboost demo: movie-review sentiment, {train_size} train / {test_size} test examples, "
        f"{steps} steps per method, model SmolLM2-135M-Instruct (embedded)"
    )
    compare(options, methods, args.seeds, args.output)
    print(
        "One seed and one learning rate for all methods: this shows that each method learns, not which is "
        "best; see BENCHMARKS.md for the comparisons over seeds."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
