"""The learning-rate sweep every quality bench runs: one run per (arm, rate, seed) in its own folder, reused
when finished; the pick on validation, the grid extended while the pick sits at an edge; and the base row."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import shutil
import statistics
import sys
from pathlib import Path

import torch
from quality_plan import half_decade, metric_of, sign

from loraboost.arms import Arm
from loraboost.options import RunOptions
from loraboost.run import prepare, train
from loraboost.run_folder import FINISHED, FULL_MODEL

# Peak learning rates tried per method family, a half-decade apart (COLA picked from a grid too).
MAX_EXTENSIONS = 2  # half-decades added beyond a grid whose best rate sits at its edge


RAN_AS = {"how": "one run at a time"}  # how this process trains: train times are comparable only within one kind
RAN_AS_FILE = "ran_as.txt"


def gpu_name() -> str | None:
    """The GPU that trains, if any: train times and peak memory on a GPU say nothing about the CPU and back."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def where() -> str:
    return f" on {gpu_name()}" if gpu_name() else ""


def start_worker(threads: int, jobs: int) -> None:
    """A pool worker's set-up: its share of the cores, and a note on how its runs were timed."""
    torch.set_num_threads(threads)
    RAN_AS["how"] = f"{jobs} runs side by side{where()}, {threads} torch thread(s) each"


def run_once(folder: Path, options: RunOptions, method: Arm, overrides: dict, seed: int, lr: float) -> dict:
    """One training run (reused if already finished); checkpoints and the full model are deleted after,
    since only the summary and the metrics are needed here and they cost up to GBs per run."""
    if (folder / FINISHED).exists():
        return json.loads((folder / FINISHED).read_text())
    print(f"quality: {folder}", file=sys.stderr, flush=True)
    run_options = dataclasses.replace(options, seed=seed, learning_rate=lr, output=str(folder), overwrite=True)
    summary = train(run_options, method.with_options(overrides))
    (folder / RAN_AS_FILE).write_text(RAN_AS["how"])
    for leftover in [*folder.glob("checkpoint-*"), folder / FULL_MODEL]:
        shutil.rmtree(leftover, ignore_errors=True)
    return summary


def run_folder(out: Path, name: str, lr: float, seed: int) -> Path:
    return out / name / f"lr{lr:g}-seed{seed}"


def timed_as(folder: Path) -> str:
    return (folder / RAN_AS_FILE).read_text() if (folder / RAN_AS_FILE).exists() else "not recorded"


