"""Delta arithmetic of a merge: the fp32 update a booster stands for, and its write into a base weight.
PEFT's reversible merge() is never used: it bookkeeps an inference merge and skips the LoRA path."""

from __future__ import annotations

import torch


def lora_delta(A: torch.Tensor, B: torch.Tensor, scale: float, fan_in_fan_out: bool) -> torch.Tensor:
    """The update ``scale * B @ A`` in fp32, in the layout of the base weight.

    A is (r, in) and B is (out, r), as in PEFT; a GPT-2 style Conv1D stores its weight as (in, out),
    which ``fan_in_fan_out`` says, and gets the transpose.
    """
    delta = (B.detach().float() @ A.detach().float()) * scale
    return delta.T if fan_in_fan_out else delta


@torch.no_grad()
def add_delta_(weight: torch.Tensor, delta: torch.Tensor) -> None:
    """Add an fp32 ``delta`` into ``weight`` in place, keeping the same Parameter object."""
    if weight.shape != delta.shape:
        raise ValueError(f"a delta of shape {tuple(delta.shape)} cannot be added to a weight of shape {tuple(weight.shape)}.")
    weight.add_(delta.to(device=weight.device, dtype=weight.dtype))
