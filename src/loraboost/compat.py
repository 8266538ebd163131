"""The private attributes of PEFT and torch that loraboost writes, checked once at startup: a release that
renames one fails here with one sentence naming the versions tested, not later with a silently wrong run."""

from __future__ import annotations

import functools

import torch
from peft.tuners.tuners_utils import BaseTunerLayer

# The versions CI installs and the test suite passes on (pyproject's bounds allow their minor releases).
TESTED = "peft 0.21 and torch 2.13"


@functools.cache
def check_private_apis() -> None:
    """Raise a RuntimeError if PEFT's per-layer disable flag or torch's cached learning rates moved."""
    # Booster._activate sets the flag directly: enable_adapters() would also switch requires_grad off.
    switch = getattr(BaseTunerLayer, "disable_adapters", None)
    if not hasattr(BaseTunerLayer, "_disable_adapters") or not isinstance(switch, property):
        raise RuntimeError(
            _moved("PEFT's BaseTunerLayer._disable_adapters (read by its disable_adapters property)", "peft")
        )
    # optim.compose_round_schedule re-applies the rate mid-step and must refresh what get_last_lr() reports.
    parameter = torch.zeros(1, requires_grad=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([parameter], lr=1.0), lambda step: 1.0)
    scheduler._last_lr = [0.5]
    if scheduler.get_last_lr() != [0.5]:
        raise RuntimeError(_moved("torch's LRScheduler._last_lr (returned by get_last_lr())", "torch"))


def _moved(what: str, package: str) -> str:
    return (
        f"loraboost relies on {what}, which this {package} no longer has; it is tested with {TESTED}, so "
        f"install a {package} release within the bounds in loraboost's pyproject.toml."
    )
