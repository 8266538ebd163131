"""Slot: one target module's PEFT LoRA layer and the block it sits in; and BoosterSurface, the part of a
Booster that its state (checkpoint.py) and exports (export.py) read, so those depend on this file, not on booster.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from torch import nn

from .config import BoostConfig
from .ledger import Ledger
from .merge import LowRankSidePath
from .plan import RoundPlan
from .sketch import GradientSketcher

ADAPTER = "default"  # the one PEFT adapter name the boosters live under


@dataclass(frozen=True)
class Slot:
    """One target module's booster: the PEFT LoRA layer and where it sits.

    The factor Parameters are looked up on the layer, not cached: they stay the same objects for the
    whole run (an optimizer built once keeps holding them), but FSDP2's ``fully_shard`` swaps them
    once for sharded ones before the optimizer is built.
    """

    name: str  # as in the base model, e.g. "model.layers.0.self_attn.q_proj"
    layer: str  # the block it sits in, a key of the plan
    lora: LoraLayer

    @property
    def A(self) -> nn.Parameter:  # (r, in)
        return self.lora.lora_A[ADAPTER].weight

    @property
    def B(self) -> nn.Parameter:  # (out, r)
        return self.lora.lora_B[ADAPTER].weight

    @property
    def base_weight(self) -> nn.Parameter:
        return self.lora.get_base_layer().weight

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in) of the adapted layer, whatever its weight's storage: a 4-bit weight is a packed byte
        tensor whose shape bitsandbytes may even change (its CPU kernels repack at the first forward)."""
        return self.B.shape[0], self.A.shape[1]

    @property
    def fan_in_fan_out(self) -> bool:
        return bool(self.lora.fan_in_fan_out)


class BoosterSurface(Protocol):
    """What checkpoint.py and export.py read from a Booster: its model, config, slots, ledger and position.
    Writing a state back (replaying merges, activating blocks) is the Booster's own business."""

    model: PeftModel
    config: BoostConfig
    slots: tuple[Slot, ...]
    ledger: Ledger
    plan: RoundPlan
    global_step: int
    chosen_layers: dict[int, tuple[str, ...]]
    side_paths: dict[str, LowRankSidePath]
    residuals: dict[str, torch.Tensor]
    sketcher: GradientSketcher | None

    @property
    def live_slots(self) -> tuple[Slot, ...]: ...

    def merged_weight(self, slot: Slot) -> torch.Tensor: ...
