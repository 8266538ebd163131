"""The capacity cell's own report (issue 32): per arm, held-out code loss, the forgetting loss, the share of the
gap closed from LoRA r8 q/v and r8 all-linear to full fine-tuning and to its blocks-only control, its memory
and its step time against LoRA r8 q/v; the learning-versus-forgetting scatter and the learning curves."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

ANCHORS = (("lora-qv", "full"), ("lora-all", "full"), ("lora-qv", "full-blocks"), ("lora-all", "full-blocks"))


def has_forgetting(rows: list[dict]) -> bool:
    return any("forget_mean" in row for row in rows)


def share(by_name: dict, name: str, low: str, high: str) -> str:
    """(arm - low) / (high - low) on the test loss: 1 closes the whole gap, 0 is no better than ``low``."""
    if not {name, low, high} <= set(by_name) or by_name[high]["mean"] == by_name[low]["mean"]:
        return "-"
    gap = by_name[high]["mean"] - by_name[low]["mean"]
    return f"{(by_name[name]['mean'] - by_name[low]['mean']) / gap:+.2f}"


def paired(by_name: dict, name: str, reference: str) -> list[float] | None:
    """Per seed, ``name``'s test loss minus ``reference``'s on the same split (each seed draws its own files, so
    the seeds' losses differ by more than the arms' do; the difference on one split does not carry that)."""
    if name not in by_name or reference not in by_name:
        return None
    mine, theirs = by_name[name], by_name[reference]
    common = [seed for seed in mine["seeds"] if seed in theirs["seeds"]]
    if not common:
        return None
    score = {r["name"]: dict(zip(r["seeds"], r["test_scores"])) for r in (mine, theirs)}
    return [score[name][seed] - score[reference][seed] for seed in common]


def mean_std(values: list[float] | None) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):+.3f} +- {std:.3f}"


def forgetting_section(rows: list[dict]) -> str:
    """The cell's table: loss on held-out code and on the forgetting set (lower is better for both), the shares
    of the four gaps, trainable parameters, optimizer state and train time over LoRA r8 q/v's in the same run."""
    by_name = {row["name"]: row for row in rows}
    anchor_seconds = by_name.get("lora-qv", {}).get("train_seconds")
    heads = [f"gap {low} -> {high}" for low, high in ANCHORS]
    lines = [
        "| arm | code loss (mean +- std) | vs base, same split | vs LoRA r8 all-linear, same split | forgetting loss | "
        + " | ".join(heads)
        + " | trainable params | optimizer state | train time / LoRA r8 q/v's |",
        "|---" * (8 + len(ANCHORS)) + "|",
    ]
    for row in rows:
        forget = f"{row['forget_mean']:.3f}" if "forget_mean" in row else "-"
        shares = [share(by_name, row["name"], low, high) for low, high in ANCHORS]
        ratio = (
            f"{row['train_seconds'] / anchor_seconds:.2f}x"
            if anchor_seconds and row["name"] != "base" and row.get("train_seconds")
            else "-"
        )
        lines.append(
            f"| {row['label']} | {row['mean']:.3f} +- {row['std']:.3f} (n={len(row['test_scores'])}) | "
            f"{mean_std(paired(by_name, row['name'], 'base'))} | "
            f"{mean_std(paired(by_name, row['name'], 'lora-all'))} | "
            f"{forget} | "
            + " | ".join(shares)
            + f" | {row['live_trainable_parameters']:,} | {row['optimizer_state_bytes'] / 2**20:.2f} MiB | {ratio} |"
        )
    full, lora = by_name.get("full"), by_name.get("lora-all")
    if full and lora and "base" in by_name:
        lines += ["", bar_verdict(by_name)]
    return "\n".join(lines)


