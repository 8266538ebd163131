"""`loraboost compare`: several methods x seeds on the same data and step budget, each a normal run;
a table (mean +- std of the metric, trainable parameters, optimizer state, memory, time) and a figure."""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from .arms import Arm, arm_of
from .config import BoostConfig
from .options import RunOptions
from .run import prepare, train
from .run_folder import FINISHED
from .task_kinds import task_kind


def compare(
    options: RunOptions,
    methods: list[Arm] | dict[str, Arm | BoostConfig],
    seeds: list[int],
    output: str | Path,
    include_base: bool = True,
) -> list[dict[str, Any]]:
    """Train every arm (or, by name, BoostConfig) with every seed into ``output/<name>-seed<k>`` (finished runs
    are reused, so an interrupted comparison resumes) and write compare.json, compare.md and compare.png; returns
    the rows, each with its arm's label, trainable parameters, optimizer state bytes and peak memory."""
    named = methods.items() if isinstance(methods, dict) else ((arm.name, arm) for arm in methods)
    arms = {name: dataclasses.replace(arm_of(what), name=name) for name, what in named}
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    kind = task_kind(options.task)
    metric = kind.metric
    rows = []
    if include_base:
        scores = []
        for seed in seeds:
            seeded = dataclasses.replace(options, seed=seed)
            model, _, task, splits = prepare(seeded)  # the untouched base model
            scores.append(task.evaluate(model, splits["test"])[metric])
        rows.append(_row("base (untuned)", "the model before fine-tuning", metric, scores, []))
    for name, arm in arms.items():
        summaries = []
        for seed in seeds:
            folder = out / f"{name}-seed{seed}"
            if (folder / FINISHED).exists():
                summaries.append(json.loads((folder / FINISHED).read_text()))
                continue
            print(f"loraboost compare: {name}, seed {seed} -> {folder}", file=sys.stderr)
            seeded = dataclasses.replace(options, seed=seed, output=str(folder), overwrite=True, resume=False)
            summaries.append(train(seeded, _seeded(arm, seed)))
        rows.append(_row(name, arm.label, metric, [s["metrics"]["test"][metric] for s in summaries], summaries))
    report = {"metric": metric, "higher_is_better": kind.higher_is_better, "seeds": seeds, "rows": rows}
    (out / "compare.json").write_text(json.dumps(report, indent=1))
    table = format_table(rows, metric, kind.higher_is_better)
    (out / "compare.md").write_text(table + "\n")
    plot(rows, metric, kind.higher_is_better, out, seeds)
    print(table)
    print(f"\nfigure: {out / 'compare.png'}  table: {out / 'compare.md'}")
    return rows


def _seeded(arm: Arm, seed: int) -> Arm:
    """The arm for one seed: a booster's BoostConfig values follow the run's seed."""
    if arm.boost is None or "seed" not in arm.boost:
        return arm
    return dataclasses.replace(arm, boost={**arm.boost, "seed": seed})


def _row(name: str, label: str, metric: str, scores: list[float], summaries: list[dict]) -> dict[str, Any]:
    first = summaries[0] if summaries else {}
    return {
        "method": name,
        "label": label,
        "metric": metric,
        "scores": scores,
        "mean": statistics.fmean(scores),
        "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
        "live_trainable_parameters": first.get("live_trainable_parameters", 0),
        "trainable_parameters": first.get("trainable_parameters", 0),
        "optimizer_state_bytes": max((s["optimizer_state_bytes"] for s in summaries), default=0),
        "peak_memory_bytes": max((s["peak_memory_bytes"] for s in summaries), default=0),
        "train_seconds": statistics.fmean([s["train_seconds"] for s in summaries]) if summaries else 0.0,
        "rounds_merged": first.get("rounds_merged", 0),
        "runs": [s.get("seed") for s in summaries],
    }


def format_table(rows: list[dict], metric: str, higher_is_better: bool = True) -> str:
    better = "higher" if higher_is_better else "lower"
    lines = [
        f"| method | what it is | test {metric} (mean +- std; {better} is better) | trainable params per step | "
        "optimizer state | peak memory | train time | rounds merged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['label']} | {r['mean']:.3f} +- {r['std']:.3f} (n={len(r['scores'])}) | "
            f"{r['live_trainable_parameters']:,} | {r['optimizer_state_bytes'] / 2**20:.2f} MiB | "
            f"{r['peak_memory_bytes'] / 2**30:.2f} GiB | {r['train_seconds']:.0f} s | {r['rounds_merged']} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], metric: str, higher_is_better: bool, out: Path, seeds: list[int]) -> None:
    """compare.png: the metric per method with error bars, and training-loss curves with round ends marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, curves) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [r["method"] for r in rows]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    bars.bar(
        names,
        [r["mean"] for r in rows],
        yerr=[r["std"] for r in rows],
        capsize=6,
        color=[colors[i % len(colors)] for i in range(len(rows))],
    )
    for i, r in enumerate(rows):
        bars.scatter([i] * len(r["scores"]), r["scores"], color="black", s=12, zorder=3)
    low = min(min(r["scores"]) for r in rows)
    bars.set_ylim(max(0.0, low - 0.1) if metric == "accuracy" else 0, None)
    bars.set_ylabel(f"test {metric}" + (" (higher is better)" if higher_is_better else " (lower is better)"))
    bars.set_title(f"{metric} over {len(seeds)} seed(s); dots are single runs")
    bars.tick_params(axis="x", rotation=15)
    for i, r in enumerate(rows):
        if not r["runs"]:
            continue
        color = colors[i % len(colors)]
        log = out / f"{r['method']}-seed{r['runs'][0]}" / "metrics.jsonl"
        entries = [json.loads(line) for line in log.read_text().splitlines() if "loss" in line]
        entries = [e for e in entries if "loss" in e]
        curves.plot([e["step"] for e in entries], [e["loss"] for e in entries], color=color, label=r["method"], lw=1.2)
        for before, after in zip(entries, entries[1:]):
            if after["round"] != before["round"]:  # logged after the step's merge: it ended `after`'s step
                curves.axvline(after["step"], color=color, ls=":", lw=0.8, alpha=0.7)
    curves.set_xlabel("step")
    curves.set_ylabel("training loss")
    curves.set_title(f"training loss (seed {seeds[0]}); dotted lines: round ends (merges)")
    curves.legend()
    fig.tight_layout()
    fig.savefig(out / "compare.png", dpi=110)
    plt.close(fig)
