"""loraboost: fine-tune by boosting low-rank adapters (XGBLoRA, COLA, RAC-LoRA, ReLoRA, LoRA).
Public names only; see Booster for the training loop and BoostCallback for transformers' Trainer."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .config import PRESETS, BoostConfig
from .version import __version__

if TYPE_CHECKING:
    from .booster import Booster
    from .hf import BoostCallback
    from .ledger import Ledger, LedgerEntry

# Loaded on first use: they import torch, transformers and PEFT, which the command line sets up first
# (loraboost.terminal) so that their import-time warnings can be hidden.
_LAZY = {"Booster": "booster", "BoostCallback": "hf", "Ledger": "ledger", "LedgerEntry": "ledger"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PRESETS", "BoostCallback", "BoostConfig", "Booster", "Ledger", "LedgerEntry", "__version__"]