def bar_verdict(by_name: dict) -> str:
    """Issue 32's bar: full fine-tuning's lead over LoRA r8 all-linear is more than twice the larger std and at least
    30% of the base -> full span; tested on the seeds' losses as they are and on the per-seed (same split) gaps."""
    full, lora, base = by_name["full"], by_name["lora-all"], by_name["base"]
    gap, span = lora["mean"] - full["mean"], base["mean"] - full["mean"]
    text = f"Full fine-tuning's code loss is {gap:.3f} below LoRA r8 all-linear's, {gap / span:.0%} of the base -> "
    text += "full span"
    if min(len(full["test_scores"]), len(lora["test_scores"])) < 2:
        return text + "; one seed, so no std yet: the bar (more than twice the larger std) is not tested."
    unpaired = gap > 2 * max(full["std"], lora["std"]) and gap >= 0.3 * span
    gaps = [-d for d in paired(by_name, "full", "lora-all")]
    paired_std = statistics.stdev(gaps) if len(gaps) > 1 else 0.0
    return (
        text + f". Against the larger std of the two rows ({max(full['std'], lora['std']):.3f}; it also holds the "
        "seeds' different test files unless --split-seed fixed them) the bar is "
        f"{'met' if unpaired else '**not met**'}; per seed on the same split the "
        f"gap is {statistics.fmean(gaps):.3f} +- {paired_std:.3f}, "
        + ("more than twice its std." if statistics.fmean(gaps) > 2 * paired_std else "**not** twice its std.")
    )


def plot_learning_vs_forgetting(results: dict, out: Path) -> None:
    """rank_cell.png: one point per arm, held-out code loss against the forgetting loss, for each cell that has a
    forgetting set (lower-left is better: learns more, forgets less)."""
    cells = {name: rows for name, rows in results["grid"].items() if has_forgetting(rows)}
    if not cells:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(cells), figsize=(7 * len(cells), 5.5), squeeze=False)
    for ax, (name, rows) in zip(axes[0], cells.items()):
        for row in rows:
            if "forget_mean" not in row:
                continue
            ax.scatter(row["mean"], row["forget_mean"], s=30)
            ax.annotate(row["name"], (row["mean"], row["forget_mean"]), fontsize=8, xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
        ax.set_xlabel("held-out code loss per token (lower: learns more)")
        ax.set_ylabel("held-out dialog loss per token (lower: forgets less)")
        ax.set_title(f"{name}: learning against forgetting")
    fig.tight_layout()
    fig.savefig(out / "rank_cell.png", dpi=110)
    plt.close(fig)


# The learning curves issue 32 asks for: full fine-tuning and its control, LoRA, XGBLoRA, GaLore, APOLLO-Mini, and the
# boosters that are GaLore; merges drawn for the boosting arms that merge.
CURVE_ARMS = ("full", "full-blocks", "lora-all", "xgblora", "galore-r32-blocks", "apollo-mini-blocks",
              "boost-galore-r8", "boost-galore-r8-k50")  # fmt: skip
MERGES_DRAWN = {"xgblora": ":", "boost-galore-r8-k50": "-."}
SMOOTHING = 25  # logged steps in the moving average: one 16 x 128 batch's loss is noisy


def plot_cell_curves(results: dict, out: Path) -> None:
    """rank_cell_curves.png: the training loss of the curve arms (seed 0, picked LR, moving average), per cell with
    a forgetting set, with XGBLoRA's merges (dotted) and the 50-step GaLore boosters' merges (dash-dot) marked."""
    cells = {name: rows for name, rows in results["grid"].items() if has_forgetting(rows)}
    if not cells:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(cells), 1, figsize=(11, 5 * len(cells)), squeeze=False)
    for ax, (name, rows) in zip(axes[:, 0], cells.items()):
        by_name = {row["name"]: row for row in rows if row.get("loss_curve") and Path(row["loss_curve"]).exists()}
        for arm in (a for a in CURVE_ARMS if a in by_name):
            logs = [json.loads(line) for line in Path(by_name[arm]["loss_curve"]).read_text().splitlines()]
            logs = [entry for entry in logs if "loss" in entry]
            losses = [entry["loss"] for entry in logs]
            smooth = [statistics.fmean(losses[max(0, i - SMOOTHING + 1) : i + 1]) for i in range(len(losses))]
            (line,) = ax.plot([e["step"] for e in logs], smooth, lw=1.3, label=by_name[arm]["label"])
            if arm in MERGES_DRAWN:
                for before, after in zip(logs, logs[1:]):
                    if after["round"] != before["round"]:
                        ax.axvline(after["step"], color=line.get_color(), ls=MERGES_DRAWN[arm], lw=0.7, alpha=0.6)
        ax.set_title(f"{name}: training loss (seed 0, picked LR, mean of the last {SMOOTHING} steps); lines: merges")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss per token")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "rank_cell_curves.png", dpi=110)
    plt.close(fig)
