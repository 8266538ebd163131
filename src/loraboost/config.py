"""BoostConfig, the one source of truth for a boosting run, and the method presets.
Every field is validated on construction; a bad value raises ValueError naming it and what is allowed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .field_checks import check_choice, check_int, check_number, check_persistent_rank


class _FromPreset:
    """Marks a field the chosen method's preset fills in (so an explicit None still means None)."""

    def __repr__(self) -> str:
        return "<from preset>"


FROM_PRESET: Any = _FromPreset()

# What each method means, as defaults of the one engine (see the README's method table). Every value can be
# overridden; the unknowns of the papers (round length, scaling at rank 1, ...) are only defaults.
_BASE = dict(
    rank=8,
    rounds=1,
    steps_per_round=None,
    layers_per_round=None,
    target_modules=None,
    optimizer_reset="reset",
    prune_ratio=0.99,
    lr_schedule="global",
    round_warmup_steps=0,
    frozen_factor="none",
)
PRESETS: dict[str, dict[str, Any]] = {
    # Plain LoRA: a single round that is never merged.
    "lora": dict(_BASE),
    # COLA (Xia et al. 2024): a chain of 3 links of rank 8, merged at evenly spaced knots,
    # with the optimizer state reset at each knot.
    "cola": dict(_BASE, rounds=3),
    # XGBLoRA (Zhang et al. 2024): rank-1 boosters on all linear layers of a random third
    # of the blocks, kappa steps each, merged with step size 1.
    "xgblora": dict(
        _BASE, rank=1, rounds=None, steps_per_round=50, layers_per_round=1 / 3, target_modules="all-linear"
    ),
    # RAC-LoRA (Malinovsky et al. 2024): A is a fresh random matrix kept frozen, B trains from 0.
    "raclora": dict(_BASE, rounds=3, frozen_factor="A"),
    # ReLoRA (Lialin et al. 2024): merge and re-init with 99% magnitude pruning of the optimizer
    # moments and a jagged schedule that re-warms the learning rate after every merge.
    "relora": dict(_BASE, rounds=4, optimizer_reset="prune", lr_schedule="per_round", round_warmup_steps=0.1),
}

OPTIMIZER_RESETS = ("reset", "keep", "prune")
LR_SCHEDULES = ("global", "per_round")
FROZEN_FACTORS = ("none", "A", "B", "shorter", "longer")
MERGE_RESIDUALS = ("auto", "residual", "always", "never", "stochastic")
MERGE_RESIDUAL_DTYPES = ("float32", "bfloat16")
ROUND_INITS = ("random", "gradient", "gradient-step")
LAYER_SELECTIONS = ("random", "gradient", "gradient-topk")
SKETCH_INPUT_DTYPES = ("float32", "bfloat16", "float8_e4m3fn")


