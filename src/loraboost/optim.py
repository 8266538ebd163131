"""Optimizer-state reset at a round change (drop, keep, or ReLoRA's magnitude pruning) and the
per-round learning-rate schedules, as plain LambdaLR factors of the step count."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from .merge import local_tensor
from .plan import RoundPlan


def reset_optimizer_state(
    optimizer: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter], mode: str, prune_ratio: float = 0.0
) -> None:
    """Reset the optimizer state of exactly ``params``, in place.

    ``reset`` drops their state, so the next step starts it fresh (Adam: zero moments, step 0);
    ``prune`` zeroes the ``prune_ratio`` share of entries with the smallest first moment in every
    state tensor shaped like the parameter (ReLoRA's magnitude pruning) and keeps step counters; ``keep`` does
    nothing. Works through wrappers such as accelerate's AcceleratedOptimizer, whose ``state`` is the wrapped
    optimizer's.
    """
    if mode == "keep":
        return
    state = optimizer.state
    for p in params:
        if mode == "reset":
            state.pop(p, None)
        elif mode == "prune":
            _prune_moments_(state.get(p, {}), p.shape, prune_ratio)
        else:
            raise ValueError(f"optimizer_reset={mode!r} is not valid; use one of 'reset', 'keep', 'prune'.")


@torch.no_grad()
def _prune_moments_(param_state: dict, shape: torch.Size, ratio: float) -> None:
    """Zero the same ``ratio`` share of entries in every moment, those with the smallest first moment.

    One shared mask, not one per moment: pruning Adam's moments independently (as ReLoRA's public
    code does) keeps some first moments over zeroed second moments, and those entries then step about
    1/sqrt(1 - beta2) ~ 30 times too far; in our tests that made the loss rise after every merge
    unless the learning rate re-warmed over ~100 steps.
    """
    # Sharded (FSDP2) moments are pruned shard by shard: each rank ranks its own entries.
    moments = [local_tensor(v) for v in param_state.values() if torch.is_tensor(v) and v.shape == shape]
    k = int(ratio * moments[0].numel()) if moments else 0
    if k <= 0:
        return
    first_moment = param_state.get("exp_avg")
    first = local_tensor(moments[0] if first_moment is None else first_moment).abs()
    threshold = first.flatten().float().kthvalue(k).values
    prune = first <= threshold
    for moment in moments:
        moment.masked_fill_(prune, 0)


def round_lr_factor(plan: RoundPlan, warmup: int | float, step: int) -> float:
    """The jagged per-round factor for the optimizer step taken after ``step`` steps.

    Each round re-warms linearly from near zero over ``warmup`` steps (an int, or a fraction of the
    round) and then decays by a cosine towards zero at its end, so merges happen at a low learning
    rate (ReLoRA's jagged schedule). A last round of unknown length warms up and then stays at 1.
    """
    t = plan.round_at(step)
    position = step - plan.round_start(t)
    length = plan.round_length(t)
    w = warmup if isinstance(warmup, int) else int(warmup * length) if length else 0
    if position < w:
        return (position + 1) / (w + 1)
    if length is None or length <= w:
        return 1.0
    progress = (position - w) / (length - w)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def global_lr_factor(step: int, total_steps: int, warmup_steps: int, decay: str) -> float:
    """Linear warm-up then ``linear``, ``cosine`` or ``constant`` decay over the whole run."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if decay == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if decay == "linear":
        return 1.0 - progress
    if decay == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"decay={decay!r} is not valid; use 'linear', 'cosine' or 'constant'.")


def with_round_factor(plan: RoundPlan, warmup: int | float, base: Callable[[int], float]) -> Callable[[int], float]:
    """``base`` multiplied by the jagged per-round factor."""
    return lambda step: base(step) * round_lr_factor(plan, warmup, step)


def compose_round_schedule(scheduler: LambdaLR, plan: RoundPlan, warmup: int | float) -> None:
    """Multiply every lambda of an existing LambdaLR (e.g. the Trainer's) by the per-round factor, in place."""
    if not isinstance(scheduler, LambdaLR):
        raise TypeError(
            f"lr_schedule='per_round' needs a LambdaLR scheduler to compose with, got {type(scheduler).__name__}; "
            "use one of transformers' schedules (linear, cosine, constant...) or loraboost's make_lr_scheduler."
        )
    scheduler.lr_lambdas = [with_round_factor(plan, warmup, f) for f in scheduler.lr_lambdas]
    # Re-apply the factor at the current step, so the very next optimizer step already uses it.
    for group, base_lr, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base_lr * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]


def make_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    plan: RoundPlan,
    lr_schedule: str,
    round_warmup: int | float,
    total_steps: int,
    warmup_steps: int = 0,
    decay: str = "linear",
) -> LambdaLR:
    """A LambdaLR over ``total_steps``: the global warm-up and decay, times the jagged per-round
    factor when ``lr_schedule`` is ``per_round``. Call ``scheduler.step()`` after each optimizer step."""
    if decay not in ("linear", "cosine", "constant"):
        raise ValueError(f"decay={decay!r} is not valid; use 'linear', 'cosine' or 'constant'.")

    def base(step: int) -> float:
        return global_lr_factor(step, total_steps, warmup_steps, decay)

    factor = with_round_factor(plan, round_warmup, base) if lr_schedule == "per_round" else base
    return LambdaLR(optimizer, factor)
