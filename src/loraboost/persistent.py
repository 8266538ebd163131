"""A persistent part in every booster (``BoostConfig.persistent_rank``, checked in field_checks.py): the first k of a
booster's r ranks never merge and train across rounds as one LoRA of rank k; the other r - k (the chain part) merge."""

from __future__ import annotations

import math

import torch

from .merge import as_local_layout, full_tensor


def chain_part(A: torch.Tensor, B: torch.Tensor, kept: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The part of a booster (A: r x in, B: out x r) that merges: A's rows and B's columns from rank ``kept`` on, as
    copies laid out like the factors (sharded the same way under FSDP2); the factors themselves when nothing is kept."""
    if kept == 0:
        return A, B
    chain_A = full_tensor(A.detach())[kept:].clone()
    chain_B = full_tensor(B.detach())[:, kept:].clone()
    return as_local_layout(chain_A, A), as_local_layout(chain_B, B)


@torch.no_grad()
def restart_chain_part(A: torch.nn.Parameter, B: torch.nn.Parameter, kept: int, generator: torch.Generator) -> None:
    """A fresh chain part in place, as a fresh booster starts (A's rows PEFT's kaiming-uniform draw, B's columns
    zero, so the model's output is unchanged); the persistent ranks keep their values."""
    new_A, new_B = full_tensor(A.detach()).clone(), full_tensor(B.detach()).clone()
    bound = 1.0 / math.sqrt(new_A.shape[1])  # kaiming_uniform_(a=sqrt(5)) on (r, in), as Booster._initialise
    sample = torch.empty((new_A.shape[0] - kept, new_A.shape[1]), dtype=torch.float32)
    new_A[kept:] = sample.uniform_(-bound, bound, generator=generator).to(new_A.dtype)
    new_B[:, kept:] = 0
    A.copy_(as_local_layout(new_A, A))
    B.copy_(as_local_layout(new_B, B))