def cell(
    out: Path,
    options: RunOptions,
    name: str,
    method: Arm,
    seeds: list[int],
    lr_grid,
    overrides=None,
    picked_lr: float | None = None,
) -> dict:
    """A method on one model and task: pick its LR on validation (seed 0), then run every seed at it."""
    overrides = overrides or {}
    metric = metric_of(options)
    search, grid = {}, sorted(lr_grid)
    while picked_lr is None:
        for lr in grid:
            if lr not in search:
                summary = run_once(run_folder(out, name, lr, seeds[0]), options, method, overrides, seeds[0], lr)
                search[lr] = summary["metrics"]["validation"][metric]
        best = max(grid, key=lambda lr: (sign(metric) * search[lr], -lr))  # ties go to the smaller rate
        # A best rate at the grid's edge may not be the best at all: extend the grid by a half-decade that way.
        if len(grid) > 1 and best in (grid[0], grid[-1]) and len(grid) < len(lr_grid) + MAX_EXTENSIONS:
            grid = [*grid, half_decade(best, up=True)] if best == grid[-1] else [half_decade(best, up=False), *grid]
        else:
            picked_lr = best
    folders = [run_folder(out, name, picked_lr, seed) for seed in seeds]
    summaries = [run_once(f, options, method, overrides, seed, picked_lr) for f, seed in zip(folders, seeds)]
    scores = [s["metrics"]["test"][metric] for s in summaries]
    return {
        "name": name,
        "label": method.label,
        "metric": metric,
        "overrides": overrides,
        "validation_by_lr": {f"{k:g}": v for k, v in search.items()},
        "picked_lr": picked_lr,
        "lr_at_grid_edge": len(search) > 1 and picked_lr in (min(search), max(search)),
        "seeds": seeds,
        "test_scores": scores,
        "mean": statistics.fmean(scores),
        "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
        "live_trainable_parameters": summaries[0]["live_trainable_parameters"],
        "trainable_parameters": summaries[0]["trainable_parameters"],
        "optimizer_state_bytes": max(s["optimizer_state_bytes"] for s in summaries),
        "peak_memory_bytes": max(s["peak_memory_bytes"] for s in summaries),
        **(
            {"peak_gpu_memory_bytes": max(s["peak_gpu_memory_bytes"] for s in summaries)}
            if all("peak_gpu_memory_bytes" in s for s in summaries)
            else {}
        ),
        "train_seconds": statistics.fmean(s["train_seconds"] for s in summaries),
        "timed_as": sorted({timed_as(f) for f in folders}),
        "steps": summaries[0]["steps"],
        "rounds_merged": summaries[0]["rounds_merged"],
        "loss_curve": str(folders[0] / "metrics.jsonl"),
        # What the run lost elsewhere (RunOptions.forget_data): the same metric on the held-out other data.
        **(
            {
                "forget_scores": [s["metrics"]["forget"][metric] for s in summaries],
                "forget_mean": statistics.fmean(s["metrics"]["forget"][metric] for s in summaries),
            }
            if all("forget" in s["metrics"] for s in summaries)
            else {}
        ),
        **({"validation_curve": validation_curve(folders, metric)} if options.eval_steps else {}),
    }


def validation_curve(folders: list[Path], metric: str = "accuracy") -> dict:
    """The learning curve of each seed's run (``--eval-steps``): the validation metric at each scored step, and
    the steps after which a round ended (a merge), kept in quality.json so the figure can be redrawn."""
    curve = {"metric": metric, "steps": [], "by_seed": [], "round_ends": []}
    for folder in folders:
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
        scored = [row for row in rows if f"validation_{metric}" in row]
        curve["steps"] = [row["step"] for row in scored]
        curve["by_seed"].append([row[f"validation_{metric}"] for row in scored])
        if not curve["round_ends"]:
            trained = [row for row in rows if "loss" in row]
            curve["round_ends"] = [a["step"] for a, b in zip(trained, trained[1:]) if b["round"] != a["round"]]
    return curve


def base_cell(options: RunOptions, seeds: list[int]) -> dict:
    """The untrained model on each seed's test split (an encoder's new head is random: chance level)."""
    scores, forget, metric = [], [], metric_of(options)
    for seed in seeds:
        model, _, task, splits = prepare(dataclasses.replace(options, seed=seed))
        scores.append(task.evaluate(model, splits["test"])[metric])
        if "forget" in splits:
            forget.append(task.evaluate(model, splits["forget"])[metric])
    return {
        **({"forget_scores": forget, "forget_mean": statistics.fmean(forget)} if forget else {}),
        "name": "base",
        "label": "base model, untrained",
        "metric": metric,
        "picked_lr": None,
        "seeds": seeds,
        "test_scores": scores,
        "mean": statistics.fmean(scores),
        "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
        "live_trainable_parameters": 0,
        "trainable_parameters": 0,
        "optimizer_state_bytes": 0,
        "peak_memory_bytes": 0,
        "train_seconds": 0.0,
        "steps": 0,
        "rounds_merged": 0,
        "validation_by_lr": {},
    }


def run_cells(pool: concurrent.futures.Executor | None, jobs: dict[str, tuple]):
    """Yield (name, result) for each job ``name -> (function, *arguments)`` as it finishes: here, one after
    another, without a pool; in the pool's worker processes, side by side, with one."""
    if pool is None:
        for name, (function, *arguments) in jobs.items():
            yield name, function(*arguments)
        return
    futures = {pool.submit(*job): name for name, job in jobs.items()}
    for future in concurrent.futures.as_completed(futures):
        yield futures[future], future.result()
