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
def add_delta_(weight: torch.Tensor, delta: torch.Tensor, residual: torch.Tensor | None = None) -> None:
    """Add an fp32 ``delta`` into ``weight`` in place, keeping the same Parameter object.

    With an fp32 ``residual`` (same shape) the sum is compensated (Kahan): ``weight + residual`` holds
    the running total, ``weight`` its rounding to its own dtype, and ``residual`` what each addition
    dropped, which the next merge adds back. In bf16, a plain add of deltas of per-element size ~1e-4
    of the weight kept under 3% of 100 merges in our test; the compensated sum keeps 99.99%.
    """
    if weight.shape != delta.shape:
        raise ValueError(f"a delta of shape {tuple(delta.shape)} cannot be added to a weight of shape {tuple(weight.shape)}.")
    delta = delta.to(device=weight.device, dtype=torch.float32)
    if residual is None:
        weight.add_(delta.to(weight.dtype))
        return
    carried = delta + residual
    old = weight.to(torch.float32, copy=True)  # .float() would alias an fp32 weight
    weight.copy_(old + carried)  # rounds to the weight's dtype
    residual.copy_(carried - (weight.float() - old))  # the difference of two close values is exact


def needs_residual(policy: str, dtype: torch.dtype) -> bool:
    """Whether a weight of ``dtype`` gets an fp32 residual under ``merge_residual=policy``."""
    return policy == "always" or policy == "auto" and dtype in (torch.bfloat16, torch.float16)
