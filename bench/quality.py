"""Quality benchmark: does boosting beat LoRA, at what cost, and how close to full fine-tuning?

Every method trains for the same steps and batch size on the same seeded splits (COLA-style
1000 train / 500 validation / 1000 test). Each method's peak learning rate is picked from its own
small grid on the validation split of seed 0 (never on test), the grid growing by a half-decade (up to
two) while the best rate sits at its edge; the other seeds then run at the picked rate.
Ablations of XGBLoRA (kappa, layers per round, rank, merge scale, optimizer reset, LR schedule), of
COLA (chain length) and of the budget (XGBLoRA and LoRA on 3x the steps) run at their method's picked rate,
except one that runs LoRA a rung lower on the LR ladder (does a rate picked on one seed hold on the others?).
Each training is a normal `loraboost` run folder; finished runs are reused, so an interrupted benchmark
resumes where it stopped.

    python bench/quality.py                       # DEFAULT_PLAN: all of MiniLM TREC, the main methods elsewhere
    python bench/quality.py --estimate            # what that took when it ran here, summed from the run folders
    python bench/quality.py --models smollm2 --tasks movie-reviews --methods lora-qv,xgblora,cola
    python bench/quality.py --models minilm --part ablations --ablations xgb-kappa100,xgb-oneround
    python bench/quality.py --quick               # a smoke run of the pipeline, minutes
    python bench/quality.py ... --split-seed 0    # every seed on seed 0's splits: stds of the training alone

Every method and ablation on both models and tasks takes over 10 hours on 2 CPU cores, so the default
command runs a plan sized to about 3 hours and the rest runs when named. MiniLM trains two runs side by side
with one torch thread each (``--jobs``), since its small matmuls use a second thread poorly; train times are
then not comparable with one-at-a-time rows, so each row records how its train times were taken.
On a machine with a CUDA GPU the runs train there (the Trainer picks it) and ``--jobs`` puts several on the
one GPU; each row then records the GPU, and its peak memory is the GPU's.

Writes OUTPUT/quality.json (every number, with the machine and versions), quality.md (tables) and
quality.png / ablations.png (figures).

This file is the command line. What is compared lives in quality_plan.py (arms named from loraboost.arms,
ablations, cells, the default plan), the learning-rate sweep in sweep.py (which other bench scripts import
too), the tables and figures in quality_report.py, and the time estimate in quality_estimate.py.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import json
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path

import torch
from quality_estimate import estimate
from quality_plan import (
    ABLATIONS,
    CAPACITY_CELL,
    CLASSIFICATION_ARMS,
    CURVE_CELLS,
    CURVE_EVERY,
    CURVE_METHODS,
    DEFAULT_MODELS,
    DEFAULT_PLAN,
    METHOD_GROUPS,
    METHODS,
    MODELS,
    QUICK_SIZES,
    SIZES,
    TASKS,
    UNSUPPORTED,
    Ablation,
    cell_options,
    lr_grid,
)
from quality_report import write
from sweep import RAN_AS, base_cell, cell, gpu_name, run_cells, start_worker, where


def chosen_methods(args: argparse.Namespace, model: str, task: str) -> list[str]:
    """The grid methods a command runs on a model and task: those named, else the default plan's."""
    if args.part == "ablations":
        return []
    if (model, task) in UNSUPPORTED:
        return []
    if args.methods in METHOD_GROUPS:
        return list(METHOD_GROUPS[args.methods])
    if args.methods == "all":
        return ["base", *METHODS]
    if args.quick and not args.methods:
        return ["base", *CLASSIFICATION_ARMS]
    if args.methods:
        return args.methods.split(",")
    return list(DEFAULT_PLAN[model, task].methods) if (model, task) in DEFAULT_PLAN else []


