"""The ledger: every merged booster's factors (round, module, scale, A, B in fp32), kept on the CPU.
From it the total merged update of any module can be rebuilt, stacked or compressed for export."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .merge import full_tensor, lora_delta


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
            raise KeyError(
                f"module {module!r} is not one the ledger tracks; known modules: {sorted(self.layouts)[:5]}..."
            )
        self.entries.append(LedgerEntry(round_index, module, float(scale), _full_cpu(A), _full_cpu(B)))

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

    def stacked(self, module: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """All merged factors of ``module`` as one LoRA: (A of R x in, B of out x R) with the scales
        folded into B, so that ``B @ A`` is its total update in (out, in) layout; None if never merged."""
        entries = [e for e in self.entries if e.module == module]
        if not entries:
            return None
        return torch.cat([e.A for e in entries]), torch.cat([e.B * e.scale for e in entries], dim=1)

    def to_state(self) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
        """The entries as JSON-able records plus a flat dict of their tensors (for safetensors)."""
        records = [{"round": e.round, "module": e.module, "scale": e.scale} for e in self.entries]
        tensors = {}
        for i, e in enumerate(self.entries):
            tensors[f"ledger.{i}.A"], tensors[f"ledger.{i}.B"] = e.A, e.B
        return records, tensors

    def load_state(self, records: list[dict[str, Any]], tensors: dict[str, torch.Tensor]) -> None:
        """Replace the entries with those of ``to_state()``; validates everything before changing anything."""
        entries = []
        for i, r in enumerate(records):
            if r["module"] not in self.layouts:
                raise ValueError(f"ledger entry {i} is for module {r['module']!r}, which this booster does not target.")
            A, B = tensors.get(f"ledger.{i}.A"), tensors.get(f"ledger.{i}.B")
            if A is None or B is None:
                raise ValueError(
                    f"ledger entry {i} ({r['module']!r}) has no factors in the file; it is truncated or corrupt."
                )
            entries.append(LedgerEntry(int(r["round"]), r["module"], float(r["scale"]), A.float(), B.float()))
        self.entries = entries


def _full_cpu(t: torch.Tensor) -> torch.Tensor:
    """An fp32 CPU copy of the whole tensor (gathered first when it is a sharded DTensor)."""
    return full_tensor(t.detach()).float().cpu().clone()
