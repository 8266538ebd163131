"""The ledger: every merged booster's factors (round, module, scale, A, B in fp32), kept on the CPU.
From it the total merged update of any module can be rebuilt, stacked or compressed for export."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .merge import lora_delta


@dataclass(frozen=True)
class LedgerEntry:
    """One module's part of one merged round: the update ``scale * B @ A`` (A is r x in, B out x r)."""

    round: int
    module: str
    scale: float
    A: torch.Tensor
    B: torch.Tensor


class Ledger:
    """Merged-round history of a Booster.

    ``len(ledger)`` is the number of merged rounds; iterating yields every LedgerEntry in merge order.

    Args:
        layouts: for every module a booster may sit on (named as in the base model), whether its weight
            is stored transposed (``fan_in_fan_out``, GPT-2's Conv1D).
    """

    def __init__(self, layouts: dict[str, bool]):
        self.layouts = dict(layouts)
        self.entries: list[LedgerEntry] = []

    def append(self, round_index: int, module: str, scale: float, A: torch.Tensor, B: torch.Tensor) -> None:
        """Record one module's merged factors (copied to fp32 on the CPU)."""
        if module not in self.layouts:
            raise KeyError(f"module {module!r} is not one the ledger tracks; known modules: {sorted(self.layouts)[:5]}...")
        self.entries.append(
            LedgerEntry(round_index, module, float(scale), A.detach().float().cpu().clone(), B.detach().float().cpu().clone())
        )

    def __len__(self) -> int:
        return len(self.rounds())

    def __iter__(self) -> Iterator[LedgerEntry]:
        return iter(self.entries)

    def rounds(self) -> list[int]:
        """Indices of the merged rounds, in order."""
        return sorted({e.round for e in self.entries})

    def modules(self, round_index: int | None = None) -> list[str]:
        """Modules that received a merge (in round ``round_index`` only, when given), sorted."""
        return sorted({e.module for e in self.entries if round_index is None or e.round == round_index})

    def delta(self, module: str) -> torch.Tensor:
        """Total merged update of ``module`` in fp32, in its base weight's layout; KeyError if never merged."""
        if module not in self.layouts:
            raise KeyError(f"module {module!r} is not one the ledger tracks.")
        total = None
        for e in self.entries:
            if e.module == module:
                d = lora_delta(e.A, e.B, e.scale, self.layouts[module])
                total = d if total is None else total + d
        if total is None:
            raise KeyError(f"module {module!r} has no merged round yet.")
        return total
