"""What the command line prints besides its own lines: third-party deprecation warnings, library log chatter
and data-loading bars are hidden unless --verbose, so a user sees loraboost's progress bars and results."""

from __future__ import annotations

import logging
import os
import warnings

# Libraries whose warnings and info logs speak to their developers, not to someone training a model (kernels: a
# line about skipping a hub trust check offline, on every command that loads bitsandbytes).
NOISY_LOGGERS = ("bitsandbytes", "kernels", "transformers", "datasets", "peft", "accelerate", "torch.distributed")


def quiet_third_parties() -> None:
    """Hide FutureWarning / DeprecationWarning / UserWarning, the libraries' logs (their errors reach the user as
    the exception loraboost reports in one sentence; logging them too would say it twice), and the data sets'
    "Generating train split" bars; call before they are imported (some warn at import)."""
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bars follow it
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
