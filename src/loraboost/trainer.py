"""The Trainer a run trains with: TaskTrainer (the task's own loss, the round in every log, a warm-up that never
takes every step, LoRA+'s rate groups when asked) and its TrainingArguments from RunOptions, checked before writing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers
from peft.optimizers import create_loraplus_optimizer

from .booster import Booster
from .errors import first_line
from .monitors import round_of_step
from .options import RunOptions
from .task import Task


class TaskTrainer(transformers.Trainer):
    """The Trainer with the task's own loss (label-word cross-entropy at the answer position, or the model's) and,
    with ``loraplus_lr_ratio``, PEFT's LoRA+ optimizer (B factors at that multiple of the rate)."""

    def __init__(self, *args, task: Task, booster: Booster | None, loraplus_lr_ratio: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.task, self.booster, self.loraplus_lr_ratio = task, booster, loraplus_lr_ratio

    def create_optimizer(self, model=None):
        # LoRA+: PEFT groups the adapters' B factors (and 1-d parameters) at ratio x the rate, A and the rest at it.
        if self.optimizer is None and self.loraplus_lr_ratio is not None:
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
            kwargs = {**kwargs, "loraplus_weight_decay": self.args.weight_decay}
            model = self.model if model is None else model
            self.optimizer = create_loraplus_optimizer(
                model, optimizer_cls, loraplus_lr_ratio=self.loraplus_lr_ratio, **kwargs
            )
            return self.optimizer
        return super().create_optimizer(model)

    def log(self, logs, *args, **kwargs):
        # The round each step trained in, beside its loss: the reporters (TensorBoard, ...) plot it as a scalar.
        if "loss" in logs:
            logs = {**logs, "round": round_of_step(self.booster, self.state.global_step)}
        super().log(logs, *args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = self.task.loss(model, dict(inputs), self.booster)
        return (loss, None) if return_outputs else loss

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        # The Trainer rounds a warm-up share up, so a 1-step run (5% of 1 step -> 1 step) would train at LR 0 and
        # learn nothing. A warm-up is never all of the run: at most every step but the last. Longer runs, whose
        # warm-up ends before their last step, are unchanged.
        if self.lr_scheduler is None and 0 < num_training_steps <= self.args.get_warmup_steps(num_training_steps):
            self.args.warmup_steps = num_training_steps - 1
        return super().create_scheduler(num_training_steps, optimizer)


def training_arguments(options: RunOptions, work: Path, optimizer: dict[str, Any]) -> transformers.TrainingArguments:
    """The Trainer's settings of a run writing into ``work`` (no file is written here), with the arm's optimizer
    settings; a setting the Trainer refuses is one sentence."""
    try:
        return transformers.TrainingArguments(
            output_dir=str(work),
            max_steps=options.max_steps,
            num_train_epochs=options.epochs,
            per_device_train_batch_size=options.batch_size,
            gradient_accumulation_steps=options.gradient_accumulation,
            learning_rate=options.learning_rate,
            lr_scheduler_type=options.lr_scheduler,
            warmup_steps=options.warmup_ratio,  # below 1: a share of the steps
            weight_decay=0.0,
            save_strategy="steps",
            save_steps=options.save_steps,
            logging_steps=1,
            seed=options.seed,
            data_seed=options.seed,
            report_to=options.report_to,
            remove_unused_columns=False,
            use_cpu=not torch.cuda.is_available(),
            **optimizer,
        )
    except (ValueError, TypeError, ImportError) as error:
        raise ValueError(f"the Trainer refuses these settings ({first_line(error).rstrip('.')}).") from None
