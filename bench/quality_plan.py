"""What the quality benchmark compares: the arms it sweeps (named from loraboost.arms), the ablations, the
models, tasks and cells, the default plan, and each cell's run options and metric."""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

from loraboost.arms import ARMS
from loraboost.options import RunOptions
from loraboost.task_kinds import TASK_KINDS, task_kind


def half_decade(lr: float, up: bool) -> float:
    """The next rate on the 1-3-10 ladder: 1e-3 -> 3e-3 -> 1e-2 (up) or 1e-3 -> 3e-4 (down)."""
    exponent = math.floor(math.log10(lr) + 1e-9)
    if round(lr / 10**exponent) == 1:
        mantissa, exponent = (3, exponent) if up else (3, exponent - 1)
    else:
        mantissa, exponent = (1, exponent + 1) if up else (1, exponent)
    return float(f"{mantissa}e{exponent}")


def metric_of(options: RunOptions) -> str:
    """What a run's task kind is scored by (accuracy, or a loss per token), as the kind itself says."""
    return task_kind(options.task).metric


def sign(metric: str) -> int:
    """+1 where a higher score is better, -1 where a lower one is (a loss): sign * score is always "higher wins"."""
    return -1 if metric in LOWER_IS_BETTER else 1


def metric_label(metric: str) -> str:
    return f"{metric} (lower is better)" if metric in LOWER_IS_BETTER else metric


# The arms the grid sweeps, in table order: names from the library's one catalogue (loraboost.arms.ARMS), which
# holds each one's label, configuration and LR grid.
CLASSIFICATION_ARMS = (
    "full", "lora-qv", "lora-all", "lora-r24", "cola", "xgblora", "lora-r1-all", "lora-r5-all", "raclora",
    "relora", "xgblora-grad", "xgblora-gradinit", "xgblora-gradsel", "cola-grad", "xgblora-gradstep",
    "xgblora-topk", "xgblora-gradstep-topk",
)  # fmt: skip
# The capacity cell's additions: the blocks-only control, LoRA at XGBLoRA's total rank there, and the peers.
RANK_CELL_ARMS = (
    "full-blocks", "lora-r4-all", "galore-r8", "galore-r32", "galore-r8-blocks", "galore-r32-blocks", "apollo-r32",
    "apollo-r32-blocks", "apollo-mini", "apollo-mini-blocks", "boost-galore-r8", "boost-galore-r8-k50",
    "boost-galore-r32", "boost-grad-r8-k50", "lora-all-embed", "boost-galore-r32-embed",
    "boost-galore-long-r22-embed",
)  # fmt: skip
METHODS = {name: ARMS[name] for name in (*CLASSIFICATION_ARMS, *RANK_CELL_ARMS)}


class Ablation(NamedTuple):
    """A variant of a grid method: its config overrides, run at the method's picked LR unless ``own_lr``
    (a variant that changes the effective LR, such as a per-round schedule, gets its own pick)."""

    name: str
    method: str
    overrides: dict
    label: str
    own_lr: bool = False
    steps_factor: float = 1.0  # a longer (or shorter) run: the model's epochs times this
    lr_steps: int = 0  # the method's picked LR moved this many rungs along the 1-3-10 ladder (-1: one lower)

    def learning_rate(self, picked: float) -> float | None:
        """The fixed rate this variant runs at, or None when it picks its own."""
        if self.own_lr:
            return None
        for _ in range(abs(self.lr_steps)):
            picked = half_decade(picked, up=self.lr_steps > 0)
        return picked


