"""The quality benchmark's report: the tables of quality.md, the figures, the share of the gap each arm closes
and the overview, written from quality.json's results."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from quality_plan import LOWER_IS_BETTER, METHODS, metric_label, sign
from rank_cell_report import forgetting_section, has_forgetting, plot_cell_curves, plot_learning_vs_forgetting


def table(rows: list[dict], ablation: bool = False) -> str:
    metric = rows[0].get("metric", "accuracy") if rows else "accuracy"
    head = (
        f"| method | test {metric_label(metric)} (mean +- std) | picked LR (validation {metric} per LR) | "
        "trainable params per step | optimizer state | peak memory | train time | rounds merged |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        search = ", ".join(f"{lr}: {acc:.3f}" for lr, acc in r["validation_by_lr"].items())
        lr = "-" if r["picked_lr"] is None else f"{r['picked_lr']:g}" + (" (edge)" if r.get("lr_at_grid_edge") else "")
        lr += f" ({search})" if search else (" (not searched)" if ablation else "")
        # The untrained base has no training run to measure.
        memory, seconds = (
            ("-", "-")
            if r["name"] == "base"
            else (f"{r['peak_memory_bytes'] / 2**30:.2f} GiB", f"{r['train_seconds']:.0f} s")
        )
        if "peak_gpu_memory_bytes" in r:  # a GPU run: what bounds it is GPU memory, not the process's RSS
            memory = f"{r['peak_gpu_memory_bytes'] / 2**30:.2f} GiB GPU"
        lines.append(
            f"| {r['label']} | {r['mean']:.3f} +- {r['std']:.3f} (n={len(r['test_scores'])}) | {lr} | "
            f"{r['live_trainable_parameters']:,} | {r['optimizer_state_bytes'] / 2**20:.2f} MiB | "
            f"{memory} | {seconds} | {r['rounds_merged']} |"
        )
    return "\n".join(lines)


def plot(results: dict, out: Path) -> None:
    """quality.png: accuracy per method (error bars, dots per seed) for each model and task;
    ablations.png: the same for the ablations beside their method's default, LoRA r8 q/v dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for key, filename in (("grid", "quality.png"), ("ablations", "ablations.png")):
        panels = [(name, rows) for name, rows in results[key].items() if rows]
        if not panels:
            continue
        fig, axes = plt.subplots(len(panels), 1, figsize=(11, 3.6 * len(panels)), squeeze=False)
        for ax, (name, rows) in zip(axes[:, 0], panels):
            labels = [r["label"] for r in rows]
            ax.bar(
                range(len(rows)),
                [r["mean"] for r in rows],
                yerr=[r["std"] for r in rows],
                capsize=5,
                color=[
                    "#999999"
                    if r["name"] in ("base", "full")
                    else "#4C72B0"
                    if r["name"].startswith("lora")
                    else "#DD8452"
                    for r in rows
                ],
            )
            for i, r in enumerate(rows):
                ax.scatter([i] * len(r["test_scores"]), r["test_scores"], color="black", s=10, zorder=3)
            trained = [s for r in rows if r["name"] != "base" for s in r["test_scores"]] or [0.5]
            metric = rows[0].get("metric", "accuracy")
            top = max(trained) + 0.04 if metric in LOWER_IS_BETTER else min(1.0, max(trained) + 0.04)
            ax.set_ylim(max(0.0, min(trained) - 0.08), top)
            ax.set_xticks(range(len(rows)), labels, rotation=18, ha="right", fontsize=8)
            ax.set_ylabel(f"test {metric_label(metric)}")
            ax.set_title(f"{name}: mean over seeds, dots are single runs")
            lora = next((r for r in results["grid"].get(name, []) if r["name"] == "lora-qv"), None)
            if key == "ablations" and lora is not None:  # the baseline every variant has to beat
                ax.axhline(lora["mean"], color="#4C72B0", ls="--", lw=1, label=f"LoRA r8 q/v {lora['mean']:.3f}")
                ax.legend(fontsize=8, loc="lower right")
            base = next((r for r in rows if r["name"] == "base"), None)
            if base is not None and base["mean"] < ax.get_ylim()[0]:  # an untrained head: far below the rest
                ax.annotate(
                    f"{base['mean']:.3f}\n(below the axis)",
                    (0, ax.get_ylim()[0]),
                    xytext=(0, 12),
                    textcoords="offset points",
                    ha="center",
                    fontsize=8,
                )
        fig.tight_layout()
        fig.savefig(out / filename, dpi=100)
        plt.close(fig)


