"""BoostCallback: runs a Booster's round changes inside transformers' Trainer (and so TRL's trainers).
Round changes happen in on_step_end, right after each optimizer step."""

from __future__ import annotations

from transformers import TrainerCallback

from .booster import Booster
from .optim import compose_round_schedule


class BoostCallback(TrainerCallback):
    """Drives ``booster`` from ``transformers.Trainer``.

    At the start of training it tells the plan the run's length (``max_steps``), checks that the
    Trainer's optimizer holds every booster parameter, and, with ``lr_schedule="per_round"``, multiplies
    the Trainer's schedule by the jagged per-round factor. After every optimizer step it calls
    ``booster.step``, which merges the live booster and starts the next at the end of a round.

    Example::

        booster = Booster(model, BoostConfig(method="cola"))
        trainer = Trainer(model=booster.model, args=args, train_dataset=ds,
                          callbacks=[BoostCallback(booster)])
    """

    def __init__(self, booster: Booster):
        if not isinstance(booster, Booster):
            raise TypeError(f"BoostCallback needs a Booster, got {type(booster).__name__}.")
        self.booster = booster

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        booster = self.booster
        if booster.config.steps_per_round is None:
            booster.set_total_steps(state.max_steps)
        booster._check_optimizer(optimizer)
        if booster.config.lr_schedule == "per_round":
            compose_round_schedule(lr_scheduler, booster.plan, booster.config.round_warmup_steps)

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        self.booster.step(optimizer)