def chosen_ablations(args: argparse.Namespace, model: str, task: str) -> list[Ablation]:
    """The ablations a command runs on a model and task: those named, else the default plan's."""
    if args.quick or args.part == "grid" or (model, task) in UNSUPPORTED:
        return []
    if args.ablations:
        return [a for a in ABLATIONS if args.ablations == "all" or a.name in args.ablations.split(",")]
    return list(ABLATIONS) if (model, task) in DEFAULT_PLAN and DEFAULT_PLAN[model, task].ablations else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help="comma-separated: minilm, smollm2, tiny-llama (the capacity cell's base: --tasks python-code)",
    )
    parser.add_argument(
        "--tasks",
        default="movie-reviews,trec",
        help="comma-separated: movie-reviews, trec, trec-fine and word-valence (MiniLM only), movie-dialog "
        "(SmolLM2 SFT, scored by held-out loss)",
    )
    parser.add_argument(
        "--methods",
        help=f"comma-separated grid methods: base, {', '.join(METHODS)}; or all; or "
        "capacity (CAPACITY_GRID, the capacity cell's methods); or gradient (GRADIENT_ROWS, issue 19's variants) "
        "(default: DEFAULT_PLAN's for each model and task)",
    )
    parser.add_argument("--part", choices=["grid", "ablations", "all"], default="all")
    parser.add_argument(
        "--ablations",
        help="comma-separated ablations, or all, run on every chosen model and "
        "task (default: DEFAULT_PLAN's for each model and task)",
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--split-seed",
        type=int,
        help="sample every seed's splits with this one seed (RunOptions.split_seed): the seeds then score the same "
        "examples, and a row's std is the training's alone (default: each seed samples its own)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        help="runs side by side, each with cores/jobs torch threads (default: 2 for minilm, "
        "whose small matmuls use 2 cores better as 2 single-thread runs; 1 for smollm2)",
    )
    parser.add_argument("--output", default="runs/quality")
    parser.add_argument(
        "--estimate",
        action="store_true",
        help="print what the chosen cells took when they ran into --output, and train nothing",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: minilm on movie-reviews, 320/100/200 examples, 1 epoch, 1 seed, one LR per method",
    )
    args = parser.parse_args()
    out = Path(args.output)
    models, tasks = args.models.split(","), args.tasks.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    for name in models:
        if name not in MODELS:
            parser.error(f"model {name!r} is unknown; use {' or '.join(MODELS)}.")
    for name in tasks:
        if name not in TASKS:
            parser.error(f"task {name!r} is unknown; use {' or '.join(TASKS)}.")
    for name in (args.methods if args.methods not in (None, "all", *METHOD_GROUPS) else "base").split(","):
        if name != "base" and name not in METHODS:
            parser.error(f"method {name!r} is not in the grid; use base or one of {', '.join(METHODS)}.")
    known_ablations = [a.name for a in ABLATIONS]
    for name in (args.ablations if args.ablations not in (None, "all") else known_ablations[0]).split(","):
        if name not in known_ablations:
            parser.error(f"ablation {name!r} is unknown; use one of {', '.join(known_ablations)}.")
    for model in models:
        for task in tasks:
            if (model, task) in UNSUPPORTED and (args.methods or args.ablations):
                parser.error(f"{model} on {task} cannot run: {UNSUPPORTED[model, task]}.")
    if args.jobs is not None and args.jobs < 1:
        parser.error(f"--jobs {args.jobs} must be 1 or more.")
    sizes = SIZES
    if args.quick:
        models, tasks, seeds, sizes, out = ["minilm"], ["movie-reviews"], seeds[:1], QUICK_SIZES, out / "quick"

    if args.estimate:
        cells = []
        for model in models:
            for task in tasks:
                ablations = chosen_ablations(args, model, task)
                grid = [m for m in chosen_methods(args, model, task) if m != "base"]
                needed = sorted({a.method for a in ablations} - set(grid))  # ablations need their method's pick
                cells += [(model, task, name) for name in [*grid, *needed, *(a.name for a in ablations)]]
        print(estimate(out, cells, seeds))
        return

    out.mkdir(parents=True, exist_ok=True)
    previous = json.loads((out / "quality.json").read_text()) if (out / "quality.json").exists() else {}
    results = {
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, "
        f"{gpu_name() or 'no GPU'}",
        "versions": f"torch {torch.__version__}, transformers {__import__('transformers').__version__}, "
        f"peft {__import__('peft').__version__}",
        "date": datetime.date.today().isoformat(),
        "command": "python bench/quality.py " + " ".join(sys.argv[1:]),
        "grid": previous.get("grid", {}),
        "ablations": previous.get("ablations", {}),
    }
    RAN_AS["how"] = f"one run at a time{where()}, {torch.get_num_threads()} torch threads"
    start = time.perf_counter()
    for model in models:
        chosen = {}
        for task in tasks:
            chosen[task] = chosen_methods(args, model, task), chosen_ablations(args, model, task)
            if chosen[task] == ([], []):
                del chosen[task]
                print(
                    f"quality: nothing to run for {model} on {task} (the default plan leaves it out; "
                    "name --methods or --ablations)",
                    file=sys.stderr,
                )
        if not chosen:
            continue
        jobs = args.jobs or MODELS[model]["jobs"]
        threads = max(1, (os.cpu_count() or 1) // jobs)
        # spawn, not fork: a forked child of a process that already ran OpenMP kernels can hang.
        pool = (
            None
            if jobs == 1
            else concurrent.futures.ProcessPoolExecutor(
                jobs,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=start_worker,
                initargs=(threads, jobs),
            )
        )
        try:
            run_model(results, out, pool, model, chosen, sizes, seeds, quick=args.quick, split_seed=args.split_seed)
        finally:
            if pool is not None:
                pool.shutdown()
    write(results, out)
    print((out / "quality.md").read_text())
    print(
        f"quality: {time.perf_counter() - start:.0f} s; {out / 'quality.json'}, {out / 'quality.md'}, "
        f"{out / 'quality.png'}"
    )


def run_model(
    results: dict,
    out: Path,
    pool,
    model: str,
    chosen: dict[str, tuple[list[str], list[Ablation]]],
    sizes: dict,
    seeds: list[int],
    quick: bool,
    split_seed: int | None = None,
) -> None:
    """On one model, ``chosen`` maps each task to its grid methods and ablations: first every grid cell of
    every task (side by side when there is a pool), then the ablations, each at its method's picked LR.
    Results and tables are rewritten as each cell finishes."""
    if "python-code" in chosen:  # the capacity cell's base and data, built once (minutes) and reused
        from capacity_cell import build

        build(CAPACITY_CELL)
    rows = {task: {r["name"]: r for r in results["grid"].get(f"{model} on {task}", [])} for task in chosen}
    options = {
        task: dataclasses.replace(cell_options(model, task, sizes, quick), split_seed=split_seed) for task in chosen
    }
    folder = {task: out / f"{model}-{task}" for task in chosen}

    jobs = {}
    for task, (methods, ablations) in chosen.items():
        for name in methods:
            if name == "base":
                if rows[task].get("base", {}).get("seeds") != seeds:  # a base scored on other seeds is redone
                    jobs[task, "base"] = (base_cell, options[task], seeds)
                continue
            method = METHODS[name]
            overrides, grid = {}, lr_grid(model, task, name)
            if quick:  # one LR; XGBLoRA's rounds shortened so that 20 steps still merge
                grid = grid[1:2]
                if name == "xgblora":
                    overrides = {"steps_per_round": 5}
                    method = dataclasses.replace(method, label=method.label.replace("kappa 50", "kappa 5"))
            curve = (model, task) in CURVE_CELLS and name in CURVE_METHODS
            cell_opts = dataclasses.replace(options[task], eval_steps=CURVE_EVERY) if curve else options[task]
            jobs[task, name] = (cell, folder[task], cell_opts, name, method, seeds, grid, overrides)
        for name in sorted({a.method for a in ablations} - set(rows[task]) - set(methods)):
            grid = lr_grid(model, task, name)
            jobs[task, name] = (cell, folder[task], options[task], name, METHODS[name], seeds, grid)
    for (task, name), row in run_cells(pool, jobs):
        rows[task][name] = row
        results["grid"][f"{model} on {task}"] = [rows[task][n] for n in ["base", *METHODS] if n in rows[task]]
        write(results, out)

    jobs = {}
    for task, (_, ablations) in chosen.items():
        for a in ablations:
            options_a = dataclasses.replace(options[task], epochs=options[task].epochs * a.steps_factor)
            method = dataclasses.replace(METHODS[a.method], label=f"{a.method}: {a.label}")
            jobs[task, a.name] = (
                cell,
                folder[task],
                options_a,
                a.name,
                method,
                seeds,
                METHODS[a.method].lr_grid,
                a.overrides,
                a.learning_rate(rows[task][a.method]["picked_lr"]),
            )
    done = {task: {r["name"]: r for r in results["ablations"].get(f"{model} on {task}", [])} for task in chosen}
    for (task, name), row in run_cells(pool, jobs):
        done[task][name] = row
        results["ablations"][f"{model} on {task}"] = [
            *(rows[task][m] for m in ("lora-qv", "xgblora", "lora-r1-all", "cola") if m in rows[task]),
            *(done[task][a.name] for a in ABLATIONS if a.name in done[task]),
        ]
        write(results, out)


if __name__ == "__main__":
    main()