ABLATIONS = [
    Ablation("xgb-kappa10", "xgblora", dict(steps_per_round=10), "kappa 10"),
    Ablation("xgb-kappa100", "xgblora", dict(steps_per_round=100), "kappa 100"),
    # One round over the whole run: no merge at all, so what is left is rank-1 LoRA on a third of the blocks.
    Ablation("xgb-oneround", "xgblora", dict(rounds=1, steps_per_round=None), "one round, no merge"),
    Ablation("xgb-layers1", "xgblora", dict(layers_per_round=1), "1 block per round"),
    Ablation("xgb-layersall", "xgblora", dict(layers_per_round=None), "all blocks per round"),
    Ablation("xgb-rank4", "xgblora", dict(rank=4), "rank 4"),
    Ablation("xgb-scale0.5", "xgblora", dict(merge_scale=0.5), "merge scale 0.5"),
    Ablation("xgb-keep", "xgblora", dict(optimizer_reset="keep"), "optimizer state kept"),
    Ablation("xgb-perround", "xgblora", dict(lr_schedule="per_round", round_warmup_steps=0.1), "LR schedule per round"),
    # The jagged schedule lowers the mean LR (a cosine per round under the global decay): give it its own pick.
    Ablation(
        "xgb-perround-lr",
        "xgblora",
        dict(lr_schedule="per_round", round_warmup_steps=0.1),
        "LR schedule per round, own LR pick",
        own_lr=True,
    ),
    # Boosting's case rests on many rounds; at 189 steps XGBLoRA merges 3 times. Does a longer budget close the gap?
    Ablation("xgb-3x-steps", "xgblora", {}, "3x the steps", steps_factor=3.0),
    Ablation("lora-3x-steps", "lora-qv", {}, "3x the steps", steps_factor=3.0),
    # XGBLoRA adapts every linear layer of its blocks: its 3x run needs all-linear LoRA at 3x beside it.
    Ablation("lora-all-3x-steps", "lora-all", {}, "3x the steps", steps_factor=3.0),
    # A rate picked on one seed's validation split can sit just below divergence and fail on other seeds.
    Ablation("lora-lr-down", "lora-qv", {}, "LR one rung lower", lr_steps=-1),
    # Gradient-boosted rounds at kappa 10: does starting each round on the gradient stop frequent merges costing
    # accuracy?
    Ablation("xgbgrad-kappa10", "xgblora-grad", dict(steps_per_round=10), "kappa 10"),
    Ablation("xgbgradinit-kappa10", "xgblora-gradinit", dict(steps_per_round=10), "kappa 10"),
    Ablation("cola-2", "cola", dict(rounds=2), "chain of 2"),  # a chain of 1 is LoRA r8 q/v, in the grid
    Ablation("cola-5", "cola", dict(rounds=5), "chain of 5"),
]