def plot_curves(results: dict, out: Path) -> None:
    """curves.png: training loss of each grid method (seed 0, picked LR, moving average over 10 steps),
    one panel per model and task; dotted lines mark XGBLoRA's round ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (name, [r for r in rows if r.get("loss_curve") and Path(r["loss_curve"]).exists()])
        for name, rows in results["grid"].items()
    ]
    panels = [(name, rows) for name, rows in panels if rows]
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 3.8 * len(panels)), squeeze=False)
    for ax, (name, rows) in zip(axes[:, 0], panels):
        for r in rows:
            logs = [json.loads(line) for line in Path(r["loss_curve"]).read_text().splitlines()]
            logs = [e for e in logs if "loss" in e]
            losses = [e["loss"] for e in logs]
            smooth = [statistics.fmean(losses[max(0, i - 9) : i + 1]) for i in range(len(losses))]
            # One colour per method in every panel, whichever methods a panel has.
            color = plt.cm.tab10(list(METHODS).index(r["name"]) % 10) if r["name"] in METHODS else None
            ax.plot(
                [e["step"] for e in logs],
                smooth,
                label=r["label"],
                lw=1.3,
                color=color,
                ls="--" if r["name"] in ("full",) else "-",
            )
            if r["name"] == "xgblora":
                for before, after in zip(logs, logs[1:]):
                    if after["round"] != before["round"]:
                        ax.axvline(after["step"], color="gray", ls=":", lw=0.8)
        ax.set_title(f"{name}: training loss (seed 0, picked LR, mean of the last 10 steps); dotted: XGBLoRA merges")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)


def plot_learning_curves(results: dict, out: Path) -> None:
    """learning_curves.png: validation accuracy against steps (mean over seeds, shaded from the lowest to the
    highest seed) for each method that recorded a curve, one panel per cell; dotted lines mark XGBLoRA's merges."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, [r for r in rows if r.get("validation_curve")]) for name, rows in results["grid"].items()]
    panels = [(name, rows) for name, rows in panels if rows]
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 4.2 * len(panels)), squeeze=False)
    for ax, (name, rows) in zip(axes[:, 0], panels):
        for r in rows:
            curve = r["validation_curve"]
            by_step = list(zip(*curve["by_seed"]))
            color = plt.cm.tab10(list(METHODS).index(r["name"]) % 10) if r["name"] in METHODS else None
            ax.plot(
                curve["steps"],
                [statistics.fmean(v) for v in by_step],
                color=color,
                marker="o",
                ms=3,
                label=f"{r['label']} (LR {r['picked_lr']:g})",
            )
            ax.fill_between(
                curve["steps"], [min(v) for v in by_step], [max(v) for v in by_step], color=color, alpha=0.15
            )
            if r["name"] == "xgblora":
                for step in curve["round_ends"]:
                    ax.axvline(step, color="gray", ls=":", lw=0.8)
        metric = rows[0]["validation_curve"].get("metric", "accuracy")
        better = "lower" if metric in LOWER_IS_BETTER else "higher"
        ax.set_title(
            f"{name}: validation {metric} ({better} is better), mean of {len(rows[0]['test_scores'])} seeds\n"
            "band: lowest to highest seed; dotted: XGBLoRA's merges",
            fontsize=10,
        )
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(f"validation {metric_label(metric)}")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=100)
    plt.close(fig)


def gap_closed(sections: dict[str, list[dict]]) -> str:
    """The seeds' claim as one number: for each cell where full fine-tuning leads LoRA r8 q/v, the share of
    that gap each method closes, (method - LoRA r8 q/v) / (full - LoRA r8 q/v); negative: behind LoRA r8 q/v.
    Each cell says whether its gap is clear: more than twice the larger std and at least 3% of base -> full."""
    cells = {}
    for name, rows in sections.items():
        by_name = {row["name"]: row for row in rows}
        direction = sign(rows[0].get("metric", "accuracy")) if rows else 1
        if {"full", "lora-qv"} <= set(by_name) and direction * (
            by_name["full"]["mean"] - by_name["lora-qv"]["mean"]
        ) > 0:
            cells[name] = by_name
    if not cells:
        return "Full fine-tuning leads LoRA r8 q/v in no cell here, so there is no gap to close."
    lines = []
    for name, by_name in cells.items():
        full, lora = by_name["full"], by_name["lora-qv"]
        gap = abs(full["mean"] - lora["mean"])
        span = abs(full["mean"] - by_name["base"]["mean"]) if "base" in by_name else None
        clear = gap > 2 * max(full["std"], lora["std"]) and (span is None or gap >= 0.03 * span)
        lines.append(
            f"- {name}: full {full['mean']:.3f} +- {full['std']:.3f}, LoRA r8 q/v {lora['mean']:.3f} +- "
            f"{lora['std']:.3f}, gap {gap:.3f}"
            + (f" ({gap / span:.1%} of base -> full)" if span else "")
            + (
                "; a clear gap"
                if clear
                else "; **not a clear gap** (within twice the larger std, or under 3% "
                "of base -> full): its shares are noise"
            )
        )
    names = list(
        dict.fromkeys(n for by_name in cells.values() for n in by_name if n not in ("base", "full", "lora-qv"))
    )
    if not names:
        return "\n".join([*lines, "", "No other method has run in these cells yet."])
    lines += ["", "| method | " + " | ".join(cells) + " |", "|---" * (len(cells) + 1) + "|"]
    for method in names:
        label = next(by_name[method]["label"] for by_name in cells.values() if method in by_name)
        shares = []
        for by_name in cells.values():
            if method not in by_name:
                shares.append("-")
                continue
            full, lora = by_name["full"]["mean"], by_name["lora-qv"]["mean"]
            shares.append(f"{(by_name[method]['mean'] - lora) / (full - lora):+.2f}")
        lines.append(f"| {label} | " + " | ".join(shares) + " |")
    return "\n".join(lines)


