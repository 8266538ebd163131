"""Which blocks a gradient-boosted round trains, from each block's Frank-Wolfe gap (the summed top singular
value of its modules' loss gradients): drawn in proportion to the gaps, or the largest gaps with forced visits.

Both are pure functions of the gaps, the round and the blocks' history, so every data-parallel rank (which
sees the same all-reduced sketches) and every resume picks the same blocks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def proportional(gaps: torch.Tensor, count: int, generator: torch.Generator) -> list[int]:
    """``count`` block indices drawn without replacement with probability proportional to ``gaps`` (all > 0
    for the blocks that can be drawn): large gaps are likely, and no block with a gradient is excluded."""
    return sorted(torch.multinomial(gaps, count, replacement=False, generator=generator).tolist())


def starvation_limit(blocks: int, count: int) -> int:
    """Rounds a block may sit out before top-k must take it: twice the rounds that ``count`` blocks per round
    need to visit all ``blocks`` once."""
    return 2 * math.ceil(blocks / count)


def top_k_with_visits(gaps: torch.Tensor, count: int, idle_rounds: Sequence[int]) -> list[int]:
    """The ``count`` blocks with the largest gaps (Frank-Wolfe's choice), except that blocks idle for at least
    ``starvation_limit`` rounds come first, longest idle first: the gradient steers, and no block is starved.

    Args:
        gaps: (blocks,) each block's gap.
        count: blocks to pick.
        idle_rounds: per block, the rounds since it last trained (the round index + 1 if it never did).
    """
    limit = starvation_limit(len(gaps), count)
    starved = sorted((i for i, idle in enumerate(idle_rounds) if idle >= limit), key=lambda i: (-idle_rounds[i], i))
    chosen = starved[:count]
    for i in torch.argsort(gaps, descending=True, stable=True).tolist():
        if len(chosen) == count:
            break
        if i not in chosen:
            chosen.append(i)
    return sorted(chosen)