# jobs: runs side by side by default; MiniLM's small matmuls use 2 cores better as 2 single-thread runs.
# The capacity cell (issue 32): its base and data are built by bench/capacity_cell.py into CAPACITY_CELL.
CAPACITY_CELL = Path("runs/capacity-cell")
MODELS = {
    "minilm": dict(model="minilm", epochs=3.0, jobs=2),
    "smollm2": dict(model="default", epochs=1.0, jobs=1),
    "tiny-llama": dict(model=str(CAPACITY_CELL / "base"), epochs=1.0, jobs=2),
}
DEFAULT_MODELS = ("minilm", "smollm2")  # what runs when no --models is named
TASKS = ("movie-reviews", "trec", "trec-fine", "word-valence", "movie-dialog", "python-code")
# What a task is scored by (accuracy unless named here); a loss is better when lower, and every table says so.
# The metrics where lower is better, as the task kinds declare them (perplexity goes with a loss).
LOWER_IS_BETTER = {kind.metric for kind in TASK_KINDS.values() if not kind.higher_is_better} | {"perplexity"}
# Cells that differ from the protocol's sizes and epochs. Word valence on MiniLM is the capacity cell (issue 18;
# full fine-tuning leads LoRA r8 q/v there): a larger train split, a larger test split against noise, and a budget
# long enough for XGBLoRA to merge 14 times at kappa 50 (750 steps).
CELLS = {
    ("minilm", "word-valence"): dict(train_size=6000, validation_size=1000, test_size=2000, epochs=2.0),
    ("minilm", "trec-fine"): dict(train_size=3952, validation_size=500, test_size=1000, epochs=3.0),
    # Supervised fine-tuning on film dialog, scored by held-out loss: where full fine-tuning is known to learn
    # more than LoRA. 9,600 pairs in one epoch are 600 steps; a GPU's cell (about 30 min a run on 2 CPU cores).
    ("smollm2", "movie-dialog"): dict(
        task="sft", train_size=9600, validation_size=500, test_size=1000, epochs=1.0, max_length=64
    ),
}
# Continued pre-training on the Python files the tiny Llama did not see, 600 steps of 16 x 128 tokens, scored by
# held-out loss per token (and on held-out film dialog: what it forgets). Split by file with each run's seed.
RANK_CELL = dict(
    task="lm",
    data=str(CAPACITY_CELL / "adapt.jsonl"),
    forget_data=str(CAPACITY_CELL / "forget.jsonl"),
    block_size=128,
    batch_size=16,
    max_steps=600,
    train_size=600,
    validation_size=60,
    test_size=120,
    save_steps=100,
)
CELLS[("tiny-llama", "python-code")] = RANK_CELL
# The same cell at GPU scale: the embedded SmolLM2-135M on the same files, 2,000 steps of 16 x 256 tokens.
CELLS[("smollm2", "python-code")] = dict(RANK_CELL, block_size=256, max_steps=2000, train_size=1200, save_steps=250)
UNSUPPORTED = {
    ("smollm2", "trec-fine"): "its 50 classes have no one-token label words for a causal LM",
    ("minilm", "movie-dialog"): "an encoder with a classification head cannot be fine-tuned on prompt -> response",
    ("minilm", "python-code"): "an encoder cannot be continued-pre-trained as a causal LM",
    **{("tiny-llama", task): "the tiny Llama is the capacity cell's base, for python-code only" for task in TASKS[:5]},
}
# Learning-rate grids of a cell where an arm's default grid does not fit (a model pre-trained from scratch here
# wants larger rates than a released one); the sweep still extends a grid whose pick sits at its edge.
CELL_GRIDS = {
    ("tiny-llama", "python-code"): {
        "full": (3e-4, 1e-3, 3e-3),
        "full-blocks": (3e-4, 1e-3, 3e-3),
        "lora-qv": (1e-3, 3e-3, 1e-2),
        "lora-all": (1e-3, 3e-3, 1e-2),
        "lora-r4-all": (1e-3, 3e-3, 1e-2),
        "lora-r1-all": (3e-3, 1e-2, 3e-2),
        "xgblora": (3e-3, 1e-2, 3e-2),
        "xgblora-grad": (3e-3, 1e-2, 3e-2),
        "xgblora-gradinit": (3e-3, 1e-2, 3e-2),
        "cola": (1e-3, 3e-3, 1e-2),
        "relora": (1e-3, 3e-3, 1e-2),
        # The peers' own grids start lower; on this cell GaLore r32 on the blocks picked 1e-2 (seed 0).
        "galore-r8-blocks": (3e-3, 1e-2, 3e-2),
        "galore-r8": (3e-3, 1e-2, 3e-2),
        "galore-r32": (3e-3, 1e-2, 3e-2),
        "apollo-r32-blocks": (3e-3, 1e-2, 3e-2),
        "apollo-r32": (3e-3, 1e-2, 3e-2),
        "apollo-mini": (3e-3, 1e-2, 3e-2),
        "boost-galore-r8": (3e-3, 1e-2, 3e-2),
        "boost-galore-r8-k50": (3e-3, 1e-2, 3e-2),
        "boost-galore-r32": (3e-3, 1e-2, 3e-2),
        "boost-grad-r8-k50": (3e-3, 1e-2, 3e-2),
        "lora-all-embed": (3e-3, 1e-2),
        "boost-galore-r32-embed": (3e-3, 1e-2),
        "boost-galore-long-r22-embed": (3e-3, 1e-2),
    }
}


def lr_grid(model: str, task: str, name: str) -> tuple[float, ...]:
    """The rates an arm sweeps on a cell: the cell's own grid for it, else the arm's (loraboost.arms)."""
    return CELL_GRIDS.get((model, task), {}).get(name, METHODS[name].lr_grid)


