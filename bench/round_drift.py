"""Do XGBLoRA's boosters stall before they are merged? The drift of the live factors, step by step, in real runs:
the evidence a round length that adapts (``steps_per_round="auto"``, issue 19) would act on.

drift_t = ||m_t|| / n_t, with m_t = beta m_{t-1} + (1 - beta) d_t and n_t = beta n_{t-1} + (1 - beta) ||d_t||,
where d_t is one optimizer step's change of the live boosters' factors (A and B of every live module, as one
vector) and beta = 0.9 (about ten steps). It is 1 when every step goes the same way and about
sqrt((1 - beta) / (1 + beta)) = 0.23 when steps point in random directions: a booster whose drift falls to
that level has stopped making directed progress, and its round could end.

Runs (the quality benchmark's protocol and cell sizes; by default MiniLM TREC, 1000 training examples, 3 epochs =
189 steps, seed 0, XGBLoRA's picked LR 1e-2):
  xgblora          literal XGBLoRA, kappa 50
  xgblora-grad     gradient start and gradient blocks, kappa 50
  one-round        XGBLoRA's booster never merged: one round over the whole run (does a round stall if left alone?)
  boost-galore-r8  (and any other booster arm named in --runs) as the catalogue defines it

    python bench/round_drift.py [--model minilm] [--task trec] [--lr 0.01] [--seed 0] [--output runs/round-drift]
    python bench/round_drift.py --model tiny-llama --task python-code --lr 0.001 --output runs/round-drift-cell

Writes OUTPUT/round_drift.json (the drift at every step, each run's scores) and round_drift.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from unittest import mock

import torch

from loraboost.arms import ARMS
from loraboost.booster import Booster
from loraboost.run import train

sys.path.insert(0, str(Path(__file__).parent))
from quality_plan import SIZES, cell_options, metric_of  # noqa: E402  (the quality benchmark's protocol)

DECAY = 0.9
NOISE_DRIFT = math.sqrt((1 - DECAY) / (1 + DECAY))  # steps in random directions, in many dimensions
# Arms of the library's catalogue, and XGBLoRA as one round that is never merged (its overrides).
RUNS = {
    "xgblora": ARMS["xgblora"],
    "xgblora-grad": ARMS["xgblora-grad"],
    "one-round": ARMS["xgblora"].with_options({"steps_per_round": 10**6}),
}


class DriftMeter:
    """The drift of a sequence of factor snapshots (see the module docstring)."""

    def __init__(self, factors: list[torch.Tensor]):
        self.previous = [f.detach().float().clone() for f in factors]
        self.mean_step = [torch.zeros_like(p) for p in self.previous]
        self.mean_length = 0.0

    @torch.no_grad()
    def update(self, factors: list[torch.Tensor]) -> float:
        length_sq = 0.0
        for i, factor in enumerate(factors):
            current = factor.detach().float()
            step = current - self.previous[i]
            self.mean_step[i].mul_(DECAY).add_(step, alpha=1 - DECAY)
            length_sq += float(step.pow(2).sum())
            self.previous[i] = current.clone()
        self.mean_length = DECAY * self.mean_length + (1 - DECAY) * math.sqrt(length_sq)
        mean_norm = math.sqrt(sum(float(m.pow(2).sum()) for m in self.mean_step))
        return mean_norm / self.mean_length if self.mean_length > 0 else 1.0


def live_factors(booster: Booster) -> list[torch.Tensor]:
    return [p for slot in booster.live_slots for p in (slot.A, slot.B)]


def measured_step(log: list[dict]):
    """Booster.step that records the drift of the step just taken; a new booster (a round change, or round 0's
    restart from the gradient) starts a new meter."""
    original = Booster.step
    meters: dict[int, DriftMeter] = {}

    def step(self: Booster, optimizer) -> bool:
        meter = meters.setdefault(id(self), DriftMeter(live_factors(self)))
        log.append({"step": self.global_step + 1, "round": self.round, "drift": meter.update(live_factors(self))})
        ended = original(self, optimizer)
        if ended or (self.global_step == 1 and self.config.gradient_start):
            meters[id(self)] = DriftMeter(live_factors(self))
        return ended

    return step


def run(name: str, args, out: Path) -> dict:
    options = dataclasses.replace(
        cell_options(args.model, args.task, SIZES, quick=False),
        output=str(out / name),
        learning_rate=args.lr,
        seed=args.seed,
        overwrite=True,
    )
    log: list[dict] = []
    arm = RUNS.get(name) or ARMS[name]
    with mock.patch.object(Booster, "step", measured_step(log)):
        summary = train(options, arm)
    ends = [entry["step"] for entry, following in zip(log, log[1:]) if following["round"] != entry["round"]]
    return {
        "config": arm.boost,
        "metric": metric_of(options),
        "metrics": summary["metrics"],
        "merges_after_step": ends,
        "drift": log,
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(8, 2.2 * len(results)), sharex=True, sharey=True)
    for ax, (name, result) in zip(axes, results.items()):
        steps = [e["step"] for e in result["drift"]]
        ax.plot(steps, [e["drift"] for e in result["drift"]], lw=1.2, label="drift of the live factors")
        for end in result["merges_after_step"]:
            ax.axvline(end, color="grey", ls=":", lw=1)
        ax.axhline(NOISE_DRIFT, color="red", ls="--", lw=1, label=f"steps in random directions ({NOISE_DRIFT:.2f})")
        metric = result.get("metric", "accuracy")
        score = result["metrics"]["validation"][metric]
        ax.set_title(f"{name}: validation {metric} {score:.3f} (dotted: merges)", fontsize=9)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("drift")
    axes[0].legend(fontsize=8, loc="lower left")
    axes[-1].set_xlabel("optimizer step")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm", help="a model of the quality benchmark (tiny-llama: the cell)")
    parser.add_argument("--task", default="trec", help="a task of the quality benchmark the model runs")
    parser.add_argument("--lr", type=float, default=1e-2, help="peak LR (default: XGBLoRA's pick on MiniLM TREC)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--runs", default=",".join(RUNS), help=f"comma-separated: {', '.join(RUNS)}, or any booster arm's name"
    )
    parser.add_argument("--output", default="runs/round-drift")
    args = parser.parse_args()
    out = Path(args.output)
    names = args.runs.split(",")
    unknown = [n for n in names if n not in RUNS and (n not in ARMS or ARMS[n].boost is None)]
    if unknown:
        parser.error(f"--runs {unknown[0]!r} is neither a drift run ({', '.join(RUNS)}) nor a booster arm.")
    results = {name: run(name, args, out) for name in names}
    (out / "round_drift.json").write_text(
        json.dumps({"command": "python bench/round_drift.py " + " ".join(sys.argv[1:]), "runs": results}, indent=1)
    )
    plot(results, out / "round_drift.png")
    for name, result in results.items():
        drift = result["drift"]
        before_merge = [e["drift"] for e in drift if e["step"] in result["merges_after_step"]]
        tail = [e["drift"] for e in drift[-20:]]
        print(
            f"{name}: lowest drift {min(e['drift'] for e in drift[10:]):.2f} after step 10; at each merge "
            f"{', '.join(f'{d:.2f}' for d in before_merge) or '-'}; last 20 steps {min(tail):.2f}-{max(tail):.2f}; "
            f"validation {result['metric']} {result['metrics']['validation'][result['metric']]:.3f}"
        )
    print(f"random-direction level {NOISE_DRIFT:.2f}; {out / 'round_drift.json'}, {out / 'round_drift.png'}")


if __name__ == "__main__":
    main()
