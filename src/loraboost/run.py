"""A fine-tuning run on transformers' Trainer with BoostCallback, kept in a run folder: prepare (load and check
everything before any write), train (into the folder, resumable), and load_run (a finished run rebuilt)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import transformers

from .arms import Arm, arm_of
from .atomic import atomic_file
from .booster import Booster
from .checkpoint import extra_trainables
from .config import BoostConfig
from .data import EMBEDDED, require_columns, sample_splits
from .hf import BoostCallback
from .models import head_module_name, is_encoder, load_model, model_folder, save_model
from .monitors import (
    MetricsLog,
    OptimizerStatePeak,
    PeakMemory,
    Progress,
    StopOnInterrupt,
    ValidationCurve,
)
from .options import DEFAULT_MAX_LENGTH, RunOptions, fit_splits
from .peers import set_trainable
from .peers import training_arguments as peer_arguments
from .run_folder import (
    FINISHED,
    FULL_MODEL,
    METRICS,
    STATE,
    MarkCheckpointComplete,
    absolute_paths,
    check_output,
    check_same_settings,
    checkpoint_step,
    final_step,
    is_run,
    newest_complete_checkpoint,
    restore_final_checkpoint,
    saved_run,
    staging_folder,
    swap_in,
    trim_metrics,
    write_run_file,
)
from .targets import check_rank, resolve_targets
from .task import Task, majority_warning
from .task_kinds import task_kind
from .trainer import TaskTrainer, training_arguments


def prepare(options: RunOptions, arm: Arm | BoostConfig | None = None):
    """Load and check everything before any output is written; returns what training needs. The task kind
    (``--task``) reads the data, names its columns and classes, and binds to the tokenizer. Without
    ``--learning-rate``, the run takes ``arm``'s own rate."""
    kind = task_kind(options.task)
    embedded = EMBEDDED.get(options.data)
    if embedded is not None and options.task not in embedded.tasks:
        raise ValueError(
            f"data {options.data!r} is for task={embedded.task!r}, not task={options.task!r}; "
            f"pass --task {embedded.task}."
        )
    data = kind.load(options)
    kind.configure(options, embedded, lambda: is_encoder(model_folder(options.model)))
    require_columns(data, kind.columns(options))
    fitted = options.train_size is None or options.test_size is None
    sizes = fit_splits(options, len(data))
    raw_splits = sample_splits(data, sizes, options.splits_seed)  # checked before the (slow) model load
    options.train_size, options.test_size = sizes["train"], sizes["test"]  # run.json keeps what was used
    if fitted:
        shown = " / ".join(f"{size} {name}" for name, size in sizes.items())
        print(f"loraboost: splits of the {len(data)} examples: {shown} (seed {options.splits_seed})", file=sys.stderr)
    if options.forget_data:  # scored like test, on another data set: what the run lost elsewhere
        elsewhere = dataclasses.replace(options, data=options.forget_data)
        other = kind.load(elsewhere)
        require_columns(other, kind.columns(elsewhere))
        raw_splits["forget"] = sample_splits(
            other, {"forget": min(options.test_size, len(other))}, options.splits_seed
        )["forget"]
    if options.learning_rate is None and arm is not None:
        options.learning_rate = arm_of(arm).learning_rate
    classes = kind.classes(data, options)
    # An encoder's new classification head is drawn from the global RNG: seed it, or a run is not repeatable.
    transformers.set_seed(options.seed)
    model, tokenizer = load_model(options.model, kind.encoder_ok, num_labels=len(classes) if classes else None)
    context = getattr(model.config, "max_position_embeddings", None)
    if options.max_length is None:  # run.json keeps what was used
        options.max_length = min(DEFAULT_MAX_LENGTH, context or DEFAULT_MAX_LENGTH)
    for name in ("max_length", kind.context_option):
        if context and getattr(options, name) > context:
            value = getattr(options, name)
            raise ValueError(
                f"{name}={value} is longer than this model's context of {context} tokens; "
                f"use --{name.replace('_', '-')} {context} or less."
            )
    task = kind(options, tokenizer, classes, head=is_encoder(model_folder(options.model)))
    splits = {name: task.prepare(split) for name, split in raw_splits.items()}
    if task.truncated:
        total = sum(len(split) for split in splits.values())
        print(
            f"loraboost: {task.truncated} of {total} examples are longer than max_length={options.max_length} "
            "tokens and are truncated (classification keeps the end of the prompt).",
            file=sys.stderr,
        )
    return model, tokenizer, task, splits


