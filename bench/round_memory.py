"""GPU memory of a boosted run round by round: what a long XGBLoRA run holds once merges begin.

The speed benchmark's peak memory covers a few dozen steps, mostly inside the first round. This trains
one arm for several rounds on the GPU under the Trainer and reports, per round, the blocks it adapts, the
peak memory allocated during its steps (the merge that ends it included) and what stays allocated
between steps at its end (weights, adapters, optimizer state, merge residuals). By default it runs with
``merge_residual`` at ``auto`` (stochastic rounding of bf16 merges: no residual), at ``residual`` (fp32 residuals
for a bf16 model, what ``auto`` was before checkpoint format 3), at ``residual:bfloat16`` (the same with
``merge_residual_dtype="bfloat16"``, half the bytes) and at ``never`` to see what the residuals cost as they
spread over the blocks.

    python bench/round_memory.py --model random-1b --dtype bf16 --rounds 8 [--merge-residual auto residual never]
    python bench/round_memory.py --replot bench/results/round-memory-gpu.json   # redraw the figure only

Needs a CUDA GPU (bench/gpu.sh runs it); writes bench/results/round-memory-gpu.json, a PNG beside it and
prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch
import transformers
from speed import DTYPES, RANDOM_VOCAB, SETTINGS, random_llama, train_arm, wait_for_device

from loraboost import BoostConfig


class MemoryPerStep(transformers.TrainerCallback):
    """At each step end (after the boost work, so a merge counts in the step that ends its round): the
    peak allocated since the last step end, then what is still allocated."""

    def __init__(self):
        self.peak_bytes, self.held_bytes = [], []

    def on_step_end(self, args, state, control, **kwargs):
        wait_for_device()
        self.peak_bytes.append(torch.cuda.max_memory_allocated())
        self.held_bytes.append(torch.cuda.memory_allocated())
        torch.cuda.reset_peak_memory_stats()


def by_round(arm: str, boost: BoostConfig, model_dir: Path, batches, batch: int, rounds: int) -> dict:
    """Train ``rounds`` rounds of ``boost`` (plus one step of the next, so the last merge is seen)."""
    kappa = boost.steps_per_round
    memory = MemoryPerStep()
    steps = rounds * kappa  # train_arm adds one warm-up step, which lands in the next round
    _, boost_callback = train_arm(arm, model_dir, batches, steps, batch, boost=boost, watchers=(memory,))
    booster = boost_callback.booster
    rows = []
    for index in range(rounds):
        window = slice(index * kappa, (index + 1) * kappa)
        rows.append(
            {
                "round": index,
                "blocks": [key.rsplit(".", 1)[-1] for key in booster.plan.layers(index)],
                "peak_bytes": max(memory.peak_bytes[window]),
                "held_at_end_bytes": memory.held_bytes[window][-1],
            }
        )
    residual_bytes = sum(r.numel() * r.element_size() for r in booster.residuals.values())
    return {
        "kappa": kappa,
        "rows": rows,
        "residual_bytes_at_end": residual_bytes,
        "residual_weights_at_end": len(booster.residuals),
    }


def plot(result: dict, path: Path) -> None:
    """Peak and held memory per round, one line pair per residual policy; PEFT LoRA's peak from the speed
    benchmark's results beside it (``speed-gpu.json``), when they exist, as the line to stay under."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gib = 2**30
    figure, axes = plt.subplots(figsize=(7, 5))
    for run, colour in zip(result["runs"], ("tab:red", "tab:orange", "tab:blue", "tab:green")):
        rounds = [row["round"] for row in run["rows"]]
        axes.plot(
            rounds,
            [row["peak_bytes"] / gib for row in run["rows"]],
            "o-",
            color=colour,
            label=f"peak during the round, merge_residual={run['merge_residual']}",
        )
        axes.plot(
            rounds,
            [row["held_at_end_bytes"] / gib for row in run["rows"]],
            "s--",
            color=colour,
            label=f"held between steps at its end, merge_residual={run['merge_residual']}",
        )
    speed = path.parent / "speed-gpu.json"
    if speed.exists():
        anchor = next(r for r in json.loads(speed.read_text())["rows"] if r["arm"] == "peft-lora")
        axes.axhline(
            anchor["peak_memory_bytes"] / gib,
            color="grey",
            linestyle=":",
            label="PEFT LoRA r8 q/v, peak (bench/speed.py)",
        )
    axes.set_xlabel("round (kappa steps each)")
    axes.set_ylabel("GPU memory allocated (GiB)")
    axes.set_ylim(bottom=0)
    axes.set_title(
        f"{result['method']} on {Path(result['model']).name} ({result['dtype']}), "
        f"batch {result['batch'][0]} x {result['batch'][1]}, {result['machine']}",
        fontsize=9,
    )
    axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default="random-1b",
        help="'random-1b' (Llama-3.2-1B shape, random weights) or a local causal-LM folder",
    )
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--method", default="xgblora", help="a boosting preset that merges (xgblora, cola, ...)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps-per-round", type=int, default=50, help="kappa (XGBLoRA's default: 50)")
    parser.add_argument(
        "--merge-residual",
        nargs="+",
        default=["auto", "residual", "residual:bfloat16", "never"],
        help="settings to run, each merge_residual[:merge_residual_dtype]",
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--out", default="bench/results/round-memory-gpu.json")
    parser.add_argument("--replot", metavar="JSON", help="only redraw the figure of a results file")
    args = parser.parse_args()
    if args.replot:
        source = Path(args.replot)
        plot(json.loads(source.read_text()), source.with_suffix(".png"))
        print(f"figure: {source.with_suffix('.png')}")
        return
    if not torch.cuda.is_available():
        sys.exit(
            "round_memory.py measures GPU memory and needs a CUDA GPU; on a CPU, "
            "`python bench/saved_memory.py` counts each arm's and XGBLoRA's per-round activation memory."
        )
    transformers.logging.set_verbosity_error()
    SETTINGS["dtype"] = DTYPES[args.dtype]
    if args.model == "random-1b":
        model_dir = random_llama(Path(args.out).parent / "random-llama-1b")
    else:
        model_dir = Path(args.model)
    count = (args.rounds * args.steps_per_round + 1) * args.batch
    batches = [
        {"input_ids": row, "labels": row.clone()}
        for row in torch.randint(RANDOM_VOCAB, (count, args.length), generator=torch.Generator().manual_seed(0))
    ]

    runs = []
    boosts = {}
    for setting in args.merge_residual:  # all checked before the first (long) run
        policy, _, dtype = setting.partition(":")
        boosts[setting] = BoostConfig(
            method=args.method,
            steps_per_round=args.steps_per_round,
            rounds=args.rounds + 1,
            merge_residual=policy,
            merge_residual_dtype=dtype or "float32",
        )
    for setting, boost in boosts.items():
        print(f"round_memory: {args.method}, merge_residual={setting}", file=sys.stderr, flush=True)
        runs.append(
            {"merge_residual": setting, **by_round(args.method, boost, model_dir, batches, args.batch, args.rounds)}
        )
    result = {
        "date": datetime.date.today().isoformat(),
        "command": "python bench/round_memory.py " + " ".join(sys.argv[1:]),
        "machine": torch.cuda.get_device_name(),
        "model": str(model_dir),
        "dtype": args.dtype,
        "method": args.method,
        "batch": [args.batch, args.length],
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    plot(result, out.with_suffix(".png"))

    gib = 2**30
    print("| round | blocks | " + " | ".join(f"peak / held at end ({r['merge_residual']})" for r in runs) + " |")
    print("|---|---|" + "---|" * len(runs))
    for index, row in enumerate(runs[0]["rows"]):
        cells = [
            f"{r['rows'][index]['peak_bytes'] / gib:.2f} / {r['rows'][index]['held_at_end_bytes'] / gib:.2f} GiB"
            for r in runs
        ]
        print(f"| {index} | {','.join(row['blocks'])} | " + " | ".join(cells) + " |")
    for r in runs:
        print(
            f"merge_residual={r['merge_residual']}: {r['residual_weights_at_end']} residual weights, "
            f"{r['residual_bytes_at_end'] / gib:.2f} GiB at the end"
        )
    print(f"results: {out}, figure: {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
