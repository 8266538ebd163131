"""Arms: the one catalogue of what a run can train (the booster presets and their variants, full fine-tuning,
and the optimizer peers GaLore and APOLLO that transformers' Trainer runs), each with its label and default LR."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any

from .config import PRESETS, BoostConfig

# Learning-rate grids the quality benchmark sweeps (extended while the pick sits at an edge).
FULL_GRID = (1e-5, 3e-5, 1e-4)
LORA_GRID = (3e-4, 1e-3, 3e-3)
XGB_GRID = (1e-3, 3e-3, 1e-2)  # rank-1 boosters with fresh Adam state each round learn slowly at LoRA's rates
PEER_GRID = (3e-4, 1e-3, 3e-3)

# What the Trainer runs for the peers, and where the package comes from (the optional extra 'peers').
PEER_PACKAGES = {"galore": ("galore_torch", "galore-torch"), "apollo": ("apollo_torch", "apollo-torch")}
# BoostConfig fields a peer reads, as the optimizer's own settings (a projection rank, its refresh gap).
PEER_OPTIONS = {"rank": "rank", "steps_per_round": "update_proj_gap"}


@dataclass(frozen=True)
class Arm:
    """One thing that trains, as a row of a comparison.

    Args:
        name: the row's stable name (``--method`` / ``--methods``; other tooling reads it in quality.json).
        label: what it is, in words, for tables and figures.
        learning_rate: the peak rate when none is given (the rate the quality benchmark picked most often).
        lr_grid: the rates the quality benchmark sweeps for it.
        boost: a booster arm's BoostConfig values (its preset and overrides); None: no booster.
        optim: the Trainer's optimizer (``adamw_torch``, or a peer's ``galore_adamw`` / ``apollo_adamw``).
        optim_args: the peer optimizer's settings (rank, update_proj_gap, scale, ...).
        blocks_only: only the blocks' linear weights train; embeddings, norms and heads are frozen (what the
            adapters can touch).
        peer: the optimizer peer's family (``galore`` / ``apollo``), whose package is an optional extra.
    """

    name: str
    label: str
    learning_rate: float
    lr_grid: tuple[float, ...] = LORA_GRID
    boost: dict | None = None
    optim: str = "adamw_torch"
    optim_args: dict = field(default_factory=dict)
    blocks_only: bool = False
    peer: str | None = None

    @property
    def kind(self) -> str:
        """``booster`` (a Booster trains adapters), ``peer`` (a low-rank optimizer trains the weights) or ``full``."""
        return "booster" if self.boost is not None else "peer" if self.peer else "full"

    def with_options(self, overrides: dict[str, Any]) -> Arm:
        """This arm with BoostConfig-field overrides applied where they mean something: every field for a
        booster (checked by BoostConfig), a peer's rank and update gap; anything else is one-sentence error."""
        overrides = {k: v for k, v in overrides.items() if k != "seed"}
        if not overrides:
            return self
        if self.kind == "booster":
            boost = {**self.boost, **overrides}
            if "alpha" in self.boost and "rank" in overrides and "alpha" not in overrides:
                # An arm that sets alpha fixes its scaling alpha / r (GaLore's scale); another rank keeps it.
                boost["alpha"] = self.boost["alpha"] / self.boost["rank"] * overrides["rank"]
            BoostConfig(**boost)  # every field checked, with its own sentence
            return dataclasses.replace(self, boost=boost)
        allowed = PEER_OPTIONS if self.kind == "peer" else {}
        refused = sorted(set(overrides) - set(allowed))
        if refused:
            flag = "--" + refused[0].replace("_", "-")
            takes = (
                "it takes only --rank and --steps-per-round (its projection's rank and update gap)"
                if self.kind == "peer"
                else "it trains every weight with AdamW and has no booster settings"
            )
            raise ValueError(f"{flag} does not apply to --method {self.name}: {takes}; drop {flag}.")
        args = dict(self.optim_args)
        for key, value in overrides.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key}={value!r} is not valid for --method {self.name}; use an integer >= 1.")
            args[PEER_OPTIONS[key]] = value
        return dataclasses.replace(self, optim_args=args)

    def booster_config(self, seed: int) -> BoostConfig | None:
        """The BoostConfig a booster arm trains with (seeded by the run unless its values name a seed)."""
        return None if self.boost is None else BoostConfig(**{"seed": seed, **self.boost})

    def check_available(self) -> None:
        """Refuse, in one sentence, a peer whose optional package is not installed."""
        if self.peer is None:
            return
        module, package = PEER_PACKAGES[self.peer]
        try:
            importlib.import_module(module)
        except ImportError:
            raise ValueError(
                f"--method {self.name} needs the {package} package, which is not installed; install it with "
                "pip install 'loraboost[peers]'."
            ) from None

    def check_launch(self, gradient_accumulation: int) -> None:
        """Refuse what the Trainer's layer-wise peers cannot do: more than one process, or accumulation."""
        if not self.optim.endswith("layerwise"):
            return
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError(
                f"--method {self.name} updates each layer inside backward, which DDP does not support; "
                "run it in one process, or use --method galore."
            )
        if gradient_accumulation != 1:
            raise ValueError(
                f"--method {self.name} updates each layer inside backward, so it cannot accumulate gradients; "
                f"drop --gradient-accumulation {gradient_accumulation}."
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Arm:
        data = dict(data)
        data["lr_grid"] = tuple(data.get("lr_grid", LORA_GRID))
        return cls(**data)


def _booster(name: str, label: str, lr: float, grid=LORA_GRID, **boost) -> Arm:
    return Arm(name, label, lr, grid, boost=boost)


def _galore(name: str, label: str, blocks_only: bool = False, optim: str = "galore_adamw", **args) -> Arm:
    # GaLore's own defaults (rank 128, refresh every 200 steps, scale 0.25), unless the arm sets its own.
    settings = {"rank": 128, "update_proj_gap": 200, "scale": 0.25, "proj_type": "std", **args}
    return Arm(name, label, 1e-3, PEER_GRID, optim=optim, optim_args=settings, blocks_only=blocks_only, peer="galore")


def _apollo(name: str, label: str, blocks_only: bool = False, **args) -> Arm:
    # APOLLO's defaults: random projection of rank 256, channel-wise scaling, scale 1 (APOLLO-Mini: rank 1,
    # tensor-wise scaling, scale 128; both from the apollo-torch README).
    settings = {"rank": 256, "proj": "random", "scale_type": "channel", "scale": 1.0, "update_proj_gap": 200, **args}
    return Arm(name, label, 1e-3, PEER_GRID, optim="apollo_adamw", optim_args=settings, blocks_only=blocks_only,
               peer="apollo")  # fmt: skip


def _xgblora_variant(name: str, label: str, **boost) -> Arm:
    return _booster(name, label, 1e-2, XGB_GRID, method="xgblora", **boost)


def _galore_boost(name: str, label: str, rank: int, steps_per_round: int = 200, **extra) -> Arm:
    # GaLore's scale 0.25 as the booster's alpha / r; no rounds limit: a round every steps_per_round steps.
    settings = dict(alpha=0.25 * rank, target_modules="all-linear", rounds=None, steps_per_round=steps_per_round)
    gradient_projection = dict(frozen_factor="shorter", round_init="gradient", optimizer_reset="keep")
    boost = {**settings, **gradient_projection, **extra}  # an arm's own values (e.g. frozen_factor) win
    return _booster(name, label, 1e-2, PEER_GRID, method="lora", rank=rank, **boost)


_MINI = dict(rank=1, scale_type="tensor", scale=128.0)
ALL_LINEAR = dict(method="lora", target_modules="all-linear")
EMBED = ["embed_tokens"]  # a Llama's input embeddings (and the head tied to them)

# Every arm by name. Adding one here is all a new arm needs: the command line, compare and the benchmarks read it.
ARMS: dict[str, Arm] = {
    arm.name: arm
    for arm in (
        # The five presets as users name them, with the defaults BENCHMARKS.md's quality runs picked most often.
        _booster("lora", "LoRA r8 (PEFT's default targets)", 3e-3, method="lora"),
        _booster("cola", "COLA, 3 links r8", 3e-3, method="cola"),
        _booster("xgblora", "XGBLoRA r1, 1/3 of blocks, kappa 50", 1e-2, XGB_GRID, method="xgblora"),
        _booster("raclora", "RAC-LoRA, 3 links r8, A frozen", 1e-2, XGB_GRID, method="raclora"),
        _booster("relora", "ReLoRA, 4 rounds r8", 3e-3, method="relora"),
        Arm("full", "full fine-tuning", 1e-4, FULL_GRID),
        # Full fine-tuning of exactly what the adapters can touch: the gap rank explains, without the embeddings'.
        Arm("full-blocks", "full fine-tuning of the blocks' linear weights", 1e-4, FULL_GRID, blocks_only=True),
        _galore("galore", "GaLore (rank 128, update gap 200)"),
        _galore("galore-layerwise", "GaLore, layer-wise updates", optim="galore_adamw_layerwise"),
        _apollo("apollo", "APOLLO (rank 256, channel-wise)"),
        _apollo("apollo-mini", "APOLLO-Mini (rank 1, tensor-wise)", **_MINI),
        # The capacity cell's peers (a Llama of width 128): rank 8, and width / 4 as GaLore's and APOLLO's papers
        # set it; '-blocks': only the blocks' linear weights train, exactly what the adapters can touch.
        _galore("galore-r8", "GaLore r8 (update gap 200)", rank=8),
        _galore("galore-r32", "GaLore r32 (width / 4 of the capacity cell)", rank=32),
        _galore("galore-r8-blocks", "GaLore r8, blocks' linear weights only", blocks_only=True, rank=8),
        _galore("galore-r32-blocks", "GaLore r32, blocks' linear weights only", blocks_only=True, rank=32),
        _apollo("apollo-r32", "APOLLO r32 (width / 4 of the capacity cell)", rank=32),
        _apollo("apollo-r32-blocks", "APOLLO r32, blocks' linear weights only", blocks_only=True, rank=32),
        _apollo("apollo-mini-blocks", "APOLLO-Mini, blocks' linear weights only", blocks_only=True, **_MINI),
        # Benchmark rows (their names are stable: other tooling reads them in quality.json).
        _booster("lora-qv", "LoRA r8 q/v", 3e-3, method="lora"),
        _booster("lora-all", "LoRA r8 all-linear", 3e-3, method="lora", target_modules="all-linear"),
        _booster("lora-r24", "LoRA r24 q/v (COLA's total rank)", 3e-3, method="lora", rank=24),
        # XGBLoRA's rank, scaling and targets on every block at once, never merged: boosting's matched baseline.
        _booster(
            "lora-r1-all",
            "LoRA r1 all-linear (XGBLoRA's rank and targets)",
            1e-2,
            XGB_GRID,
            method="lora",
            rank=1,
            target_modules="all-linear",
        ),  # fmt: skip
        # On the capacity cell, 600 steps of kappa 50 are 12 rank-1 rounds on 2 of 6 blocks: rank 4 per block.
        _booster(
            "lora-r4-all",
            "LoRA r4 all-linear (the total rank XGBLoRA reaches on the capacity cell)",
            3e-3,
            method="lora",
            rank=4,
            target_modules="all-linear",
        ),  # fmt: skip
        # 15 rank-1 XGBLoRA rounds on a third of the blocks add up to about rank 5 on every linear layer.
        _booster(
            "lora-r5-all",
            "LoRA r5 all-linear (the total rank XGBLoRA reaches in 15 rounds)",
            3e-3,
            method="lora",
            rank=5,
            target_modules="all-linear",
        ),  # fmt: skip
        # Gradient rounds: each booster starts on the loss gradient's top singular direction, and the blocks of
        # a round are drawn by their gradient's gap (BoostConfig.round_init / layer_selection).
        _xgblora_variant(
            "xgblora-grad",
            "XGBLoRA, gradient start and gradient blocks",
            round_init="gradient",
            layer_selection="gradient",
        ),
        _xgblora_variant("xgblora-gradinit", "XGBLoRA, gradient start only", round_init="gradient"),
        _xgblora_variant("xgblora-gradsel", "XGBLoRA, gradient blocks only", layer_selection="gradient"),
        _booster("cola-grad", "COLA, links start on the gradient", 3e-3, method="cola", round_init="gradient"),
        # LoRA-One's start (one rank-1 descent step), and the blocks with the largest gaps (Frank-Wolfe's choice).
        _xgblora_variant(
            "xgblora-gradstep", "XGBLoRA, one-descent-step start only (LoRA-One)", round_init="gradient-step"
        ),
        _xgblora_variant("xgblora-topk", "XGBLoRA, top-k gradient blocks only", layer_selection="gradient-topk"),
        _xgblora_variant(
            "xgblora-gradstep-topk",
            "XGBLoRA, one-descent-step start and top-k gradient blocks",
            round_init="gradient-step",
            layer_selection="gradient-topk",
        ),
        # Boosters that are GaLore (tests/test_galore_boost.py): in each module the shorter side's factor is frozen on
        # the gradient's top singular vectors and the other trains, every block, a round per update gap, Adam's
        # moments kept across merges, scaling alpha / r = GaLore's 0.25. '-k50': four times as many rounds.
        _galore_boost("boost-galore-r8", "Boosters as GaLore r8 (200-step rounds)", rank=8),
        _galore_boost("boost-galore-r8-k50", "Boosters as GaLore r8, 50-step rounds", rank=8, steps_per_round=50),
        _galore_boost("boost-galore-r32", "Boosters as GaLore r32 (200-step rounds)", rank=32),
        # Issue 33's option: the (tied) input embeddings trained too, one full copy beside the adapters, as the
        # unrestricted peers train them with AdamW; the capacity cell's full fine-tuning owes most of its lead to them.
        _booster("lora-all-embed", "LoRA r8 all-linear + embeddings", 3e-3, **ALL_LINEAR, modules_to_save=EMBED),
        _galore_boost("boost-galore-r32-embed", "Boosters as GaLore r32 + embeddings", 32, modules_to_save=EMBED),
        # Within LoRA r8 all-linear's live parameters in the blocks: rank 22 with the longer side's factor frozen.
        _galore_boost(
            "boost-galore-long-r22-embed",
            "Boosters as GaLore r22, longer side frozen, + embeddings",
            22,
            frozen_factor="longer",
            modules_to_save=EMBED,
        ),
        # What GaLore cannot express: both factors of an all-linear r8 booster train from a gradient start (LoRA r8
        # all-linear's parameters and state), merged every 50 steps with a fresh optimizer state.
        _booster(
            "boost-grad-r8-k50",
            "Boosters r8 all-linear, both factors from a gradient start, 50-step rounds",
            3e-3,
            method="lora",
            target_modules="all-linear",
            rounds=None,
            steps_per_round=50,
            round_init="gradient",
        ),  # fmt: skip
    )
}
assert set(PRESETS) <= set(ARMS), "every BoostConfig preset is an arm"


def get_arm(name: Any) -> Arm:
    """The catalogue's arm of this name, or a one-sentence error listing them."""
    if not isinstance(name, str) or name not in ARMS:
        raise ValueError(f"method={name!r} is not a known method; use one of {', '.join(ARMS)}.")
    return ARMS[name]


def arm_of(what: Arm | BoostConfig) -> Arm:
    """An arm as given, or a BoostConfig as the arm of its method with exactly these values (library callers)."""
    if isinstance(what, Arm):
        return what
    base = ARMS[what.method]
    return dataclasses.replace(base, name=what.method, boost=what.to_dict())


def peer_installed(peer: str) -> bool:
    return importlib.util.find_spec(PEER_PACKAGES[peer][0]) is not None
