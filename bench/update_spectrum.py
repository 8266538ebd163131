"""Update spectrum: how many directions each arm's weight change uses on the capacity cell, module by module.

A chain of rank-r boosters can add r new directions per round, so after T rounds its update may have rank T r;
whether it does is a measurement. For each finished run this loads the final weights (a booster run: the base
with its exported PEFT adapter merged by PEFT; a full or peer run: its saved model), takes every block linear
weight's change dW = W_final - W_base, and reports from dW's singular values s_1 >= s_2 >= ...:

- the share of dW's energy (sum of s_i^2) in its top 8 directions (LoRA r8's whole budget);
- the directions that hold 90% of its energy;
- its stable rank, sum s_i^2 / s_1^2;
- its size, the Frobenius norm sqrt(sum s_i^2);
- for a chain, how straight its rounds add up: |sum_t U_t| / sum_t |U_t| over the merged rounds' updates U_t of a
  weight (Frobenius norms; 1 when every round moves the same way, 1 / sqrt(T) when T equal rounds are orthogonal,
  as a random walk's steps are), read from the ledger in the run's booster state.

    python bench/update_spectrum.py RUN [RUN ...] --output bench/cpu-runs/<date>/update_spectrum.json

Each run is labelled by its folder's parent (the arm) and name (the LR and seed), as bench/quality.py lays them out.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import transformers

from loraboost.run import saved_run
from loraboost.run_folder import FINISHED, FULL_MODEL, STATE

KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def final_weights(run: Path, base: str) -> dict[str, torch.Tensor]:
    """Every block linear weight of the run's final model, by module name."""
    if (run / FULL_MODEL).exists():
        model = transformers.AutoModelForCausalLM.from_pretrained(run / FULL_MODEL, dtype=torch.float32)
    else:
        import peft

        model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        model = peft.PeftModel.from_pretrained(model, run / "adapter").merge_and_unload()
    return block_weights(model)


def block_weights(model) -> dict[str, torch.Tensor]:
    return {
        name: module.weight.detach().double()
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in KINDS
    }


def spectrum(delta: torch.Tensor) -> dict[str, float]:
    """dW's energy in its top 8 directions, the directions holding 90% of it, its stable rank and its norm."""
    s = torch.linalg.svdvals(delta)
    energy = s.square()
    total = float(energy.sum())
    if total == 0:
        return {"top8_energy": 0.0, "rank_90": 0, "stable_rank": 0.0, "norm": 0.0}
    cumulative = energy.cumsum(0) / total
    return {
        "top8_energy": float(cumulative[min(7, len(s) - 1)]),
        "rank_90": int((cumulative < 0.9).sum()) + 1,
        "stable_rank": total / float(energy[0]),
        "norm": total**0.5,
    }


def round_straightness(run: Path) -> dict[str, float] | None:
    """Mean over weights with 2+ merged rounds of |sum U_t| / sum |U_t|, the rounds per weight and the mean
    |U_t|, from the ledger (a folded weight's rounds are summed already and left out); None without 2+ rounds."""
    from safetensors import safe_open

    if not (run / STATE).exists():
        return None
    with safe_open(str(run / STATE), "pt") as f:
        records = json.loads(f.metadata()["loraboost"])["ledger"]
        updates: dict[str, list[torch.Tensor]] = {}
        for i, record in enumerate(records):
            if "round" in record:  # a merged round (a folded module's record carries folded_rounds instead)
                A, B = f.get_tensor(f"ledger.{i}.A").double(), f.get_tensor(f"ledger.{i}.B").double()
                updates.setdefault(record["module"], []).append(record["scale"] * (B @ A))
    chains = [u for u in updates.values() if len(u) >= 2]
    if not chains:
        return None
    straight = [float(sum(u).norm() / sum(x.norm() for x in u)) for u in chains]
    return {
        "straightness": statistics.fmean(straight),
        "rounds_per_weight": statistics.fmean(len(u) for u in chains),
        "round_norm": statistics.fmean(float(x.norm()) for u in chains for x in u),
    }


def measure(run: Path) -> dict:
    options, _, _ = saved_run(run)
    base = block_weights(transformers.AutoModelForCausalLM.from_pretrained(options.model, dtype=torch.float32))
    final = final_weights(run, options.model)
    modules = {name: spectrum(final[name] - weight) for name, weight in base.items()}
    by_kind = {}
    for kind in KINDS:
        rows = [m for name, m in modules.items() if name.endswith(kind)]
        if rows:
            by_kind[kind] = {key: statistics.fmean(r[key] for r in rows) for key in rows[0]}
    summary = json.loads((run / FINISHED).read_text())
    return {
        "arm": run.parent.name,  # the grid's row name (a screened variant's too), not the arm it trains as
        "run": run.name,
        "learning_rate": options.learning_rate,
        "rounds_merged": summary.get("rounds_merged", 0),
        "test_loss": summary["metrics"]["test"]["loss"],
        "by_kind": by_kind,
        "all_modules": {
            key: statistics.fmean(m[key] for m in modules.values()) for key in next(iter(modules.values()))
        },
        "rounds": round_straightness(run),
    }


def plot(results: list[dict], path: Path) -> None:
    """Each run as a point: how many directions its weight change uses against how far it moves, coloured by loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    x = [r["all_modules"]["rank_90"] for r in results]
    y = [r["all_modules"]["norm"] for r in results]
    points = ax.scatter(x, y, c=[r["test_loss"] for r in results], cmap="viridis_r", s=60)
    # Numbers beside the points and the names in a key: the chains' points sit too close for names to fit.
    for i, (xi, yi) in enumerate(zip(x, y), start=1):
        ax.annotate(str(i), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    key = "\n".join(f"{i}  {r['arm']}" for i, r in enumerate(results, start=1))
    ax.text(1.02, 1.0, key, transform=ax.transAxes, va="top", fontsize=8, family="monospace")
    fig.colorbar(points, label="held-out loss (lower is better)", location="left", pad=0.12)
    ax.set_xlabel("directions holding 90% of the weight change's energy (mean over weights)")
    ax.set_ylabel("size of the weight change (Frobenius, mean)")
    ax.set_title("How wide and how far each run moved the blocks' weights")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def straightness(rounds: dict | None) -> str:
    if rounds is None:
        return "-"
    return f"{rounds['straightness']:.2f} ({rounds['rounds_per_weight']:.1f} rounds of {rounds['round_norm']:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="finished run folders")
    parser.add_argument("--output", default="bench/results/update_spectrum.json")
    args = parser.parse_args()
    for run in args.runs:
        if not (Path(run) / FINISHED).exists():
            parser.error(f"{run!r} is not a finished run (no {FINISHED}).")
    results = [measure(Path(run)) for run in args.runs]
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(results, out.with_suffix(".png"))
    out.write_text(
        json.dumps({"command": "python bench/update_spectrum.py " + " ".join(args.runs), "runs": results}, indent=1)
    )
    print("| arm | run | rounds | test loss | top-8 energy | rank for 90% | stable rank | norm | straightness |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        a = r["all_modules"]
        print(
            f"| {r['arm']} | {r['run']} | {r['rounds_merged']} | {r['test_loss']:.4f} | {a['top8_energy']:.3f} | "
            f"{a['rank_90']:.1f} | {a['stable_rank']:.2f} | {a['norm']:.3f} | {straightness(r['rounds'])} |"
        )


if __name__ == "__main__":
    main()