# Where the learning curve is drawn: these methods score validation every CURVE_EVERY steps in these cells.
CURVE_CELLS = {("minilm", "word-valence"), ("smollm2", "movie-dialog")}
CURVE_METHODS, CURVE_EVERY = ("full", "lora-qv", "xgblora"), 50


class Plan(NamedTuple):
    """What a command that names no --methods (no --ablations) runs on a model and task."""

    methods: tuple[str, ...]
    ablations: bool = False  # every ablation


# The default command, sized for the 3 hours the issue allows on 2 CPU cores (`--estimate` sums what the
# runs took): every method and ablation on MiniLM TREC, the main methods on MiniLM movie reviews, and on
# SmolLM2, where a run takes about 4 min, the methods that the verdict turns on, on TREC, where they differ.
# A model and task left out runs nothing by default; anything runs when named with --methods / --ablations.
# The gradient-round variants beyond xgblora-grad are ablations of it: they run when named (`--methods gradient`).
GRADIENT_VARIANTS = ("xgblora-gradinit", "xgblora-gradsel", "xgblora-gradstep", "xgblora-topk", "xgblora-gradstep-topk")
DEFAULT_PLAN = {
    ("minilm", "trec"): Plan(("base", *(m for m in CLASSIFICATION_ARMS if m not in GRADIENT_VARIANTS)), ablations=True),
    ("minilm", "movie-reviews"): Plan(("base", "lora-qv", "cola", "xgblora", "lora-r1-all")),
    ("smollm2", "trec"): Plan(("base", "lora-qv", "lora-all", "xgblora")),
}
# The capacity cell's grid (issue 18): LoRA's ranks and targets around XGBLoRA's, the boosting methods, full.
CAPACITY_GRID = (
    "base",
    "full",
    "lora-qv",
    "lora-all",
    "lora-r1-all",
    "lora-r5-all",
    "cola",
    "xgblora",
    "relora",
    "xgblora-grad",
)
# Gradient-boosted rounds (issue 19): every variant beside literal XGBLoRA, its matched baseline and COLA.
# The capacity cell's grid (issue 32): base, full and its blocks-only control, LoRA's ranks and targets, the
# boosting arms, and GaLore / APOLLO on every weight and on the blocks' linear weights only.
RANK_CELL_GRID = (
    "base", "full", "full-blocks", "lora-qv", "lora-all", "xgblora", "galore-r32-blocks", "apollo-mini-blocks",
    "boost-galore-r8", "boost-galore-r8-k50", "boost-grad-r8-k50", "galore-r8-blocks", "xgblora-grad",
    "apollo-r32-blocks", "lora-r1-all", "cola", "relora", "boost-galore-r32", "lora-r4-all", "xgblora-gradinit",
    "galore-r8", "galore-r32", "apollo-mini", "apollo-r32", "lora-all-embed", "boost-galore-r32-embed",
    "boost-galore-long-r22-embed",
)  # fmt: skip
GRADIENT_ROWS = ("xgblora", "lora-r1-all", "xgblora-grad", *GRADIENT_VARIANTS, "cola", "cola-grad")
METHOD_GROUPS = {"capacity": CAPACITY_GRID, "gradient": GRADIENT_ROWS, "rank-cell": RANK_CELL_GRID}
SIZES = dict(train_size=1000, validation_size=500, test_size=1000)
QUICK_SIZES = dict(train_size=320, validation_size=100, test_size=200)


def cell_options(model: str, task: str, sizes: dict, quick: bool) -> RunOptions:
    """The run options of a model and task: the protocol's, or its cell's own sizes and epochs (CELLS)."""
    settings = {**sizes, "epochs": MODELS[model]["epochs"]}
    if not quick:
        settings.update(CELLS.get((model, task), {}))
    else:
        settings["epochs"] = 1.0
    return RunOptions(**{"model": MODELS[model]["model"], "data": task, "save_steps": 50, **settings})
