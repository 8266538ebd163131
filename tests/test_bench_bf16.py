"""bench/bf16_merges.py's emulation of a bf16-stored base: a merge into the fp32-held copy gives exactly the
bf16 weight a real bf16 tensor would, and the kept share tells an exact merge from a rounded-away one."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
import bf16_merges  # noqa: E402  (bench/ holds scripts, not a package)

from loraboost.merge import add_delta_  # noqa: E402


def deltas(n: int, size: float) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [size * torch.randn(8, 1, generator=g) @ torch.randn(1, 16, generator=g) for _ in range(n)]


def test_emulated_bf16_merges_match_a_real_bf16_weight_with_and_without_residual():
    start = torch.randn(8, 16, generator=torch.Generator().manual_seed(1)).bfloat16()
    for residual_dtype in (None, torch.float32, torch.bfloat16):
        real, emulated = start.clone(), start.float()
        real_residual = None if residual_dtype is None else torch.zeros(8, 16, dtype=residual_dtype)
        emulated_residual = None if residual_dtype is None else torch.zeros(8, 16, dtype=residual_dtype)
        tracker = bf16_merges.MergeTracker(bf16=True)
        for delta in deltas(20, 1e-3):
            add_delta_(real, delta, real_residual)
            tracker(emulated, delta, emulated_residual)
        assert torch.equal(emulated, real.float())
        assert residual_dtype is None or torch.equal(emulated_residual, real_residual)


def test_kept_share_is_whole_in_fp32_and_small_when_bf16_rounds_the_merges_away():
    exact = bf16_merges.MergeTracker(bf16=False)
    weight = torch.randn(8, 16)
    for delta in deltas(10, 1e-2):
        exact(weight, delta)
    assert exact.kept()["forward"] > 1 - 1e-5

    rounded = bf16_merges.MergeTracker(bf16=True)
    weight, residual = torch.randn(8, 16).bfloat16().float(), torch.zeros(8, 16)
    for delta in deltas(10, 1e-5):  # far below a bf16 step of weights near 1: each merge rounds to nothing
        rounded(weight, delta, residual)
    kept = rounded.kept()
    assert kept["forward"] < 0.1 and kept["held"] > 1 - 1e-5  # the residual holds what the weight lost
