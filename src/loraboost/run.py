"""A fine-tuning run on transformers' Trainer with BoostCallback, kept in a run folder: the resolved
options, per-step metrics, checkpoints, the final booster state, the exported adapter and a summary."""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch
import transformers
from torch import nn

from .assets import default_model_dir, minilm_dir
from .atomic import atomic_file, atomic_folder
from .booster import Booster
from .checkpoint import extra_trainables
from .config import BoostConfig
from .data import EMBEDDED, load_data, require_columns, sample_splits
from .evaluate import (LabelWordTask, ResponseTask, answer_logits, label_word_accuracy, response_loss,
                       to_model_device)
from .hf import BoostCallback
from .run_folder import (FINISHED, METRICS, RUN_FILE, MarkCheckpointComplete, check_output, check_same_settings,
                         checkpoint_step, is_run, newest_complete_checkpoint, staging_folder, swap_in, trim_metrics,
                         write_run_file)

STATE = "booster_state.safetensors"
FULL_MODEL = "model"  # where a full fine-tuning run saves its model
TASKS = ("classify", "sft")
DEFAULT_TEMPLATE = {"classify": "{text}\nAnswer:", "sft": "{prompt}\n"}
# Embedded models by name; anything else is a local folder (no hub is reachable offline).
EMBEDDED_MODELS = {"default": default_model_dir, "smollm2": default_model_dir, "minilm": minilm_dir}


@dataclass
class RunOptions:
    """Everything a run needs besides the BoostConfig; every field is a CLI option and a YAML key."""

    model: str = "default"
    data: str = "default"
    task: str = "classify"
    text_column: str = "text"
    label_column: str = "label"
    prompt_column: str = "prompt"
    response_column: str = "response"
    template: str | None = None
    label_words: list[str] | None = None
    train_size: int = 1000
    validation_size: int = 0
    test_size: int = 500
    max_length: int = 128
    max_steps: int = -1
    epochs: float = 1.0
    batch_size: int = 16
    gradient_accumulation: int = 1
    learning_rate: float = 2e-3
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.05
    save_steps: int = 100
    seed: int = 0
    output: str = "runs/run"
    overwrite: bool = False
    resume: bool = False
    report_to: list[str] = field(default_factory=list)
    full_finetune: bool = False
    eval_steps: int = 0  # score the validation split every this many steps (0: only at the end)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r} is not valid; use one of {', '.join(TASKS)}.")
        for name in ("train_size", "test_size", "batch_size", "gradient_accumulation", "save_steps", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is not valid; use an integer >= 1.")
        if isinstance(self.eval_steps, bool) or not isinstance(self.eval_steps, int) or self.eval_steps < 0:
            raise ValueError(f"eval_steps={self.eval_steps!r} is not valid; use a step count >= 1, or 0 to score "
                             "only at the end.")
        if self.eval_steps and not self.validation_size:
            raise ValueError(f"eval_steps={self.eval_steps} needs a validation split to score; pass "
                             "--validation-size N as well.")
        steps = self.max_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps != -1 and steps < 1:
            raise ValueError(f"max_steps={steps!r} is not valid; use a step count >= 1, or -1 to train for --epochs.")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise ValueError(f"learning_rate={self.learning_rate!r} is not valid; use a positive number.")


def model_folder(name: str) -> Path:
    """An embedded model (``default`` = ``smollm2``: SmolLM2-135M-Instruct; ``minilm``: all-MiniLM-L6-v2)
    or a local model folder."""
    folder = EMBEDDED_MODELS[name]() if name in EMBEDDED_MODELS else Path(name)
    if not folder.is_dir():
        raise ValueError(
            f"model {name!r} is not a local folder, and no model hub is reachable offline; pass a folder "
            "saved with save_pretrained, or one of the embedded models 'default' (SmolLM2-135M-Instruct) or 'minilm'."
        )
    if not (folder / "config.json").is_file():
        raise ValueError(f"model folder {name!r} has no config.json, so it holds no transformers model; pass a "
                         "folder saved with save_pretrained (config.json, weights and tokenizer files).")
    return folder


def is_encoder(folder: Path) -> bool:
    """An encoder (BERT and kin) classifies with a head; a causal LM by label words."""
    architectures = transformers.AutoConfig.from_pretrained(folder).architectures or []
    return not any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in architectures)


