"""The one-sentence ValueErrors BoostConfig raises for a bad field, or for fields that do not go together: each names
the field, its value and what would be right."""

from __future__ import annotations

import math
from typing import Any


def check_int(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} is not valid; use an integer >= {minimum}.")


def check_number(value: Any, name: str, ok, allowed: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name}={value!r} is not valid; use {allowed}.")


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; use one of {', '.join(map(repr, choices))}.")


# What the persistent part needs, with why: it must run in every forward (an idle block's adapter is skipped, and an
# unmerged part would vanish from the model), and its factors are trained and restarted only in the chain's ranks.
_NEEDS = dict(layers_per_round=None, frozen_factor="none", round_init="random", optimizer_reset="keep")


def check_persistent_rank(config: Any) -> None:
    """Refuse a ``persistent_rank`` the rest of ``config`` cannot honour, in one sentence naming the field."""
    check_int(config.persistent_rank, "persistent_rank", minimum=0)
    if config.persistent_rank == 0:
        return
    if config.persistent_rank >= config.rank:
        raise ValueError(
            f"persistent_rank={config.persistent_rank} leaves no rank to merge in a booster of rank={config.rank}; "
            f"use at most {config.rank - 1}, or method='lora' with rounds=1 for a LoRA that is never merged."
        )
    for name, value in _NEEDS.items():
        if getattr(config, name) != value:
            # optimizer_reset: Adam's moments of both parts share one tensor per factor, and a reset or a prune of it
            # would also throw away the persistent part's.
            raise ValueError(
                f"persistent_rank={config.persistent_rank} keeps part of every booster training across rounds, "
                f"which {name}={getattr(config, name)!r} does not allow; use {name}={value!r}."
            )