def train(options: RunOptions, what: Arm | BoostConfig) -> dict[str, Any]:
    """Run a fine-tune of ``what`` (an arm of arms.ARMS, or a BoostConfig) into ``options.output``; returns the
    summary (also saved as summary.json).

    Everything is checked before the first file is written (a bad input leaves no folder, and a failure before
    the first checkpoint removes what this call wrote); ``--resume`` continues from the newest complete
    checkpoint with the run's own settings, and finishes a run whose last checkpoint is its last step without
    training again; ``--overwrite`` trains the new run beside the old one and swaps it in only once it is
    finished, so a failure never loses the old run.
    """
    arm = arm_of(what)
    arm.check_available()
    arm.check_launch(options.gradient_accumulation)
    options = dataclasses.replace(options, **absolute_paths(options))  # run.json names them from anywhere
    out = Path(options.output)
    check_output(out, options.overwrite, options.resume)
    boost = arm.booster_config(options.seed)
    if options.loraplus_lr_ratio is not None and boost is None:
        raise ValueError(
            f"loraplus_lr_ratio={options.loraplus_lr_ratio!r} sets the rate of adapters' B factors, but {arm.name!r} "
            "trains no adapters; leave it unset for this method."
        )
    model, tokenizer, task, splits = prepare(options, arm)
    if boost is not None and task.head and boost.modules_to_save is None:
        # The new classification head trains in every round and is saved with the adapter.
        boost = dataclasses.replace(boost, modules_to_save=[head_module_name(model)])
    staging = staging_folder(out)
    replacing = options.overwrite and out.exists() and any(out.iterdir())
    resuming_staged = options.resume and options.overwrite and is_run(staging)
    work = staging if (replacing and not options.resume) or resuming_staged else out
    settings = {"options": asdict(options), "arm": arm.to_dict(), "boost": boost.to_dict() if boost else None}
    if options.resume:
        check_same_settings(work, settings)
    # Without a booster (full fine-tuning, an optimizer peer) the model's own weights train: no rounds.
    # A Booster checks its targets, rank and layer counts on the model, before any file is written.
    if boost is not None:  # a rank past a target's smaller side adds only memory (100000 would take gigabytes)
        check_rank(model, resolve_targets(model, boost.target_modules, boost.layers_pattern), boost.rank)
    booster = None if boost is None else Booster(model, boost)
    set_trainable(arm, model)
    args = training_arguments(options, work, peer_arguments(arm, model))

    checkpoint = None
    if options.resume:
        checkpoint = newest_complete_checkpoint(work)
        trim_metrics(work, checkpoint_step(checkpoint) if checkpoint else 0)
    else:
        if work == staging and staging.exists():
            shutil.rmtree(staging)  # left by an overwrite that was killed; --resume --overwrite would continue it
        work.mkdir(parents=True, exist_ok=True)
        write_run_file(work, settings)
    try:
        summary = _train_and_finish(options, arm, model, tokenizer, task, splits, booster, args, checkpoint)
    except BaseException:
        if not options.resume and newest_complete_checkpoint(work) is None:
            shutil.rmtree(work, ignore_errors=True)  # nothing to resume: leave no folder, as a refused input does
        raise
    if work == staging:
        swap_in(staging, out)
    return summary


