"""Cell screen: booster variants on the capacity cell, one seed, a few learning rates each, beside the rows
they must beat (LoRA r8 all-linear and full fine-tuning of the blocks, from a committed quality.json).

Issue 33 asks for boosting that closes half of LoRA r8 all-linear's gap to full fine-tuning of the same weights.
A variant earns the 3-seed protocol of bench/quality.py only if it beats LoRA r8 all-linear here first; the ones
that do not are recorded as screened out (BENCHMARKS.md). Every variant keeps LoRA r8 all-linear's live
trainable parameters (118,272 on the cell) or fewer:

    python bench/cell_screen.py --variants blocks-r48,gstep-r8-k1 --jobs 2
    python bench/cell_screen.py --report-only     # the table from the finished runs

Runs are normal loraboost run folders under --output/<variant>/lr<LR>-seed0 (finished ones with the same
settings are reused); screen.json holds each run's settings, scores and training loss per 100 steps.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import multiprocessing
import sys
from pathlib import Path

import torch
from quality_plan import CAPACITY_CELL, SIZES, cell_options

from loraboost.arms import ALL_LINEAR, ARMS, _galore_boost
from loraboost.run import train
from loraboost.run_folder import FINISHED

ONE_STEP = dict(ALL_LINEAR, rounds=None, round_init="gradient-step", fold_ledger=True)
# name -> (what it is, its BoostConfig values, the rates screened)
VARIANTS = {
    # Fewer blocks per round at a higher rank, within the same live parameters: one block of six per round at
    # rank 48 holds exactly LoRA r8 all-linear's parameters (block-coordinate descent, as BAdam and LISA train).
    "blocks-r48": (
        "r48 on 1 of 6 blocks per round, 25-step rounds",
        dict(ALL_LINEAR, rank=48, rounds=None, steps_per_round=25, layers_per_round=1),
        (1e-3, 3e-3, 1e-2),
    ),
    "blocks-r48-grad": (
        "the same, each booster started on the gradient's top 48 directions",
        dict(ALL_LINEAR, rank=48, rounds=None, steps_per_round=25, layers_per_round=1, round_init="gradient"),
        (1e-2,),
    ),
    # Very short rounds from LoRA-One's one-step start: every round begins with a rank-8 descent step on the
    # sketched gradient, so the merged update gains 8 new directions per round (600 rounds: up to full rank).
    "gstep-r8-k1": (
        "r8 all-linear, 1-step rounds from a one-descent-step start",
        dict(ONE_STEP, steps_per_round=1),
        (3e-3,),
    ),
    "gstep-r8-k5": (
        "r8 all-linear, 5-step rounds from a one-descent-step start",
        dict(ONE_STEP, steps_per_round=5),
        (3e-3,),
    ),
    # The same with a 4x and 2x larger first step (LoRA-One's gamma 16, 32 instead of 64): bench/update_spectrum.py
    # finds gstep-r8-k1's update spread over 23 directions but only a fifth of LoRA's size.
    **{
        f"gstep-r8-k1-g{gamma}": (
            f"gstep-r8-k1 with gamma {gamma}",
            dict(ONE_STEP, steps_per_round=1, gradient_step_gamma=float(gamma)),
            (3e-3,),
        )
        for gamma in (16, 32)
    },
    # LoRA r8 all-linear merged and restarted from the gradient every 50 steps (the catalogue's boost-grad-r8-k50),
    # with Adam's moments carried across each merge instead of reset: the new booster's top directions are
    # sorted like the last one's, so its moments start from the last round's scale instead of from zero.
    "grad-r8-k50-keep": (
        "boost-grad-r8-k50 with Adam's moments kept across merges",
        dict(ALL_LINEAR, rounds=None, steps_per_round=50, round_init="gradient", optimizer_reset="keep"),
        (3e-3, 1e-2),
    ),
    "grad-r8-k150-keep": (
        "the same with 150-step rounds (4 rounds: up to rank 32 per weight)",
        dict(ALL_LINEAR, rounds=None, steps_per_round=150, round_init="gradient", optimizer_reset="keep"),
        (1e-2,),
    ),
    # The boosters that are GaLore (arms._galore_boost) at the largest rank within LoRA r8 all-linear's live
    # parameters: only the longer side's factor trains, 12 x 1,568 per block against LoRA r8's 8 x 2,464.
    "galore-boost-r12": (
        "boosters as GaLore r12 (200-step rounds, moments kept)",
        _galore_boost("galore-boost-r12", "", rank=12).boost,
        (1e-2, 3e-2),
    ),
    # The same projection held on the other side: a rank-r SVD truncation is the same whichever side holds it, but
    # freezing the longer side's factor trains only r x 128 numbers per module here, so rank 22 fits LoRA r8
    # all-linear's live parameters exactly (22 x 896 = 8 x 2,464 per block): nearly twice the rank of galore-boost-r12.
    "galore-boost-long-r22": (
        "boosters as GaLore r22, the longer side frozen (200-step rounds, moments kept)",
        dict(_galore_boost("galore-boost-long-r22", "", rank=22).boost, frozen_factor="longer"),
        (1e-2, 3e-2),
    ),
    # A persistent LoRA beside a chain (persistent_rank): bench/update_spectrum.py finds LoRA's update large in few
    # directions and the chains' spread over many but small, so half of the rank stays LoRA (it moves far) and half
    # merges every 50 steps (it adds directions). Adam's moments are kept: both halves share their tensors.
    "hybrid-p4-r8-k50": (
        "r8 all-linear, 4 ranks persistent and 4 merged every 50 steps",
        dict(ALL_LINEAR, rounds=None, steps_per_round=50, persistent_rank=4, optimizer_reset="keep"),
        (3e-3, 1e-2),
    ),
    # The last section's "not measured yet" (BENCHMARKS.md, issue 33): the GaLore boosters r22 with an exact
    # projection (k = r + p capped at min(out, in) = 128 columns: the sketch is then the exact SVD's top 22).
    "galore-boost-long-r22-exact": (
        "galore-boost-long-r22 with an exact sketch (sketch_oversample=128)",
        dict(_galore_boost("galore-boost-long-r22", "", rank=22).boost, frozen_factor="longer", sketch_oversample=128),
        (1e-2,),
    ),
    # ReLoRA's jagged schedule on the 50-step gradient chain (boost-grad-r8-k50): every round re-warms its rate from
    # zero over a tenth of the round and decays it by a cosine, so a fresh booster's first steps, taken with reset
    # moments, are small ones.
    "grad-r8-k50-rewarm": (
        "boost-grad-r8-k50 with ReLoRA's per-round re-warm (lr_schedule='per_round', round_warmup_steps=0.1)",
        dict(
            ALL_LINEAR,
            rounds=None,
            steps_per_round=50,
            round_init="gradient",
            lr_schedule="per_round",
            round_warmup_steps=0.1,
        ),
        (3e-3, 1e-2),
    ),
    # LoRA+ (loraplus_lr_ratio: B's rate 16x A's, PEFT's create_loraplus_optimizer) on the 50-step gradient chain: a
    # fresh booster's B starts from zero, and a higher rate for it is the most direct way to let a round move as far
    # as LoRA's update does (bench/update_spectrum.py: the chains move a fifth to a third as far). LoRA r8 all-linear
    # with the same ratio tells whether it is the chain or LoRA+ that gains.
    "grad-r8-k50-loraplus": (
        "boost-grad-r8-k50 with LoRA+ (B's rate 16x A's)",
        dict(ALL_LINEAR, rounds=None, steps_per_round=50, round_init="gradient"),
        (1e-3, 3e-3),
    ),
    "lora-all-loraplus": ("LoRA r8 all-linear with LoRA+ (B's rate 16x A's)", dict(ALL_LINEAR), (1e-3, 3e-3)),
}
# Run options a variant sets besides its BoostConfig (the rest are the cell's).
VARIANT_OPTIONS = {name: dict(loraplus_lr_ratio=16.0) for name in ("grad-r8-k50-loraplus", "lora-all-loraplus")}
REFERENCES = ("base", "lora-all", "full-blocks", "apollo-mini-blocks", "galore-r32-blocks")


def run_one(folder: Path, values: dict, lr: float, threads: int, extra: dict) -> dict:
    """One variant at one rate (seed 0) with the run options ``extra``, reusing a finished run of the same settings."""
    torch.set_num_threads(threads)
    if (folder / FINISHED).exists():
        saved = json.loads((folder / "run.json").read_text())
        same = all(saved["boost"].get(k) == v for k, v in values.items())
        same = same and all(saved["options"].get(k) == v for k, v in extra.items())
        if same and saved["options"]["learning_rate"] == lr:
            return json.loads((folder / FINISHED).read_text())
    options = cell_options("tiny-llama", "python-code", SIZES, quick=False)
    options = dataclasses.replace(options, learning_rate=lr, seed=0, output=str(folder), overwrite=True, **extra)
    print(f"cell screen: {folder}", file=sys.stderr, flush=True)
    return train(options, dataclasses.replace(ARMS["lora-all"], boost=values))


def train_loss_by_100(folder: Path) -> list[float]:
    losses = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in losses if "loss" in row and "step" in row]
    return [round(sum(losses[i : i + 100]) / len(losses[i : i + 100]), 4) for i in range(0, len(losses), 100)]


def references(quality: Path) -> dict:
    """Seed 0 of the rows a variant must beat, at their picked rates, from a quality.json."""
    grid = json.loads(quality.read_text())["grid"]["tiny-llama on python-code"]
    rows = {}
    for row in grid:
        if row["name"] in REFERENCES and 0 in row["seeds"]:
            at = row["seeds"].index(0)
            picked = row["picked_lr"]
            rows[row["name"]] = {
                "learning_rate": picked,
                "validation": row["validation_by_lr"].get(f"{picked:g}") if picked else None,
                "test": row["test_scores"][at],
                "forget": row["forget_scores"][at],
                "live_trainable_parameters": row["live_trainable_parameters"],
            }
    return rows


def table(report: dict) -> str:
    lines = [
        "| run | LR | validation | test | forget | live params | train loss by 100 steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in report["references"].items():
        val = f"{row['validation']:.4f}" if row["validation"] else "-"
        lines.append(
            f"| {name} (3-seed grid, seed 0) | {row['learning_rate'] or '-'} | {val} | {row['test']:.4f} | "
            f"{row['forget']:.4f} | {row['live_trainable_parameters']:,} | |"
        )
    for name, runs in report["variants"].items():
        for lr, run in runs.items():
            m = run["metrics"]
            lines.append(
                f"| {name} | {lr} | {m['validation']['loss']:.4f} | {m['test']['loss']:.4f} | "
                f"{m['forget']['loss']:.4f} | {run['live_trainable_parameters']:,} | {run['train_loss_by_100']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated: {', '.join(VARIANTS)}")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side, one torch thread each")
    parser.add_argument("--output", default="runs/cell-screen")
    parser.add_argument("--quality", default="bench/cpu-runs/2026-12-07/rank-cell/quality.json")
    parser.add_argument("--report-only", action="store_true", help="only the table from the finished runs")
    args = parser.parse_args()
    names = [n for n in args.variants.split(",") if n]
    for name in names:
        if name not in VARIANTS:
            parser.error(f"variant {name!r} is unknown; use one of {', '.join(VARIANTS)}.")
    if not (CAPACITY_CELL / "base").exists():
        parser.error(f"the capacity cell is not built in {CAPACITY_CELL}; run python bench/capacity_cell.py first.")
    out = Path(args.output)
    # The report covers every variant that has finished runs, whichever ones this command trains.
    folders = {(name, lr): out / name / f"lr{lr:g}-seed0" for name, (_, _, rates) in VARIANTS.items() for lr in rates}
    jobs = [(name, lr) for name in names for lr in VARIANTS[name][2]]
    if not args.report_only:
        context = multiprocessing.get_context("spawn")  # a fork of a process that ran OpenMP kernels can hang
        threads = max(1, (torch.get_num_threads() or 1) // args.jobs)
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            futures = [
                pool.submit(run_one, folders[j], VARIANTS[j[0]][1], j[1], threads, VARIANT_OPTIONS.get(j[0], {}))
                for j in jobs
            ]
            for future in concurrent.futures.as_completed(futures):
                future.result()
    report = {"command": "python bench/cell_screen.py " + " ".join(sys.argv[1:]), "variants": {}}
    report["references"] = references(Path(args.quality))
    for (name, lr), folder in folders.items():
        if not (folder / FINISHED).exists():
            continue
        summary = json.loads((folder / FINISHED).read_text())
        entry = report["variants"].setdefault(name, {})
        entry[f"{lr:g}"] = {
            "label": VARIANTS[name][0],
            "boost": json.loads((folder / "run.json").read_text())["boost"],
            "options": VARIANT_OPTIONS.get(name, {}),
            "metrics": {split: {"loss": m["loss"]} for split, m in summary["metrics"].items()},
            "live_trainable_parameters": summary["live_trainable_parameters"],
            "optimizer_state_bytes": summary["optimizer_state_bytes"],
            "ledger_bytes": summary.get("ledger_bytes"),
            "train_seconds": round(summary["train_seconds"], 1),
            "train_loss_by_100": train_loss_by_100(folder),
        }
    out.mkdir(parents=True, exist_ok=True)
    (out / "screen.json").write_text(json.dumps(report, indent=1))
    (out / "screen.md").write_text(table(report) + "\n")
    print(table(report))


if __name__ == "__main__":
    main()
