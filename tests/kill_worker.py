"""Runs `loraboost train ARGS...` and SIGKILLs itself at one chosen point (see test_failures.py).

    python kill_worker.py WHERE N -- ARGS...

WHERE is where the kill happens, at its N-th occurrence in this process:
    step        inside an optimizer step (after the backward pass, before the weights change)
    merge       inside a round change, after some of the round's boosters were merged into the weights
    checkpoint  inside a checkpoint write (model saved, optimizer not yet)
    state       inside the booster state's write (the staging file written, not yet renamed)
    final       after training, while the run's own outputs are written
"""

import os
import signal
import sys

import loraboost.checkpoint
import loraboost.run
from loraboost.booster import Booster
from loraboost.cli import main


def kill_on(owner, name, n, only=lambda *a, **k: True, after=False):
    """Replace ``owner.name`` by a wrapper that kills this process on the n-th call that ``only`` accepts
    (before the call, or right after it with ``after``)."""
    original, calls = getattr(owner, name), [0]

    def wrapper(*args, **kwargs):
        if only(*args, **kwargs):
            calls[0] += 1
        if calls[0] == n and not after:
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if calls[0] == n and after:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, name, wrapper)


def install(where: str, n: int) -> None:
    trainer = loraboost.run.TaskTrainer
    if where == "step":
        kill_on(trainer, "training_step", n, after=True)
    elif where == "merge":
        # Merges during training only (a resume replays the ledger's merges at step 0), after the first one.
        kill_on(Booster, "_apply_merge", n + 1, only=lambda self, *a: self.global_step > 0)
    elif where == "checkpoint":
        kill_on(trainer, "_save_optimizer_and_scheduler", n)
    elif where == "state":
        kill_on(loraboost.checkpoint, "save_file", n, after=True)
    elif where == "final":
        kill_on(Booster, "save_adapter", n)
    else:
        raise SystemExit(f"unknown kill point {where!r}")


if __name__ == "__main__":
    where, n, separator, *argv = sys.argv[1:]
    assert separator == "--"
    install(where, int(n))
    raise SystemExit(main(argv))
