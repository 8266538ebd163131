"""BoostCallback: runs a Booster's round changes inside transformers' Trainer (and so TRL's trainers).
Round changes happen in on_step_end, right after each optimizer step."""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .booster import Booster
from .checkpoint import STATE_FILE
from .optim import compose_round_schedule


def parallelism_problem(args) -> str | None:
    """Why the Trainer's parallelism setup cannot run boosting, or None when it can."""
    if getattr(args, "deepspeed", None):
        return (
            "DeepSpeed is not supported: ZeRO keeps optimizer state in flat partitions, so a booster's "
            "optimizer state cannot be reset at a round change; use DDP, or FSDP2 (fsdp_config={'version': 2})."
        )
    if getattr(args, "fsdp", None) and int((getattr(args, "fsdp_config", None) or {}).get("version", 2)) == 1:
        return (
            "FSDP version 1 is not supported: its flat parameters hide the LoRA factors that a round change "
            "merges and re-initialises; use FSDP2 with fsdp_config={'version': 2}."
        )
    return None


def ddp_problem(world_size: int, gradient_checkpointing: bool, find_unused: bool | None, subsets: bool) -> str | None:
    """Why this DDP setup cannot train layer subsets, or None when it can.

    A round that uses some layers leaves the other adapters without a gradient, so DDP must look for
    unused parameters. The Trainer does by default, except with gradient checkpointing on.
    """
    if world_size <= 1 or not subsets:
        return None
    if find_unused is None:
        find_unused = not gradient_checkpointing  # the Trainer's own default
    if find_unused:
        return None
    return (
        "layers_per_round leaves some adapters without a gradient in every step, so DDP must find unused "
        "parameters: set ddp_find_unused_parameters=True (with gradient checkpointing, also "
        "gradient_checkpointing_kwargs={'use_reentrant': False})."
    )


class BoostCallback(TrainerCallback):
    """Drives ``booster`` from ``transformers.Trainer``.

    At the start of training it tells the plan the run's length (``max_steps``), checks that the
    Trainer's optimizer holds every booster parameter, and, with ``lr_schedule="per_round"``, multiplies
    the Trainer's schedule by the jagged per-round factor. After every optimizer step it calls
    ``booster.step``, which merges the live booster and starts the next at the end of a round.

    Every checkpoint folder the Trainer writes also gets ``loraboost_state.safetensors`` (the ledger of
    merged rounds, the live boosters and the plan position): the Trainer itself saves only the adapter,
    which would lose every merged round. ``trainer.train(resume_from_checkpoint=...)`` on a fresh
    Booster over the original base model reads it back, so the run continues as if never stopped.

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
        if state.global_step != booster.global_step:
            self._resume(args, state)
        if booster.config.steps_per_round is None:
            booster.set_total_steps(state.max_steps)
        booster.check_optimizer(optimizer)
        problem = parallelism_problem(args) or ddp_problem(
            args.world_size,
            args.gradient_checkpointing,
            args.ddp_find_unused_parameters,
            booster.plan.layers_per_round < len(booster.plan.layer_keys),
        )
        if problem:
            raise ValueError(problem)
        if booster.config.lr_schedule == "per_round":
            compose_round_schedule(lr_scheduler, booster.plan, booster.config.round_warmup_steps)

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        self.booster.step(optimizer)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:  # every rank holds the same state
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            self.booster.save_state(folder / STATE_FILE)

    def _resume(self, args, state) -> None:
        """The Trainer resumed at ``state.global_step``: load the booster state saved beside it."""
        path = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}" / STATE_FILE
        if self.booster.global_step != 0:
            raise RuntimeError(
                f"the Trainer is at step {state.global_step} but the booster at step {self.booster.global_step}; "
                "resume with a fresh Booster built on the original base model."
            )
        if not path.is_file():
            raise FileNotFoundError(
                f"resuming at step {state.global_step} needs the booster state {path}, which is missing; without it "
                "every merged round would be lost (was the checkpoint written without BoostCallback?)."
            )
        self.booster.load_state(path)