def load_model(name: str, task: str, num_labels: int | None = None):
    """The model and tokenizer; an encoder gets a fresh classification head of ``num_labels`` classes."""
    folder = model_folder(name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if is_encoder(folder):
        if task != "classify":
            raise ValueError(f"model {name!r} is an encoder, which supports task='classify' only; use a causal LM for sft.")
        model = transformers.AutoModelForSequenceClassification.from_pretrained(folder, num_labels=num_labels,
                                                                               dtype=torch.float32)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model, tokenizer


class Task:
    """Binds a task definition to its columns and tokenizer: collation for the Trainer, loss, metrics."""

    def __init__(self, options: RunOptions, tokenizer, classes: list | None, head: bool):
        self.options, self.tokenizer, self.classes, self.head = options, tokenizer, classes, head
        template = options.template or DEFAULT_TEMPLATE[options.task]
        if head:  # an encoder with a classification head: no prompt, no label words
            self.definition = LabelWordTask("{text}", (), options.max_length)
        elif options.task == "classify":
            words = options.label_words
            if words is None:
                if not all(isinstance(c, str) for c in self.classes):
                    raise ValueError(f"the labels {self.classes[:6]} are not words; pass label_words with one "
                                     "word per class, in the order of the sorted labels.")
                words = [f" {c}" for c in self.classes]
            if len(words) != len(self.classes):
                raise ValueError(f"label_words has {len(words)} words for {len(self.classes)} classes {self.classes}.")
            self.definition = LabelWordTask(template, tuple(words), options.max_length)
            self.label_ids = self.definition.label_token_ids(tokenizer)
        else:
            self.definition = ResponseTask(template, options.max_length)

    def prepare(self, data):
        """Rows in the task's canonical columns (``text``/``label`` index, or ``prompt``/``response``)."""
        from datasets import Dataset

        o = self.options
        # Built afresh, not with map(): map keeps a replaced column's old type (string labels stay strings).
        if o.task == "classify":
            index = {c: i for i, c in enumerate(self.classes)}
            return Dataset.from_dict({"text": [str(t) for t in data[o.text_column]],
                                      "label": [index[c] for c in data[o.label_column]]})
        return Dataset.from_dict({"prompt": [str(p) for p in data[o.prompt_column]],
                                  "response": [str(r) for r in data[o.response_column]]})

    def count_truncated(self, data) -> int:
        """Examples whose prompt (and response) exceed ``max_length`` tokens."""
        o, template = self.options, self.definition.template
        if o.task == "classify":
            texts = [template.format(text=t) for t in data["text"]]
        else:
            texts = [template.format(prompt=p) + r for p, r in zip(data["prompt"], data["response"])]
        return sum(len(ids) > o.max_length for ids in self.tokenizer(texts).input_ids)

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        from datasets import Dataset

        if self.head:
            inputs = self.tokenizer([r["text"] for r in rows], return_tensors="pt", padding=True, truncation=True,
                                    max_length=self.options.max_length)
            inputs["labels"] = torch.tensor([r["label"] for r in rows])
            return dict(inputs)
        batch = Dataset.from_list(rows)
        if self.options.task == "classify":
            inputs, labels = next(self.definition.batches(self.tokenizer, batch, len(rows)))
            inputs["labels"] = torch.tensor(self.label_ids)[labels]
            return inputs
        return next(self.definition.batches(self.tokenizer, batch, len(rows)))

    def loss(self, model: nn.Module, inputs: dict[str, torch.Tensor], booster: Booster | None) -> torch.Tensor:
        if self.options.task == "classify" and not self.head:
            targets = inputs.pop("labels")  # label-word token ids (see collate)
            loss = nn.functional.cross_entropy(answer_logits(model, inputs).float(), targets)
            # The model computed no loss of its own, so the norm penalty's hook did not fire.
            if booster is not None and booster.config.norm_penalty > 0:
                return loss + booster.penalty().to(loss.device)
            return loss
        return model(**inputs).loss

    def evaluate(self, model: nn.Module, data, progress: bool = True) -> dict[str, float]:
        from tqdm.auto import tqdm

        with tqdm(total=len(data), desc="evaluate", unit="ex", file=sys.stderr, disable=not progress) as bar:
            if self.head:
                return {"accuracy": head_accuracy(model, self.collate, data, progress=bar)}
            if self.options.task == "classify":
                return {"accuracy": label_word_accuracy(model, self.tokenizer, self.definition, data, progress=bar)}
            return response_loss(model, self.tokenizer, self.definition, data, progress=bar)


class _TaskTrainer(transformers.Trainer):
    def __init__(self, *args, task: Task, booster: Booster | None, **kwargs):
        super().__init__(*args, **kwargs)
        self.task, self.booster = task, booster

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = self.task.loss(model, dict(inputs), self.booster)
        return (loss, None) if return_outputs else loss


class _MetricsLog(transformers.TrainerCallback):
    """Appends every Trainer log (loss, learning rate, ...) with its step and round to metrics.jsonl."""

    def __init__(self, path: Path, booster: Booster | None):
        self.path, self.booster = path, booster

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": state.global_step, "round": _round_of_step(self.booster, state.global_step),
                                    **logs}) + "\n")


