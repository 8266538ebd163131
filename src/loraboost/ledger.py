"""The ledger: every merged booster's factors (round, module, scale, A, B in fp32), kept on the CPU, or once a
module's factors outgrow its weight, their sum (folded); from it each module's total update is rebuilt for export."""

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

    def __init__(self, layouts: dict[str, bool], fold: bool = False):
        self.layouts = dict(layouts)
        self.fold_when_larger = fold
        self.entries: list[LedgerEntry] = []
        # Folded modules: the fp32 sum of their merges so far, in the weight's layout, and the rounds it holds.
        self.folded: dict[str, torch.Tensor] = {}
        self.folded_rounds: dict[str, list[int]] = {}

    def append(self, round_index: int, module: str, scale: float, A: torch.Tensor, B: torch.Tensor) -> None:
        """Record one module's merged factors (copied to fp32 on the CPU); when folding, a module whose factors
        now take more bytes than its dense update is folded into that sum, and so is every later merge of it."""
        if module not in self.layouts:
            raise KeyError(
                f"module {module!r} is not one the ledger tracks; known modules: {sorted(self.layouts)[:5]}..."
            )
        entry = LedgerEntry(round_index, module, float(scale), _full_cpu(A), _full_cpu(B))
        self.entries.append(entry)
        if not self.fold_when_larger:
            return
        # Once folded, every later merge joins the sum at once: the module never holds more than its weight's bytes,
        # and no entry of a folded module is ever left standing.
        factor_bytes = sum(e.A.nbytes + e.B.nbytes for e in self.entries if e.module == module)
        if module in self.folded or factor_bytes > 4 * entry.B.shape[0] * entry.A.shape[1]:
            self.fold(module)

    def fold(self, module: str) -> None:
        """Replace ``module``'s entries by their sum (added in merge order, as ``delta`` adds them): the ledger
        then holds at most the module's fp32 weight, and its merged rounds keep only that sum."""
        total = self.delta(module)
        rounds = self.folded_rounds.get(module, []) + [e.round for e in self.entries if e.module == module]
        self.entries = [e for e in self.entries if e.module != module]
        self.folded[module], self.folded_rounds[module] = total, rounds

    def __len__(self) -> int:
        return len(self.rounds())

    def __iter__(self) -> Iterator[LedgerEntry]:
        """The entries not folded, in merge order."""
        return iter(self.entries)

    @property
    def nbytes(self) -> int:
        """Bytes the ledger holds: 4 r (out + in) per merged round of rank r on an out x in module, until the
        module is folded; then 4 out in for its sum (its fp32 weight's size)."""
        return sum(e.A.nbytes + e.B.nbytes for e in self.entries) + sum(t.nbytes for t in self.folded.values())

    def rounds(self) -> list[int]:
        """Indices of the merged rounds, in order."""
        return sorted({e.round for e in self.entries} | {r for rounds in self.folded_rounds.values() for r in rounds})

    def modules(self, round_index: int | None = None) -> list[str]:
        """Modules that received a merge (in round ``round_index`` only, when given), sorted."""
        folded = {m for m, rounds in self.folded_rounds.items() if round_index is None or round_index in rounds}
        return sorted(folded | {e.module for e in self.entries if round_index is None or e.round == round_index})

    def delta(self, module: str) -> torch.Tensor:
        """Total merged update of ``module`` in fp32, in its base weight's layout; KeyError if never merged."""
        if module not in self.layouts:
            raise KeyError(f"module {module!r} is not one the ledger tracks.")
        total = self.folded.get(module)
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
        parts = [(e.A, e.B * e.scale) for e in self.entries if e.module == module]
        if module in self.folded:
            # The sum as an exact LoRA of rank min(out, in): the identity on its shorter side, the sum on the other.
            total = self.folded[module].T if self.layouts[module] else self.folded[module]  # (out, in)
            out_features, in_features = total.shape
            eye = torch.eye(min(out_features, in_features))
            parts.insert(0, (eye, total) if out_features >= in_features else (total, eye))
        if not parts:
            return None
        return torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts], dim=1)

    def to_state(self) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
        """The entries as JSON-able records plus a flat dict of their tensors (for safetensors)."""
        records = [{"round": e.round, "module": e.module, "scale": e.scale} for e in self.entries]
        tensors = {}
        for i, e in enumerate(self.entries):
            tensors[f"ledger.{i}.A"], tensors[f"ledger.{i}.B"] = e.A, e.B
        for module, total in self.folded.items():
            records.append({"module": module, "folded_rounds": self.folded_rounds[module]})
            tensors[f"ledger.folded.{module}"] = total
        return records, tensors

    def load_state(self, records: list[dict[str, Any]], tensors: dict[str, torch.Tensor]) -> None:
        """Replace the entries with those of ``to_state()``; validates everything before changing anything."""
        entries, folded, folded_rounds = [], {}, {}
        for i, r in enumerate(records):
            if r["module"] not in self.layouts:
                raise ValueError(f"ledger entry {i} is for module {r['module']!r}, which this booster does not target.")
            if "folded_rounds" in r:
                folded[r["module"]] = tensors.get(f"ledger.folded.{r['module']}")
                if folded[r["module"]] is None:
                    raise ValueError(f"the folded ledger of {r['module']!r} is not in the file; it is truncated.")
                folded_rounds[r["module"]] = [int(x) for x in r["folded_rounds"]]
                continue
            A, B = tensors.get(f"ledger.{i}.A"), tensors.get(f"ledger.{i}.B")
            if A is None or B is None:
                raise ValueError(
                    f"ledger entry {i} ({r['module']!r}) has no factors in the file; it is truncated or corrupt."
                )
            entries.append(LedgerEntry(int(r["round"]), r["module"], float(r["scale"]), A.float(), B.float()))
        self.entries, self.folded, self.folded_rounds = entries, folded, folded_rounds


def _full_cpu(t: torch.Tensor) -> torch.Tensor:
    """An fp32 CPU copy of the whole tensor (gathered first when it is a sharded DTensor)."""
    return full_tensor(t.detach()).float().cpu().clone()
