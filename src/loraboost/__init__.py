"""loraboost: fine-tune by boosting low-rank adapters (XGBLoRA, COLA, RAC-LoRA, ReLoRA, LoRA).
Public names only; see Booster for the training loop and BoostCallback for transformers' Trainer."""

from .booster import Booster
from .config import PRESETS, BoostConfig
from .hf import BoostCallback
from .ledger import Ledger, LedgerEntry
from .version import __version__

__all__ = ["PRESETS", "BoostCallback", "BoostConfig", "Booster", "Ledger", "LedgerEntry", "__version__"]