def _round_of_step(booster: Booster | None, step: int) -> int:
    """The round that trained optimizer step ``step`` (1-based): after a round's last step the booster has
    already moved on to the next round, but that step belongs to the one it ended."""
    return booster.plan.round_at(max(step - 1, 0)) if booster is not None else 0  # full fine-tuning: one round


class _ValidationCurve(transformers.TrainerCallback):
    """Every ``every`` optimizer steps, the validation split's metric (e.g. ``validation_accuracy``) as a row of
    metrics.jsonl: the learning curve. Evaluation draws no random numbers, so training is unchanged by it."""

    def __init__(self, path: Path, booster: Booster | None, task: Task, model: nn.Module, data, every: int):
        self.path, self.booster, self.task, self.model, self.data, self.every = path, booster, task, model, data, every

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.global_step % self.every == 0:
            metrics = self.task.evaluate(self.model, self.data, progress=False)
            with self.path.open("a") as f:
                f.write(json.dumps({"step": state.global_step, "round": _round_of_step(self.booster, state.global_step),
                                    **{f"validation_{name}": value for name, value in metrics.items()}}) + "\n")


class _StopOnInterrupt(transformers.TrainerCallback):
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
        print("\nloraboost: interrupted; saving a checkpoint after this step (Ctrl-C again to abort) ...",
              file=sys.stderr)

    def on_step_end(self, args, state, control, **kwargs):
        if self.interrupted:
            control.should_save = True
            control.should_training_stop = True


class _Progress(transformers.TrainerCallback):
    """One progress bar with the recent loss and the live round, instead of a printed dict per step."""

    def __init__(self, booster: Booster | None, label: str):
        self.booster, self.label, self.bar, self.losses = booster, label, None, []

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=f"train {self.label}",
                            unit="step", file=sys.stderr)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:
            self.losses = (self.losses + [float(logs["loss"])])[-10:]

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            loss = f"{sum(self.losses) / len(self.losses):.3f}" if self.losses else "-"
            self.bar.set_postfix(loss=loss, round=_round_of_step(self.booster, state.global_step))
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
    """Bytes held in the optimizer's state tensors (Adam: two moments per parameter with a gradient)."""
    return sum(v.numel() * v.element_size() for state in optimizer.state.values()
               for v in state.values() if torch.is_tensor(v))


class _OptimizerStatePeak(transformers.TrainerCallback):
    """The largest optimizer state of the run, read right after each optimizer step (before a round
    change resets the finished booster's state)."""

    def __init__(self):
        self.peak = 0

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.peak = max(self.peak, optimizer_state_bytes(optimizer))


