"""The loss gradient with respect to each target module's merged weight, sketched while training runs: where a
new round's booster starts (its top singular directions) and which blocks it goes to (their top singular value).

For a linear layer y = W x the weight's gradient is G = sum over tokens of delta x^T (delta the gradient at
the output). It is never formed: hooks on the base layers fold every captured micro-batch into two small
random sketches, Y = G Omega (out x k) and Z = Psi G (l x in), from which a single-pass randomized SVD
(Tropp, Yurtsever, Udell and Cevher 2017) recovers G's top singular pairs; exact when G has rank <= k.
Memory: (k + l)(out + in) numbers per module (the two sketches and their test matrices), and each captured layer
input until its backward has run (once per input that several modules read, in fp32, or in bf16 or scaled float8
to halve or quarter it).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from .plan import round_generator


class TopSingular(NamedTuple):
    """A gradient's top singular triplets, largest first: G ~ left @ diag(values) @ right."""

    values: torch.Tensor  # (rank,)
    left: torch.Tensor  # (out, rank)
    right: torch.Tensor  # (rank, in)


@dataclass
class ModuleSketch:
    """One module's two sketches and the random test matrices they are taken with."""

    omega: torch.Tensor  # (in, k)
    psi: torch.Tensor  # (l, out)
    Y: torch.Tensor  # (out, k) = G @ omega
    Z: torch.Tensor  # (l, in) = psi @ G
    batches: int = 0  # micro-batches folded in so far

    def fold(self, x: torch.Tensor, delta: torch.Tensor) -> None:
        """Add one micro-batch: x (tokens, in) the layer's input, delta (tokens, out) its output gradient."""
        x, delta = x.float(), delta.float()
        self.Y += (delta.T @ (x @ self.omega.to(x.device))).to(self.Y.device)
        self.Z += ((delta @ self.psi.T.to(delta.device)).T @ x).to(self.Z.device)
        self.batches += 1

    def top(self, rank: int) -> TopSingular:
        """G's top ``rank`` singular values (descending) with their left and right singular vectors."""
        Q, _ = torch.linalg.qr(self.Y.double())  # (out, k): a basis for G's range
        # G ~ Q X with X = (Psi Q)^+ Z, solved in the least-squares sense.
        X = torch.linalg.lstsq(self.psi.double().to(Q.device) @ Q, self.Z.double()).solution  # (k, in)
        u, s, vh = torch.linalg.svd(X, full_matrices=False)
        return TopSingular(s[:rank].float(), (Q @ u[:, :rank]).float(), vh[:rank].float())


class ScaledFloat8:
    """A captured input's rows held in float8 (e4m3) with one fp32 scale per row, about a quarter of fp32's bytes;
    read back as fp32. Scaling each row to e4m3's range keeps its relative precision (about 2^-4) at every size."""

    CHUNK = 256  # rows scaled at a time: the full-size fp32 temporary a one-shot division makes would outlive its use
    # in the allocator's pages (peak RSS rose by more than the float8 copy saved)

    def __init__(self, rows: torch.Tensor):
        rows = rows.detach()
        largest = torch.linalg.vector_norm(rows, ord=math.inf, dim=1, keepdim=True, dtype=torch.float32)
        self.scale = largest.clamp_min(torch.finfo(torch.float32).tiny) / torch.finfo(torch.float8_e4m3fn).max
        self.values = torch.empty(rows.shape, dtype=torch.float8_e4m3fn, device=rows.device)
        for start in range(0, rows.shape[0], self.CHUNK):
            part = slice(start, start + self.CHUNK)
            self.values[part] = rows[part].float() / self.scale[part]

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    def float(self) -> torch.Tensor:
        return self.values.float().mul_(self.scale)  # in place: one full-size fp32 temporary, not two


