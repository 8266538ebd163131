"""Delta arithmetic of a merge: the fp32 update a booster stands for, and its write into a base weight.
PEFT's reversible merge() is never used: it bookkeeps an inference merge and skips the LoRA path."""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor


def lora_delta(A: torch.Tensor, B: torch.Tensor, scale: float, fan_in_fan_out: bool) -> torch.Tensor:
    """The update ``scale * B @ A`` in fp32, in the layout of the base weight.

    A is (r, in) and B is (out, r), as in PEFT; a GPT-2 style Conv1D stores its weight as (in, out),
    which ``fan_in_fan_out`` says, and gets the transpose.
    """
    A, B = A.detach().float(), B.detach().float()
    if isinstance(A, DTensor):
        return _sharded_delta(A, B, scale, fan_in_fan_out)
    delta = (B @ A) * scale
    return delta.T if fan_in_fan_out else delta


def _sharded_delta(A: DTensor, B: DTensor, scale: float, fan_in_fan_out: bool) -> DTensor:
    """The delta as a DTensor sharded by rows like an FSDP2 weight: each rank computes only its own
    rows, gathering just the small factors (r x (in + out)), never a full weight."""
    replicate = [Replicate()] * A.device_mesh.ndim
    rows = [Shard(0)] * A.device_mesh.ndim
    A, B = A.redistribute(placements=replicate), B.redistribute(placements=replicate)
    if fan_in_fan_out:  # weight is (in, out): rows of A^T @ B^T
        return (A.T.redistribute(placements=rows) @ B.T) * scale
    return (B.redistribute(placements=rows) @ A) * scale


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: gathered when it is a sharded DTensor, else itself."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded DTensor (a view, so in-place changes reach it), else the tensor."""
    return t.to_local() if isinstance(t, DTensor) else t


def as_local_layout(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``value`` (a full tensor, the same on every rank) laid out like ``like`` for an in-place copy."""
    if isinstance(like, DTensor):
        return distribute_tensor(value.to(like.device), like.device_mesh, like.placements, src_data_rank=None)
    return value


LOW_PRECISION = (torch.bfloat16, torch.float16)


def stochastic_round(total: torch.Tensor, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """``total`` (fp32) rounded to ``dtype`` up or down at random, with the probability that makes the result
    equal ``total`` in expectation: a change smaller than the format's step is kept on average, not dropped.
    The draws come from ``generator`` (a CPU generator), so a seeded generator rounds the same way every time;
    for a tensor on an accelerator they are drawn there, from a generator of that device seeded by ``generator``
    (drawing hundreds of millions of numbers on the host and copying them over would stall every merge), so
    runs on the same kind of device round alike."""
    nearest = total.to(dtype)
    error = total - nearest.float()  # what rounding to nearest dropped (exact: the two are close)
    toward = torch.where(error > 0, torch.inf, -torch.inf).to(dtype)
    other = torch.nextafter(nearest, toward)  # the representable value on the other side of total
    step = (other.float() - nearest.float()).abs()
    chance = torch.where(step > 0, error.abs() / step, torch.zeros_like(step))
    if total.device.type != "cpu":
        seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator))
        generator = torch.Generator(device=total.device).manual_seed(seed)
    draws = torch.rand(total.shape, generator=generator, dtype=torch.float32, device=total.device)
    return torch.where(draws < chance, other, nearest)


@torch.no_grad()
def add_delta_(
    weight: torch.Tensor,
    delta: torch.Tensor,
    residual: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> None:
    """Add an fp32 ``delta`` into ``weight`` in place, keeping the same Parameter object.

    With a ``residual`` (same shape) the sum is compensated (Kahan): ``weight + residual`` holds the
    running total, ``weight`` its rounding to its own dtype, and ``residual`` what each addition dropped,
    which the next merge adds back. In bf16 a plain add rounds small deltas away, while the compensated sum
    keeps them to the residual's precision (a bf16 residual loses its own rounding); BENCHMARKS.md has the
    measured shares, from bench/merge_precision.py. Without a residual, a ``generator`` rounds a bf16/fp16
    sum stochastically (``stochastic_round``): no memory, and every merge kept in expectation.
    """
    if weight.shape != delta.shape:
        raise ValueError(
            f"a delta of shape {tuple(delta.shape)} cannot be added to a weight of shape {tuple(weight.shape)}."
        )
    delta = delta.to(dtype=torch.float32)
    if not isinstance(delta, DTensor):
        delta = delta.to(device=weight.device)
    if residual is None and generator is not None and weight.dtype in LOW_PRECISION:
        local = local_tensor(weight)  # an FSDP2 shard rounds its own rows, with its own draws
        local.copy_(stochastic_round(local.float() + local_tensor(delta).to(local.device), weight.dtype, generator))
        return
    if residual is None:
        weight.add_(delta.to(weight.dtype))
        return
    carried = delta + residual
    old = weight.to(torch.float32, copy=True)  # .float() would alias an fp32 weight
    weight.copy_(old + carried)  # rounds to the weight's dtype
    residual.copy_(carried - (weight.float() - old))  # the difference of two close values is exact


def needs_residual(policy: str, dtype: torch.dtype) -> bool:
    """Whether a weight of ``dtype`` gets a residual under ``merge_residual=policy``."""
    return policy == "always" or policy == "residual" and dtype in LOW_PRECISION


def rounds_stochastically(policy: str, dtype: torch.dtype) -> bool:
    """Whether a merge into a weight of ``dtype`` is rounded stochastically under ``merge_residual=policy``."""
    return policy in ("stochastic", "auto") and dtype in LOW_PRECISION


def is_quantized(weight: torch.Tensor) -> bool:
    """Whether a base weight is stored quantized (bitsandbytes 4-bit / 8-bit keep integer storage)."""
    return not weight.is_floating_point()


class LowRankSidePath:
    """Merged updates of a quantized layer, kept in full precision beside it: ``y += B (A x)``.

    Adding a delta into 4-bit weights would mean dequantize, add, requantize at every merge, and the
    rounding would swallow small updates. Instead every merged round's factors are stacked here
    (A: R x in, B: out x R with the scales folded in), costing r * (in + out) numbers per round.
    """

    def __init__(self, layer: torch.nn.Module):
        self.A: torch.Tensor | None = None
        self.B: torch.Tensor | None = None
        self.handle = layer.register_forward_hook(self._add_to_output)

    @property
    def rank(self) -> int:
        return 0 if self.A is None else self.A.shape[0]

    @torch.no_grad()
    def append(self, A: torch.Tensor, B: torch.Tensor, scale: float) -> None:
        """Stack one merged booster (A: r x in, B: out x r) onto the path, in fp32."""
        A, B = A.detach().float(), B.detach().float() * scale
        self.A = A.clone() if self.A is None else torch.cat([self.A, A])
        self.B = B.clone() if self.B is None else torch.cat([self.B, B], dim=1)

    def _add_to_output(self, module, args, output):
        if self.A is None:
            return output
        x = args[0]
        return output + ((x.to(self.A.dtype) @ self.A.T) @ self.B.T).to(output.dtype)