def prepare(options: RunOptions, boost: BoostConfig):
    """Load and check everything before any output is written; returns what training needs."""
    data = load_data(options.data)
    if options.task == "classify" and options.data in EMBEDDED:  # its own prompt and label words, unless given
        embedded = EMBEDDED[options.data]
        if options.label_words is None and embedded.label_words is not None:
            options.label_words = list(embedded.label_words)
        elif options.label_words is None and not is_encoder(model_folder(options.model)):
            raise ValueError(f"data {options.data!r} has no label words for a causal LM (its classes are not one-token "
                             "words); use an encoder such as --model minilm, or pass --label-words, one per sorted class.")
        if options.template is None:
            options.template = embedded.template
    columns = ({"text_column": options.text_column, "label_column": options.label_column} if options.task == "classify"
               else {"prompt_column": options.prompt_column, "response_column": options.response_column})
    require_columns(data, columns)
    sizes = {"train": options.train_size, "test": options.test_size}
    if options.validation_size:
        sizes["validation"] = options.validation_size
    raw_splits = sample_splits(data, sizes, options.seed)  # checked before the (slow) model load
    classes = None
    if options.task == "classify":
        classes = sorted(set(data[options.label_column]))
        if len(classes) < 2:
            raise ValueError(f"label_column={options.label_column!r} has a single class {classes}; "
                             "classification needs at least two.")
    # An encoder's new classification head is drawn from the global RNG: seed it, or a run is not repeatable.
    transformers.set_seed(options.seed)
    model, tokenizer = load_model(options.model, options.task, num_labels=len(classes) if classes else None)
    task = Task(options, tokenizer, classes, head=is_encoder(model_folder(options.model)))
    splits = {name: task.prepare(split) for name, split in raw_splits.items()}
    task.truncated = sum(task.count_truncated(split) for split in splits.values())
    if task.truncated:
        total = sum(len(split) for split in splits.values())
        print(f"loraboost: {task.truncated} of {total} examples are longer than max_length={options.max_length} "
              "tokens and are truncated (classification keeps the end of the prompt).", file=sys.stderr)
    return model, tokenizer, task, splits


def train(options: RunOptions, boost: BoostConfig) -> dict[str, Any]:
    """Run a fine-tune into ``options.output``; returns the summary (also saved as summary.json).

    Everything is checked before the first file is written (a bad input leaves no folder); ``--resume``
    continues from the newest complete checkpoint with the run's own settings; ``--overwrite`` trains the new
    run beside the old one and swaps it in only once it is finished, so a failure never loses the old run.
    """
    out = Path(options.output)
    check_output(out, options.overwrite, options.resume)
    model, tokenizer, task, splits = prepare(options, boost)
    if task.head and boost.modules_to_save is None:
        # The new classification head trains in every round and is saved with the adapter.
        boost = dataclasses.replace(boost, modules_to_save=[head_module_name(model)])
    staging = staging_folder(out)
    replacing = options.overwrite and out.exists() and any(out.iterdir())
    resuming_staged = options.resume and options.overwrite and is_run(staging)
    work = staging if (replacing and not options.resume) or resuming_staged else out
    if options.resume:
        check_same_settings(work, asdict(options), boost.to_dict())
    # Full fine-tuning (a baseline) trains every weight of the model itself: no booster, no rounds.
    # A Booster checks its targets and layer counts on the model, before any file is written.
    booster = None if options.full_finetune else Booster(model, boost)
    method = "full" if booster is None else boost.method

    checkpoint = None
    if options.resume:
        checkpoint = newest_complete_checkpoint(work)
        trim_metrics(work, checkpoint_step(checkpoint) if checkpoint else 0)
    else:
        if work == staging and staging.exists():
            shutil.rmtree(staging)  # left by an overwrite that was killed; --resume --overwrite would continue it
        work.mkdir(parents=True, exist_ok=True)
        write_run_file(work, {"options": asdict(options), "boost": boost.to_dict()})

    args = transformers.TrainingArguments(
        output_dir=str(work), max_steps=options.max_steps, num_train_epochs=options.epochs,
        per_device_train_batch_size=options.batch_size, gradient_accumulation_steps=options.gradient_accumulation,
        learning_rate=options.learning_rate, lr_scheduler_type=options.lr_scheduler, warmup_steps=options.warmup_ratio,
        weight_decay=0.0, save_strategy="steps", save_steps=options.save_steps, logging_steps=1, seed=options.seed,
        data_seed=options.seed, report_to=options.report_to, remove_unused_columns=False, use_cpu=not torch.cuda.is_available(),
    )
    interrupt, optimizer_peak = _StopOnInterrupt(), _OptimizerStatePeak()
    callbacks = [_MetricsLog(work / METRICS, booster), interrupt, optimizer_peak]
    if booster is not None:
        callbacks.insert(0, BoostCallback(booster))
    if options.eval_steps:
        callbacks.append(_ValidationCurve(work / METRICS, booster, task, model if booster is None else booster.model,
                                          splits["validation"], options.eval_steps))
    callbacks.append(MarkCheckpointComplete())  # last: after the booster state is saved
    trainer = _TaskTrainer(model=model if booster is None else booster.model, args=args, train_dataset=splits["train"],
                           data_collator=task.collate, callbacks=callbacks, task=task, booster=booster)
    # Every step is logged to metrics.jsonl; the console gets one bar instead of a printed dict per step.
    trainer.remove_callback(transformers.trainer_callback.ProgressCallback)
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    trainer.add_callback(_Progress(booster, f"{method} seed {options.seed}"))
    start = time.perf_counter()
    with PeakMemory() as memory:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if interrupt.interrupted:
        where = f"continue with --resume --output {out}"
        if work == staging:
            where = f"the old run in {out} is untouched; continue the new one with --resume --overwrite --output {out}"
        raise KeyboardInterrupt(f"stopped at step {trainer.state.global_step}; {where}")
    seconds = time.perf_counter() - start
    if booster is None:
        trained = model
        _save_model(model, tokenizer, work / FULL_MODEL)
        trainable = live = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rounds = 0
    else:
        trained = booster.model
        booster.save_state(work / STATE)
        booster.save_adapter(work / "adapter", overwrite=True)
        trainable = sum(p.numel() for p in booster.parameters())
        live = (sum(p.numel() for s in booster.live_slots for p in (s.A, s.B) if p.requires_grad)
                + sum(p.numel() for _, p in extra_trainables(booster)))  # e.g. a classifier head
        rounds = len(booster.ledger)
    metrics = {name: task.evaluate(trained, split) for name, split in splits.items() if name != "train"}
    summary = {
        "method": method, "seed": options.seed, "steps": trainer.state.global_step, "rounds_merged": rounds,
        "trainable_parameters": trainable, "live_trainable_parameters": live,
        "optimizer_state_bytes": optimizer_peak.peak,
        "peak_memory_bytes": memory.peak, "train_seconds": seconds, "truncated_examples": task.truncated,
        "metrics": metrics,
    }
    if memory.gpu_peak is not None:
        summary["peak_gpu_memory_bytes"] = memory.gpu_peak
    with atomic_file(work / FINISHED) as finished:
        finished.write_text(json.dumps(summary, indent=1))
    if work == staging:
        swap_in(staging, out)
    return summary