def _train_and_finish(options, arm, model, tokenizer, task, splits, booster, args, checkpoint) -> dict[str, Any]:
    """Train from ``checkpoint`` (or the start) to the end, save the outputs and summary.json; a checkpoint at the
    run's last step is restored instead of trained from (a kill came during the final outputs)."""
    work = Path(args.output_dir)
    interrupt, optimizer_peak = StopOnInterrupt(), OptimizerStatePeak()
    callbacks = [MetricsLog(work / METRICS, booster), interrupt, optimizer_peak]
    if booster is not None:
        callbacks.insert(0, BoostCallback(booster))
    if options.eval_steps:
        callbacks.append(
            ValidationCurve(
                work / METRICS,
                booster,
                task,
                model if booster is None else booster.model,
                splits["validation"],
                options.eval_steps,
            )
        )
    callbacks.append(MarkCheckpointComplete())  # last: after the booster state is saved
    trainer = TaskTrainer(
        model=model if booster is None else booster.model,
        args=args,
        train_dataset=splits["train"],
        data_collator=task.collate,
        callbacks=callbacks,
        task=task,
        booster=booster,
        loraplus_lr_ratio=options.loraplus_lr_ratio,
    )
    # Every step is logged to metrics.jsonl; the console gets one bar instead of a printed dict per step.
    trainer.remove_callback(transformers.trainer_callback.ProgressCallback)
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    trainer.add_callback(Progress(booster, f"{arm.name} seed {options.seed}"))
    start = time.perf_counter()
    final = final_step(checkpoint) if checkpoint else None
    with PeakMemory() as memory:
        if final is None:
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        else:
            restore_final_checkpoint(checkpoint, model, booster)
    steps = trainer.state.global_step if final is None else final
    if interrupt.interrupted:
        out = Path(options.output)
        where = f"continue with --resume --output {out}"
        if work != out:
            where = f"the old run in {out} is untouched; continue the new one with --resume --overwrite --output {out}"
        raise KeyboardInterrupt(f"stopped at step {steps}; {where}")
    seconds = time.perf_counter() - start
    if booster is None:
        trained = model
        save_model(model, tokenizer, work / FULL_MODEL)
        trainable = live = sum(p.numel() for p in model.parameters() if p.requires_grad)  # what the optimizer steps
        rounds, ledger = 0, {}
    else:
        trained = booster.model
        booster.save_state(work / STATE)
        booster.save_adapter(work / "adapter", overwrite=True)
        trainable = sum(p.numel() for p in booster.parameters())
        live = sum(p.numel() for s in booster.live_slots for p in (s.A, s.B) if p.requires_grad) + sum(
            p.numel() for _, p in extra_trainables(booster)
        )  # e.g. a classifier head
        rounds = len(booster.ledger)
        ledger = {
            "ledger_bytes": booster.ledger.nbytes,  # held on the host and written into every checkpoint
            "adapted_weight_bytes": sum(4 * s.shape[0] * s.shape[1] for s in booster.slots),  # the same in fp32
        }
    metrics = task.score(trained, splits)
    warning = majority_warning(metrics)
    if warning:
        print(warning, file=sys.stderr)
    summary = {
        "method": arm.name,
        "seed": options.seed,
        "steps": steps,
        "rounds_merged": rounds,
        "trainable_parameters": trainable,
        "live_trainable_parameters": live,
        "optimizer_state_bytes": optimizer_peak.peak,
        **ledger,
        "peak_memory_bytes": memory.peak,
        "train_seconds": seconds,
        "truncated_examples": task.truncated,
        "scoring_cost": task.cost(splits),
        "metrics": metrics,
    }
    if memory.gpu_peak is not None:
        summary["peak_gpu_memory_bytes"] = memory.gpu_peak
    with atomic_file(work / FINISHED) as finished:
        finished.write_text(json.dumps(summary, indent=1))
    return summary


class FinishedRun(NamedTuple):
    """A finished run rebuilt by ``load_run``: its settings, the booster with its final state, and the task."""

    options: RunOptions
    boost: BoostConfig
    booster: Booster
    tokenizer: Any
    task: Task
    splits: dict


def load_run(folder: str | Path) -> FinishedRun:
    """A finished run rebuilt: its options, config, booster (final state loaded), tokenizer, task, splits."""
    folder = Path(folder)
    if not (folder / FINISHED).exists():
        raise ValueError(
            f"{str(folder)!r} is not a finished loraboost run (no {FINISHED}); train one with loraboost train."
        )
    options, arm, boost = saved_run(folder)
    if boost is None:
        raise ValueError(
            f"{str(folder)!r} is a {arm.label} run, which has no booster; its model is the plain "
            f"transformers folder {str(folder / FULL_MODEL)!r}."
        )
    model, tokenizer, task, splits = prepare(options, boost)
    booster = Booster(model, boost)
    booster.load_state(folder / STATE)
    return FinishedRun(options, boost, booster, tokenizer, task, splits)
