"""A fine-tuning run on transformers' Trainer with BoostCallback, kept in a run folder: the resolved
options, per-step metrics, checkpoints, the final booster state, the exported adapter and a summary."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from .assets import default_model_dir
from .booster import Booster
from .config import BoostConfig
from .data import load_data, movie_reviews, require_columns, sample_splits
from .evaluate import LabelWordTask, ResponseTask, label_word_accuracy, response_loss
from .hf import BoostCallback

FINISHED = "summary.json"  # written last: a folder without it is not a finished run
STATE = "booster_state.safetensors"
TASKS = ("classify", "sft")
DEFAULT_TEMPLATE = {"classify": "{text}\nAnswer:", "sft": "{prompt}\n"}


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

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r} is not valid; use one of {', '.join(TASKS)}.")
        for name in ("train_size", "test_size", "batch_size", "gradient_accumulation", "save_steps", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is not valid; use an integer >= 1.")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise ValueError(f"learning_rate={self.learning_rate!r} is not valid; use a positive number.")


def is_run(folder: Path) -> bool:
    return (folder / "run.json").exists() or (folder / FINISHED).exists()


def load_model(name: str, task: str):
    """The model and tokenizer: ``default`` (the embedded SmolLM2-135M-Instruct) or a local folder."""
    folder = default_model_dir() if name == "default" else Path(name)
    if not folder.is_dir():
        raise ValueError(
            f"model {name!r} is not a local folder, and no model hub is reachable offline; pass a folder "
            "saved with save_pretrained (or 'default' for the embedded SmolLM2-135M-Instruct)."
        )
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model, tokenizer


class Task:
    """Binds a task definition to its columns and tokenizer: collation for the Trainer, loss, metrics."""

    def __init__(self, options: RunOptions, tokenizer, data):
        self.options, self.tokenizer = options, tokenizer
        template = options.template or DEFAULT_TEMPLATE[options.task]
        if options.task == "classify":
            self.classes = sorted(set(data[options.label_column]))
            if len(self.classes) < 2:
                raise ValueError(f"label_column={options.label_column!r} has a single class {self.classes}; "
                                 "classification needs at least two.")
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

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        from datasets import Dataset

        batch = Dataset.from_list(rows)
        if self.options.task == "classify":
            inputs, labels = next(self.definition.batches(self.tokenizer, batch, len(rows)))
            inputs["labels"] = torch.tensor(self.label_ids)[labels]
            return inputs
        return next(self.definition.batches(self.tokenizer, batch, len(rows)))

    def loss(self, model: nn.Module, inputs: dict[str, torch.Tensor], booster: Booster) -> torch.Tensor:
        if self.options.task == "classify":
            targets = inputs.pop("labels")
            logits = model(**inputs, logits_to_keep=1).logits[:, -1, :].float()
            loss = nn.functional.cross_entropy(logits, targets)
            # The model computed no loss of its own, so the norm penalty's hook did not fire.
            return loss + booster.penalty().to(loss.device) if booster.config.norm_penalty > 0 else loss
        return model(**inputs).loss

    def evaluate(self, model: nn.Module, data) -> dict[str, float]:
        if self.options.task == "classify":
            return {"accuracy": label_word_accuracy(model, self.tokenizer, self.definition, data)}
        return response_loss(model, self.tokenizer, self.definition, data)


class _TaskTrainer(transformers.Trainer):
    def __init__(self, *args, task: Task, booster: Booster, **kwargs):
        super().__init__(*args, **kwargs)
        self.task, self.booster = task, booster

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = self.task.loss(model, dict(inputs), self.booster)
        return (loss, None) if return_outputs else loss


class _MetricsLog(transformers.TrainerCallback):
    """Appends every Trainer log (loss, learning rate, ...) with its step and round to metrics.jsonl."""

    def __init__(self, path: Path, booster: Booster):
        self.path, self.booster = path, booster

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": state.global_step, "round": self.booster.round, **logs}) + "\n")


def prepare(options: RunOptions, boost: BoostConfig):
    """Load and check everything before any output is written; returns what training needs."""
    if options.task == "classify" and options.data == "default":
        data = movie_reviews()
        if options.label_words is None:
            options.label_words = [" negative", " positive"]
        if options.template is None:
            options.template = "Review: {text}\nSentiment (positive or negative):"
    else:
        data = load_data(options.data)
    columns = ({"text_column": options.text_column, "label_column": options.label_column} if options.task == "classify"
               else {"prompt_column": options.prompt_column, "response_column": options.response_column})
    require_columns(data, columns)
    sizes = {"train": options.train_size, "test": options.test_size}
    if options.validation_size:
        sizes["validation"] = options.validation_size
    raw_splits = sample_splits(data, sizes, options.seed)  # checked before the (slow) model load
    model, tokenizer = load_model(options.model, options.task)
    task = Task(options, tokenizer, data)
    splits = {name: task.prepare(split) for name, split in raw_splits.items()}
    return model, tokenizer, task, splits


def train(options: RunOptions, boost: BoostConfig) -> dict[str, Any]:
    """Run a fine-tune into ``options.output``; returns the summary (also saved as summary.json)."""
    out = Path(options.output)
    if out.exists() and any(out.iterdir()) and not (options.overwrite or options.resume):
        what = "a run" if is_run(out) else "files"
        raise ValueError(f"output folder {str(out)!r} already holds {what}; pass --overwrite to replace it or "
                         "--resume to continue it.")
    if options.resume and not is_run(out):
        raise ValueError(f"--resume needs a run in {str(out)!r}, but there is none; drop --resume to start one.")
    model, tokenizer, task, splits = prepare(options, boost)
    if options.overwrite and out.exists() and not options.resume:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps({"options": asdict(options), "boost": boost.to_dict()}, indent=1))

    booster = Booster(model, boost)
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=options.max_steps, num_train_epochs=options.epochs,
        per_device_train_batch_size=options.batch_size, gradient_accumulation_steps=options.gradient_accumulation,
        learning_rate=options.learning_rate, lr_scheduler_type=options.lr_scheduler, warmup_steps=options.warmup_ratio,
        weight_decay=0.0, save_strategy="steps", save_steps=options.save_steps, logging_steps=1, seed=options.seed,
        data_seed=options.seed, report_to=options.report_to, remove_unused_columns=False, use_cpu=not torch.cuda.is_available(),
    )
    trainer = _TaskTrainer(model=booster.model, args=args, train_dataset=splits["train"], data_collator=task.collate,
                           callbacks=[BoostCallback(booster), _MetricsLog(out / "metrics.jsonl", booster)],
                           task=task, booster=booster)
    trainer.train(resume_from_checkpoint=True if options.resume and _has_checkpoint(out) else None)
    booster.save_state(out / STATE)
    booster.save_adapter(out / "adapter", overwrite=True)
    metrics = {name: task.evaluate(booster.model, split) for name, split in splits.items() if name != "train"}
    summary = {"method": boost.method, "steps": booster.global_step, "rounds_merged": len(booster.ledger),
               "trainable_parameters": sum(p.numel() for p in booster.parameters()), "metrics": metrics}
    (out / FINISHED).write_text(json.dumps(summary, indent=1))
    return summary


def load_run(folder: str | Path) -> tuple[RunOptions, BoostConfig, Booster, Any, Task, dict]:
    """A finished run rebuilt: its options, config, booster (final state loaded), tokenizer, task, splits."""
    folder = Path(folder)
    if not (folder / FINISHED).exists():
        raise ValueError(f"{str(folder)!r} is not a finished loraboost run (no {FINISHED}); train one with loraboost train.")
    saved = json.loads((folder / "run.json").read_text())
    options, boost = RunOptions(**saved["options"]), BoostConfig.from_dict(saved["boost"])
    model, tokenizer, task, splits = prepare(options, boost)
    booster = Booster(model, boost)
    booster.load_state(folder / STATE)
    return options, boost, booster, tokenizer, task, splits


def _has_checkpoint(folder: Path) -> bool:
    return any(p.name.startswith("checkpoint-") for p in folder.iterdir())