@dataclass
class BoostConfig:
    """How to boost low-rank adapters: which method, which modules, how many rounds.

    Fields left unset take the preset of ``method`` (see ``PRESETS``); any field may be set
    explicitly to override it. Fine-tuning runs in rounds: each round trains a fresh rank-``rank``
    LoRA booster on ``target_modules`` of ``layers_per_round`` randomly chosen layers, merges it
    into the base weights with ``merge_scale`` and starts the next one.

    Args:
        method: ``lora``, ``cola``, ``xgblora``, ``raclora`` or ``relora``.
        rank: LoRA rank ``r`` of each booster.
        alpha: LoRA ``lora_alpha``; the booster's scaling is ``alpha / rank``. Default ``2 * rank``.
        dropout: LoRA dropout on the booster's input.
        target_modules: ``"all-linear"``, a list of module-name suffixes, a regular expression
            (PEFT's semantics), or None for PEFT's default of the architecture (e.g. q/v projections).
        modules_to_save: extra modules trained in every round and never merged (e.g. a classifier, or a Llama's
            ``embed_tokens``: a head tied to them trains as the same copy, PEFT's ``ensure_weight_tying``).
        layers_pattern: name of the ModuleList holding the transformer blocks (``"layers"`` for
            Llama, ``"h"`` for GPT-2); found automatically when None.
        rounds: number of rounds T. With only ``rounds``, the round ends are spread evenly over the
            run's total steps (COLA's knots). With ``steps_per_round`` too, at most T rounds of kappa.
        steps_per_round: kappa, optimizer steps per round; None to derive it from ``rounds``.
        layers_per_round: L_s, the blocks a round's booster is placed on: a count, a fraction of all
            blocks in (0, 1], or None for every block.
        merge_scale: alpha_t, the step size of a merge: W <- W + alpha_t * (alpha / r) * B A.
        merge_residual: how a merge enters a weight stored in bf16/fp16, whose rounding would drop small merges:
            ``stochastic`` (no memory: each merge rounds up or down at random so that it is kept in
            expectation, drawn from (seed, round, module), so ranks and resumed runs round alike), ``residual``
            (a residual per merged bf16/fp16 weight keeps every merge exactly, at 4 bytes per element in fp32),
            ``always`` (a residual for fp32 weights too: exact reconstruction from the ledger) or ``never``
            (a plain in-place add). ``auto`` is ``stochastic`` (it was ``residual`` in checkpoint format 2,
            and states saved then replay that way). fp32 weights add in place unless ``always``.
        merge_residual_dtype: what a residual is stored in: ``float32`` (keeps every merge, to fp32's
            precision) or ``bfloat16`` (half the memory, 2 bytes per element, and loses its own rounding;
            BENCHMARKS.md measures how much of the update each keeps).
        norm_penalty: lambda of XGBLoRA's penalty lambda * (||A||^2 + ||B||^2) on the live booster.
        optimizer_reset: at a round change, ``reset`` drops the booster's optimizer state, ``keep``
            keeps it, ``prune`` zeroes the ``prune_ratio`` smallest-magnitude entries (ReLoRA).
        prune_ratio: share of optimizer-state entries zeroed by ``prune``, in [0, 1).
        lr_schedule: ``global`` (one schedule over the run) or ``per_round`` (jagged: every round
            re-warms from zero over ``round_warmup_steps`` and decays by a cosine to zero).
        round_warmup_steps: per-round warm-up, in steps (int) or as a fraction of a round in [0, 1).
        frozen_factor: ``none``; ``A`` keeps a fresh random A frozen and trains B from zero (RAC-LoRA); ``B`` keeps
            a random B frozen and trains A; ``shorter`` freezes, in each module, the factor on the weight's shorter
            side (A when out >= in, else B), as GaLore projects; ``longer`` the other: r x min(out, in) train.
            With ``round_init="gradient"`` the frozen factor holds the gradient's top singular vectors
            (orthonormal: GaLore's projection) instead of a random draw, and the other factor trains from zero.
        round_init: how a new booster starts: ``random`` (the papers': PEFT's random A, B = 0) or
            ``gradient`` (A along the top-``rank`` right singular vectors of the loss gradient with respect
            to the merged weight, B = 0: the output is unchanged and B's first gradient is the steepest
            rank-r direction). The gradient is sketched from the last ``sketch_steps`` steps of the previous
            round; round 0 sketches its first step and restarts from it. ``gradient-step`` sets both factors
            (LoRA-One's start): B A = -(1/gamma) U_r diag(S_r / S_1) V_r^T from the gradient's SVD, so each round
            begins with one rank-r descent step whose largest singular value is ``lora_scaling / gamma``, and
            both factors train from there. See loraboost.sketch.
        layer_selection: which blocks the next round uses: ``random`` (the plan's seeded draw) or
            ``gradient`` (drawn without replacement in proportion to each block's summed top singular
            value of the gradient, its Frank-Wolfe gap; round 0 is the plan's draw), or ``gradient-topk``
            (the blocks with the largest gaps, Frank-Wolfe's own choice, except that a block left out for
            twice the rounds a random draw needs to visit every block is taken first, so none is starved).
        gradient_step_gamma: gamma of ``round_init="gradient-step"``: the larger it is, the smaller the
            first step (LoRA-One's stable gamma; its default here, 64, is that paper's, not tuned).
        sketch_steps: optimizer steps at the end of each round whose gradient is sketched (``gradient`` only).
        sketch_oversample: p, the sketch's extra columns: it keeps k = rank + p columns of the gradient's range and
            2k + 1 rows of its co-range: (3k + 1)(out + in) numbers per module with their test matrices. The larger
            p, the closer its top directions are to the exact SVD's (exact once k >= min(out, in);
            bench/sketch_accuracy.py measures how close: at rank 1 and p = 4 they hold 41-74% of the top direction's
            energy on the capacity cell).
        sketch_input_dtype: what the sketch holds a captured layer input in until its backward: ``float32`` (the
            input itself, exact), ``bfloat16`` (a copy at half its fp32 bytes) or ``float8_e4m3fn`` (a quarter, with
            a scale per token). A live booster's input, which autograd keeps for its backward anyway, is read as it is.
        fold_ledger: once a module's merged factors take more bytes than its fp32 weight (after T rounds of rank r,
            when T r > out in / (out + in)), replace them in the ledger by their sum, so the ledger never holds more
            than the adapted weights' fp32 bytes. Its cost: a checkpoint then also holds each folded module's merged
            weight (replaying the sum would round differently from the merges it replaced, and resume is bit-exact),
            and the exported adapter gives a folded module rank min(out, in) (exact, as large as the weight).
        persistent_rank: k, how many of each booster's r ranks are never merged: the first k keep training across
            rounds as one LoRA of rank k, while the other r - k are merged and restart every round (a persistent LoRA
            beside a chain). 0 merges the whole booster. Needs every block in every round, ``frozen_factor="none"``,
            ``round_init="random"`` and ``optimizer_reset="keep"`` (both parts share Adam's tensors).
        seed: seeds the plan (which layers a round uses) and every booster initialisation, so that
            all data-parallel ranks draw the same.
    """

    method: str = "xgblora"
    rank: int = FROM_PRESET
    alpha: float | None = None
    dropout: float = 0.0
    target_modules: str | list[str] | None = FROM_PRESET
    modules_to_save: list[str] | None = None
    layers_pattern: str | None = None
    rounds: int | None = FROM_PRESET
    steps_per_round: int | None = FROM_PRESET
    layers_per_round: int | float | None = FROM_PRESET
    merge_scale: float = 1.0
    merge_residual: str = "auto"
    merge_residual_dtype: str = "float32"
    norm_penalty: float = 0.0
    optimizer_reset: str = FROM_PRESET
    prune_ratio: float = FROM_PRESET
    lr_schedule: str = FROM_PRESET
    round_warmup_steps: int | float = FROM_PRESET
    frozen_factor: str = FROM_PRESET
    round_init: str = "random"
    layer_selection: str = "random"
    gradient_step_gamma: float = 64.0
    sketch_steps: int = 1
    sketch_oversample: int = 4
    sketch_input_dtype: str = "float32"
    fold_ledger: bool = False
    persistent_rank: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in PRESETS:
            raise ValueError(f"method={self.method!r} is not a known method; use one of {', '.join(PRESETS)}.")
        for name, value in PRESETS[self.method].items():
            if getattr(self, name) is FROM_PRESET:
                setattr(self, name, value)
        if self.alpha is None and isinstance(self.rank, int):
            self.alpha = 2.0 * self.rank
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        check_int(self.rank, "rank", minimum=1)
        check_number(self.alpha, "alpha", lambda v: v > 0, "a positive number")
        check_number(self.dropout, "dropout", lambda v: 0 <= v < 1, "a number in [0, 1)")
        t = self.target_modules
        if not (
            t is None
            or isinstance(t, str)
            and t
            or isinstance(t, (list, tuple))
            and t
            and all(isinstance(x, str) and x for x in t)
        ):
            raise ValueError(
                f"target_modules={t!r} is not valid; use 'all-linear', a non-empty list of module "
                "names, a regular expression, or None for the architecture's default."
            )
        if isinstance(t, tuple):
            self.target_modules = list(t)
        m = self.modules_to_save
        if m is not None and not (isinstance(m, (list, tuple)) and all(isinstance(x, str) for x in m)):
            raise ValueError(f"modules_to_save={m!r} is not valid; use a list of module names or None.")
        if self.layers_pattern is not None and not (isinstance(self.layers_pattern, str) and self.layers_pattern):
            raise ValueError(
                f"layers_pattern={self.layers_pattern!r} is not valid; use the name of the ModuleList "
                "that holds the blocks (e.g. 'layers' or 'h') or None."
            )
        for name in ("rounds", "steps_per_round"):  # None: derived from the other
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name, minimum=1)
        if self.rounds is None and self.steps_per_round is None:
            raise ValueError(
                "rounds=None and steps_per_round=None leave the round length undefined; set rounds "
                "(spread over the run) or steps_per_round (kappa)."
            )
        lpr = self.layers_per_round
        if lpr is not None:
            if isinstance(lpr, bool) or not isinstance(lpr, (int, float)):
                raise ValueError(
                    f"layers_per_round={lpr!r} is not valid; use a count >= 1, a fraction in (0, 1], or None."
                )
            if isinstance(lpr, int) and lpr < 1 or isinstance(lpr, float) and not 0 < lpr <= 1:
                raise ValueError(
                    f"layers_per_round={lpr!r} is out of range; use a count >= 1, a fraction in (0, 1], or None."
                )
        check_number(self.merge_scale, "merge_scale", lambda v: v > 0, "a positive number")
        check_choice(self.merge_residual, "merge_residual", MERGE_RESIDUALS)
        check_choice(self.merge_residual_dtype, "merge_residual_dtype", MERGE_RESIDUAL_DTYPES)
        check_number(self.norm_penalty, "norm_penalty", lambda v: v >= 0, "a number >= 0")
        check_choice(self.optimizer_reset, "optimizer_reset", OPTIMIZER_RESETS)
        check_number(self.prune_ratio, "prune_ratio", lambda v: 0 <= v < 1, "a number in [0, 1)")
        check_choice(self.lr_schedule, "lr_schedule", LR_SCHEDULES)
        w = self.round_warmup_steps
        if (
            isinstance(w, bool)
            or not isinstance(w, (int, float))
            or (isinstance(w, int) and w < 0 or isinstance(w, float) and not 0 <= w < 1)
        ):
            raise ValueError(
                f"round_warmup_steps={w!r} is not valid; use a step count >= 0 or a fraction of a round in [0, 1)."
            )
        check_choice(self.frozen_factor, "frozen_factor", FROZEN_FACTORS)
        check_choice(self.round_init, "round_init", ROUND_INITS)
        check_choice(self.layer_selection, "layer_selection", LAYER_SELECTIONS)
        check_number(self.gradient_step_gamma, "gradient_step_gamma", lambda v: v > 0, "a positive number")
        check_int(self.sketch_steps, "sketch_steps", minimum=1)
        check_int(self.sketch_oversample, "sketch_oversample", minimum=0)
        check_choice(self.sketch_input_dtype, "sketch_input_dtype", SKETCH_INPUT_DTYPES)
        if self.round_init == "gradient-step" and self.frozen_factor != "none":
            raise ValueError(
                f"round_init='gradient-step' sets both factors for one descent step, but "
                f"frozen_factor={self.frozen_factor!r} keeps one frozen; use round_init='gradient' with a frozen "
                "factor (it then holds the gradient's singular vectors)."
            )
        if not isinstance(self.fold_ledger, bool):
            raise ValueError(f"fold_ledger={self.fold_ledger!r} is not valid; use True or False.")
        check_persistent_rank(self)
        check_int(self.seed, "seed", minimum=0)

    # ------------------------------------------------------------------ derived values
    @property
    def lora_scaling(self) -> float:
        """The booster's LoRA scaling s = alpha / r (PEFT's convention); a merge multiplies it by merge_scale."""
        return self.alpha / self.rank

    @property
    def gradient_start(self) -> bool:
        """Whether a new booster starts from the sketched gradient (any ``round_init`` but ``random``)."""
        return self.round_init != "random"

    @property
    def gradient_selection(self) -> bool:
        """Whether the gradient picks each round's blocks (any ``layer_selection`` but ``random``)."""
        return self.layer_selection != "random"

    def to_dict(self) -> dict[str, Any]:
        """All resolved fields, JSON-serialisable."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BoostConfig:
        """Rebuild a config from ``to_dict()`` output; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown BoostConfig field(s) {unknown}; known fields are {sorted(names)}.")
        return cls(**data)