class GradientSketcher:
    """Sketches the gradient of every given base layer while ``armed``; idle adapters stay idle.

    Blocks below the lowest live booster get no backward pass in plain training (nothing there needs a
    gradient), so while armed the input embeddings' output is made to require a gradient: the backward
    then reaches every block, as it does in LoRA on every block, but computes no weight gradient.

    Args:
        layers: (name, base layer) of every target module; each layer's (out, in) from ``shapes``.
        shapes: name -> (out, in).
        embeddings: the model's input embeddings, or None when it has none (then only the blocks the
            backward reaches anyway are sketched).
        oversample: k = rank + oversample columns in Y (at most min(out, in)); l = 2k + 1 rows in Z.
        input_dtype: the widest dtype a captured layer input is held in until its backward (an input as narrow or
            narrower is held itself, no copy; bfloat16 copies an fp32 input at half its size, float8_e4m3fn at a
            quarter with a scale per row: the sketch's directions then carry that precision).
    """

    def __init__(
        self,
        layers: Iterable[tuple[str, nn.Module]],
        shapes: dict[str, tuple[int, int]],
        embeddings: nn.Module | None,
        rank: int,
        oversample: int = 4,
        input_dtype: torch.dtype = torch.float32,
    ):
        self.layers = dict(layers)
        self.shapes = shapes
        self.embeddings = embeddings
        self.k = rank + oversample  # per module at most min(out, in), where the sketch is already exact
        self.input_dtype = input_dtype
        self.sketches: dict[str, ModuleSketch] = {}
        # id(input) -> (a weak reference to it, what is held of it): q/k/v and gate/up read one input, held once.
        self._held: dict[int, tuple[weakref.ref, torch.Tensor]] = {}
        self._handles: list = []  # hooks exist only while armed: outside a window a forward pays nothing

    @property
    def armed(self) -> bool:
        return bool(self._handles)

    def start(self, seed: int, round_index: int, names: Iterable[str], saved_inputs: Iterable[str] = ()) -> None:
        """Fresh, zero sketches of ``names`` with test matrices drawn from (seed, round): every rank draws the same.
        ``saved_inputs``: modules whose input autograd keeps until their backward anyway (a live booster whose A
        trains, without dropout); the sketch reads those inputs as they are, since a narrower copy would only add."""
        self.stop()
        saved_inputs = set(saved_inputs)
        generator = round_generator(seed, round_index, "sketch")
        self.sketches = {}
        for name in names:
            out_features, in_features = self.shapes[name]
            k = min(self.k, out_features, in_features)
            omega = torch.randn(in_features, k, generator=generator)
            psi = torch.randn(2 * k + 1, out_features, generator=generator)
            device = _device_of(self.layers[name])
            self.sketches[name] = ModuleSketch(
                omega.to(device),
                psi.to(device),
                torch.zeros(out_features, k, device=device),
                torch.zeros(2 * k + 1, in_features, device=device),
            )
            capture = self._capture(self.sketches[name], copy=name not in saved_inputs)
            self._handles.append(self.layers[name].register_forward_hook(capture))
        if self.embeddings is not None:
            self._handles.append(self.embeddings.register_forward_hook(self._need_gradient))

    def stop(self) -> None:
        """Remove the hooks; the sketches keep what they folded in."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._held = {}

    def all_reduce(self) -> None:
        """Sum the sketches over data-parallel ranks (small tensors, never a full gradient)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        for sketch in self.sketches.values():
            torch.distributed.all_reduce(sketch.Y)
            torch.distributed.all_reduce(sketch.Z)

    # ------------------------------------------------------------------ hooks
    @staticmethod
    def _need_gradient(module, args, output):
        if (
            module.training
            and torch.is_grad_enabled()
            and torch.is_tensor(output)
            and output.is_floating_point()
            and not output.requires_grad
        ):
            return output.detach().requires_grad_(True)
        return output

    def _hold(self, given: torch.Tensor) -> torch.Tensor:
        """A layer input as the sketch holds it until its backward: flat, in ``input_dtype``, and one tensor for
        every module that reads this input (the weak reference tells a live input from a new one at its address)."""
        key = id(given)
        held = self._held.get(key)
        if held is not None and held[0]() is given:
            return held[1]
        x = given.detach().reshape(-1, given.shape[-1])
        if x.element_size() > self.input_dtype.itemsize:  # only ever narrowed: a bf16 model's inputs stay as they are
            x = ScaledFloat8(x) if self.input_dtype == torch.float8_e4m3fn else x.to(self.input_dtype)
        self._held[key] = (weakref.ref(given, lambda _: self._held.pop(key, None)), x)
        return x

    def _capture(self, sketch: ModuleSketch, copy: bool = True):
        def hook(module, args, output):
            if not (module.training and torch.is_grad_enabled() and torch.is_tensor(output) and output.requires_grad):
                return
            x = self._hold(args[0]) if copy else args[0].detach().reshape(-1, args[0].shape[-1])
            output.register_hook(lambda delta: sketch.fold(x, delta.detach().reshape(-1, delta.shape[-1])))

        return hook


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def factors_from_gradient(
    top: TopSingular, rank: int, shape: tuple[int, int], how: str, gamma: float, frozen: str | None = None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A new booster's fp32 factors A (rank, in) and B (out, rank) from the gradient's top triplets, or None when
    the gradient is zero (the booster then keeps its random start).

    ``gradient``: A's rows along the top right singular vectors, each with a random A row's norm (PEFT's
    kaiming-uniform: sqrt(1/3)), and B = 0. ``gradient-step`` (LoRA-One): A = sqrt(w) V^T and B = -U sqrt(w)
    with w = S / (S_1 gamma), so B A = -(1/gamma) U diag(S / S_1) V^T, a descent step along the gradient's
    top-r subspace that does not depend on the gradient's scale (a sum over however many micro-batches).

    ``frozen`` (``gradient`` only) names the factor that will not train: it is set to the singular vectors
    themselves, orthonormal, and the other factor to zero. A frozen A = V_r^T makes B's gradient s G V_r, GaLore's
    right projection; a frozen B = U_r makes A's gradient s U_r^T G, its left projection.
    """
    if not float(top.values[0]) > 0:
        return None
    out_features, in_features = shape
    A, B = torch.zeros(rank, in_features), torch.zeros(out_features, rank)
    n = top.right.shape[0]
    if how == "gradient" and frozen == "A":
        A[:n] = top.right.cpu()
    elif how == "gradient" and frozen == "B":
        B[:, :n] = top.left.cpu()
    elif how == "gradient":
        A[:n] = top.right.cpu() / math.sqrt(3.0)
    else:
        root = (top.values.cpu() / (top.values[0].cpu() * gamma)).sqrt()
        A[:n] = root[:, None] * top.right.cpu()
        B[:, :n] = -top.left.cpu() * root[None, :]
    return A, B