def load_run(folder: str | Path) -> tuple[RunOptions, BoostConfig, Booster, Any, Task, dict]:
    """A finished run rebuilt: its options, config, booster (final state loaded), tokenizer, task, splits."""
    folder = Path(folder)
    if not (folder / FINISHED).exists():
        raise ValueError(f"{str(folder)!r} is not a finished loraboost run (no {FINISHED}); train one with loraboost train.")
    saved = json.loads((folder / RUN_FILE).read_text())
    options, boost = RunOptions(**saved["options"]), BoostConfig.from_dict(saved["boost"])
    if options.full_finetune:
        raise ValueError(f"{str(folder)!r} is a full fine-tuning run, which has no booster; its model is the plain "
                         f"transformers folder {str(folder / FULL_MODEL)!r}.")
    model, tokenizer, task, splits = prepare(options, boost)
    booster = Booster(model, boost)
    booster.load_state(folder / STATE)
    return options, boost, booster, tokenizer, task, splits


def head_module_name(model: nn.Module) -> str:
    """The classification head of a sequence-classification model (``classifier`` for BERT, ``score`` else)."""
    for name in ("classifier", "score"):
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise ValueError(f"cannot find the classification head of {type(model).__name__}; set modules_to_save to its name.")


@torch.no_grad()
def head_accuracy(model: nn.Module, collate, data, batch_size: int = 32, progress=None) -> float:
    """Share of examples whose gold class has the largest logit of the classification head."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(data), batch_size):
        inputs = collate([data[i] for i in range(start, min(start + batch_size, len(data)))])
        labels = inputs.pop("labels")
        correct += int((model(**to_model_device(model, inputs)).logits.argmax(-1).cpu() == labels).sum())
        if progress is not None:
            progress.update(len(labels))
    model.train(was_training)
    return correct / len(data)


def _save_model(model: nn.Module, tokenizer, folder: Path) -> None:
    """Save a plain transformers folder atomically (full fine-tuning's output)."""
    with atomic_folder(folder, overwrite=True) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

