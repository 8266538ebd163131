"""What a run watches while it trains, as Trainer callbacks: per-step metrics and the validation curve to
metrics.jsonl, Ctrl-C, the progress bar, and the peaks of memory and optimizer state."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

import psutil
import torch
import transformers
from torch import nn

from .booster import Booster
from .task import Task


class MetricsLog(transformers.TrainerCallback):
    """Appends every Trainer log (loss, learning rate, ...) with its step and round to metrics.jsonl."""

    def __init__(self, path: Path, booster: Booster | None):
        self.path, self.booster = path, booster

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a") as f:
                f.write(
                    json.dumps(
                        {"step": state.global_step, "round": round_of_step(self.booster, state.global_step), **logs}
                    )
                    + "\n"
                )


def round_of_step(booster: Booster | None, step: int) -> int:
    """The round that trained optimizer step ``step`` (1-based): after a round's last step the booster has
    already moved on to the next round, but that step belongs to the one it ended."""
    return booster.plan.round_at(max(step - 1, 0)) if booster is not None else 0  # full fine-tuning: one round


class ValidationCurve(transformers.TrainerCallback):
    """Every ``every`` optimizer steps, the validation split's metric (e.g. ``validation_accuracy``) as a row of
    metrics.jsonl: the learning curve. Evaluation draws no random numbers, so training is unchanged by it."""

    def __init__(self, path: Path, booster: Booster | None, task: Task, model: nn.Module, data, every: int):
        self.path, self.booster, self.task, self.model, self.data, self.every = path, booster, task, model, data, every

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.global_step % self.every == 0:
            metrics = self.task.evaluate(self.model, self.data, progress=False)
            with self.path.open("a") as f:
                f.write(
                    json.dumps(
                        {
                            "step": state.global_step,
                            "round": round_of_step(self.booster, state.global_step),
                            **{f"validation_{name}": value for name, value in metrics.items()},
                        }
                    )
                    + "\n"
                )


class StopOnInterrupt(transformers.TrainerCallback):
    """Ctrl-C finishes the current step, writes a checkpoint and stops, so ``--resume`` can continue."""

    def __init__(self):
        self.interrupted = False

    def on_train_begin(self, args, state, control, **kwargs):
        self._previous = signal.signal(signal.SIGINT, self._interrupt)

    def on_train_end(self, args, state, control, **kwargs):
        signal.signal(signal.SIGINT, self._previous)

    def _interrupt(self, signum, frame):
        if self.interrupted:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.interrupted = True
        print(
            "\nloraboost: interrupted; saving a checkpoint after this step (Ctrl-C again to abort) ...", file=sys.stderr
        )

    def on_step_end(self, args, state, control, **kwargs):
        if self.interrupted:
            control.should_save = True
            control.should_training_stop = True


class Progress(transformers.TrainerCallback):
    """One progress bar with the recent loss and the live round, instead of a printed dict per step."""

    def __init__(self, booster: Booster | None, label: str):
        self.booster, self.label, self.bar, self.losses = booster, label, None, []

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=state.max_steps,
                initial=state.global_step,
                desc=f"train {self.label}",
                unit="step",
                file=sys.stderr,
            )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:
            self.losses = (self.losses + [float(logs["loss"])])[-10:]

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            loss = f"{sum(self.losses) / len(self.losses):.3f}" if self.losses else "-"
            self.bar.set_postfix(loss=loss, round=round_of_step(self.booster, state.global_step))
            self.bar.update(state.global_step - self.bar.n)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()


class PeakMemory:
    """Peak resident memory of this process while the block runs, sampled every 50 ms; on a CUDA machine
    also the peak GPU memory allocated by torch (``gpu_peak``; None without CUDA), the number that limits GPU runs."""

    def __enter__(self):
        self.peak, self._stop = psutil.Process().memory_info().rss, threading.Event()
        self.gpu_peak = None
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        process = psutil.Process()
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, process.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if torch.cuda.is_available():
            self.gpu_peak = torch.cuda.max_memory_allocated()


def optimizer_state_bytes(optimizer) -> int:
    """Bytes held in the optimizer's state: its tensors (Adam: two moments per parameter with a gradient), and
    the tensors of the objects it keeps there (GaLore's and APOLLO's projectors and their projection matrices)."""

    def size(value) -> int:
        if torch.is_tensor(value):
            return value.numel() * value.element_size()
        if hasattr(value, "__dict__") and not isinstance(value, type):
            return sum(v.numel() * v.element_size() for v in vars(value).values() if torch.is_tensor(v))
        return 0

    return sum(size(v) for state in optimizer.state.values() for v in state.values())


class OptimizerStatePeak(transformers.TrainerCallback):
    """The largest optimizer state of the run, read right after each optimizer step (before a round
    change resets the finished booster's state)."""

    def __init__(self):
        self.peak = 0

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.peak = max(self.peak, optimizer_state_bytes(optimizer))
