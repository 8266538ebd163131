"""The round plan: a pure, seeded function of the step count that says when rounds end and which
layers each round uses. It holds no mutable state, so every data-parallel rank and every resume agree."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


def round_generator(seed: int, round_index: int, purpose: str) -> torch.Generator:
    """A CPU generator determined by (seed, round, purpose) alone, independent of the global RNG."""
    digest = hashlib.blake2b(f"loraboost:{seed}:{round_index}:{purpose}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


@dataclass(frozen=True)
class RoundPlan:
    """When rounds end and which layers each uses.

    Args:
        layer_keys: every block that can carry a booster, in model order.
        layers_per_round: how many blocks a round uses (all of them when equal to ``len(layer_keys)``).
        steps_per_round: kappa; rounds end every kappa steps (capped by ``rounds``).
        rounds: number of rounds; None for no limit.
        total_steps: the run's length, used to spread ``rounds`` evenly when kappa is None.
        seed: the plan's seed.
    """

    layer_keys: tuple[str, ...]
    layers_per_round: int
    steps_per_round: int | None
    rounds: int | None
    total_steps: int | None
    seed: int

    def __post_init__(self) -> None:
        if not 1 <= self.layers_per_round <= len(self.layer_keys):
            raise ValueError(
                f"layers_per_round={self.layers_per_round} is out of range for a model with "
                f"{len(self.layer_keys)} layers; use a count from 1 to {len(self.layer_keys)}."
            )
        if self.steps_per_round is None and self.rounds is None:
            raise ValueError("a plan needs steps_per_round or rounds.")
        if self.steps_per_round is None and self.total_steps is not None and self.rounds > self.total_steps:
            raise ValueError(
                f"rounds={self.rounds} is more than the run's {self.total_steps} steps; use at most "
                f"{self.total_steps} rounds, or set steps_per_round."
            )

    def round_end(self, round_index: int) -> int | None:
        """Step count at which ``round_index`` ends and is merged; None for the last round."""
        if self.rounds is not None and round_index >= self.rounds - 1:
            return None
        if self.steps_per_round is not None:
            return (round_index + 1) * self.steps_per_round
        if self.total_steps is None:
            raise ValueError(
                f"rounds={self.rounds} without steps_per_round needs the run's total step count to place the "
                "round ends; pass total_steps to Booster (BoostCallback does it) or set steps_per_round."
            )
        # COLA's knots, evenly spread: tau_t = round(t * K / T).
        return round((round_index + 1) * self.total_steps / self.rounds)

    def round_start(self, round_index: int) -> int:
        """Step count at which ``round_index`` starts."""
        return 0 if round_index == 0 else self.round_end(round_index - 1)

    def round_at(self, step: int) -> int:
        """The round that is live after ``step`` optimizer steps have been taken."""
        if step == 0:
            return 0  # known before the run's length is
        if self.steps_per_round is not None:
            t = step // self.steps_per_round
            return t if self.rounds is None else min(t, self.rounds - 1)
        t = 0
        while (end := self.round_end(t)) is not None and step >= end:
            t += 1
        return t

    def round_length(self, round_index: int) -> int | None:
        """Steps in ``round_index``; None when it is the last round of a run of unknown length."""
        end = self.round_end(round_index)
        if end is None:
            end = self.total_steps
        return None if end is None else end - self.round_start(round_index)

    def layers(self, round_index: int) -> tuple[str, ...]:
        """The blocks ``round_index`` places its booster on, in model order."""
        n = len(self.layer_keys)
        if self.layers_per_round == n:
            return self.layer_keys
        order = torch.randperm(n, generator=round_generator(self.seed, round_index, "layers"))
        chosen = sorted(order[: self.layers_per_round].tolist())
        return tuple(self.layer_keys[i] for i in chosen)
