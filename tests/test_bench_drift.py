"""bench/round_drift.py's drift: 1 for steps that keep one direction, the random-direction level for steps that
do not, and it ignores how long the steps are."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
import round_drift  # noqa: E402


def walk(steps):
    factors = [torch.zeros(4000), torch.zeros(50, 2)]
    meter = round_drift.DriftMeter(factors)
    drift = None
    for a, b in steps:
        factors = [factors[0] + a, factors[1] + b]
        drift = meter.update(factors)
    return drift


def test_steps_in_one_direction_drift_fully_whatever_their_length():
    g = torch.Generator().manual_seed(0)
    direction = (torch.randn(4000, generator=g), torch.randn(50, 2, generator=g))
    assert walk(
        (scale * direction[0], scale * direction[1]) for scale in torch.linspace(1e-3, 10, 60)
    ) == pytest.approx(1.0)


def test_steps_in_random_directions_drift_at_the_noise_level():
    g = torch.Generator().manual_seed(0)
    steps = [(torch.randn(4000, generator=g), torch.randn(50, 2, generator=g)) for _ in range(200)]
    assert walk(steps) == pytest.approx(round_drift.NOISE_DRIFT, abs=0.03)