def timing_note(rows: list[dict]) -> str:
    """How a table's train times were taken: runs side by side are slower per run, so say when they mix."""
    trained = [row for row in rows if row["name"] != "base"]
    # Rows from before runs recorded this have no "timed_as" at all; runs from before, "not recorded".
    timings = {how for row in trained for how in row.get("timed_as", ["not recorded"])}
    known = sorted(timings - {"not recorded"})
    if "not recorded" in timings:
        known.append("for some runs not recorded" if known else "not recorded")
    return f"Train times measured: {'; '.join(known) or '-'}."


def overview(sections: dict[str, list[dict]]) -> str:
    """One table of test accuracy, a row per method and a column per cell, the best trained method of each
    cell in bold ("-": not run there); n is shown where a row has other than 3 seeds."""
    labels = {row["name"]: row["label"] for rows in sections.values() for row in rows}
    metrics = {cell: rows[0].get("metric", "accuracy") if rows else "accuracy" for cell, rows in sections.items()}
    heads = [cell if metrics[cell] == "accuracy" else f"{cell}: {metric_label(metrics[cell])}" for cell in sections]
    lines = ["| method | " + " | ".join(heads) + " |", "|---" * (len(sections) + 1) + "|"]
    best = {
        cell: max((sign(metrics[cell]) * row["mean"] for row in rows if row["name"] != "base"), default=None)
        for cell, rows in sections.items()
    }
    for name, label in labels.items():
        entries = []
        for cell, rows in sections.items():
            row = next((row for row in rows if row["name"] == name), None)
            if row is None:
                entries.append("-")
                continue
            entry = f"{row['mean']:.3f} +- {row['std']:.3f}"
            entry += f" (n={len(row['test_scores'])})" if len(row["test_scores"]) != 3 else ""
            is_best = name != "base" and sign(metrics[cell]) * row["mean"] == best[cell]
            entries.append(f"**{entry}**" if is_best else entry)
        lines.append(f"| {label} | " + " | ".join(entries) + " |")
    return "\n".join(lines)


def write(results: dict, out: Path) -> None:
    (out / "quality.json").write_text(json.dumps(results, indent=1))
    parts = [
        f"Machine: {results['machine']}; {results['versions']}; date {results['date']}.",
        f"Command: `{results['command']}`",
        "",
    ]
    parts += [
        "### Test score, every cell (accuracy unless the column names a loss; mean +- std over seeds; bold: best "
        "trained method)",
        "",
        overview(results["grid"]),
        "",
        "### Share of the gap from LoRA r8 q/v to full fine-tuning closed (1: all of it; negative: behind LoRA r8 q/v)",
        "",
        gap_closed(results["grid"]),
        "",
    ]
    if results["ablations"]:
        parts += ["### Ablations, every cell", "", overview(results["ablations"]), ""]
    for name, rows in results["grid"].items():
        parts += [f"### {name}", "", table(rows), "", timing_note(rows), ""]
        if has_forgetting(rows):
            parts += [f"### {name}: learning, forgetting and the gaps closed", "", forgetting_section(rows), ""]
    for name, rows in results["ablations"].items():
        parts += [f"### Ablations, {name}", "", table(rows, ablation=True), "", timing_note(rows), ""]
    (out / "quality.md").write_text("\n".join(parts))
    plot(results, out)
    plot_curves(results, out)
    plot_learning_curves(results, out)
    plot_learning_vs_forgetting(results, out)
    plot_cell_curves(results, out)
