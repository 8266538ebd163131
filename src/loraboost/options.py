"""RunOptions: everything a run needs besides its BoostConfig (model, data, task, splits, Trainer settings,
the run folder), each field a CLI flag and a YAML key, checked when it is built."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

TASKS = ("classify", "sft", "lm")  # task_kinds.TASK_KINDS holds each one

DEFAULT_SPLITS = {"train": 1000, "test": 500}  # COLA's protocol, where the data has room for it
DEFAULT_MAX_LENGTH = 128
TEST_SHARE = 0.2  # of a data set too small for DEFAULT_SPLITS, held out for test


@dataclass
class RunOptions:
    """Everything a run needs besides the BoostConfig; every field is a CLI option and a YAML key.

    Args:
        model: 'default' (the embedded SmolLM2-135M-Instruct), 'minilm' (the embedded all-MiniLM-L6-v2),
            or a local model folder.
        data: an embedded data set ('default' = 'movie-reviews', 'trec', 'trec-fine', 'word-valence';
            'movie-dialog' for sft), a .csv/.tsv/.jsonl/.json/.parquet file, or a hub data set name.
        task: classify (by label words, or an encoder's head), sft (prompt -> response, or a conversation) or lm
            (continued pre-training on raw text: a text column, or text files by path, folder or glob).
        text_column: the column with the text to classify.
        label_column: the column with each row's class.
        prompt_column: the column with the prompt (sft).
        response_column: the column with the response to learn (sft).
        messages_column: sft on conversations: the column of role/content turns, trained with the tokenizer's chat
            template and loss on the assistant's turns only (instead of prompt and response columns).
        block_size: lm: tokens per training block (documents are joined by EOS and packed).
        forget_data: another data set read like --data (same task and columns), scored after training as the
            split 'forget' (test_size of its rows, sampled with the seed): what the model lost elsewhere, e.g.
            general text beside a code corpus.
        template: the prompt template, with {text} (classify) or {prompt} (sft); an embedded set brings its own.
        label_words: one word per class, comma-separated, in the order of the sorted labels.
        train_size: training examples, sampled with the seed (default 1000, or what a small data set leaves).
        validation_size: validation examples (default 0: none).
        test_size: test examples (default 500, or a fifth of a data set too small for 1000 + 500).
        max_length: tokens per example; longer ones are truncated (and counted). Default 128, or the model's
            context where it is shorter.
        max_steps: optimizer steps; -1 to train for --epochs instead.
        epochs: passes over the training split (when max_steps is -1).
        batch_size: examples per device per step.
        gradient_accumulation: micro-batches per optimizer step.
        learning_rate: the peak learning rate (default: the method's, e.g. 1e-2 for xgblora, 3e-3 for lora, 1e-4
            for full).
        lr_scheduler: the Trainer's schedule: linear, cosine, constant, ...
        loraplus_lr_ratio: LoRA+ (Hayou et al. 2024): B's learning rate is this many times A's (PEFT's
            create_loraplus_optimizer); None: one rate for both. Only for arms that train adapters.
        warmup_ratio: share of the steps spent warming up.
        save_steps: write a resumable checkpoint every this many steps.
        seed: seeds the splits, the data order, the new head and the booster's plan and initialisations.
        split_seed: seeds only the splits (train, validation, test and forget samples) when set: runs with different
            seeds then train and score on the same examples, so their spread is the training's alone.
        output: the run folder (run.json, metrics.jsonl, checkpoints, adapter/, summary.json).
        overwrite: replace a finished run in --output (the old one stays until the new one finishes).
        resume: continue the run in --output from its newest complete checkpoint.
        report_to: loggers for the Trainer, comma-separated (e.g. tensorboard).
        eval_steps: score the validation split every N steps into metrics.jsonl (the learning curve); 0: only
            at the end.
    """

    model: str = "default"
    data: str = "default"
    task: str = "classify"
    text_column: str = "text"
    label_column: str = "label"
    prompt_column: str = "prompt"
    response_column: str = "response"
    messages_column: str | None = None
    block_size: int = 128
    forget_data: str | None = None
    template: str | None = None
    label_words: list[str] | None = None
    train_size: int | None = None  # None: DEFAULT_SPLITS, or what fits the data (fit_splits)
    validation_size: int = 0
    test_size: int | None = None
    max_length: int | None = None  # None: DEFAULT_MAX_LENGTH, or the model's context where shorter
    max_steps: int = -1
    epochs: float = 1.0
    batch_size: int = 16
    gradient_accumulation: int = 1
    learning_rate: float | None = None  # None: the arm's own (arms.ARMS)
    lr_scheduler: str = "linear"
    loraplus_lr_ratio: float | None = None
    warmup_ratio: float = 0.05
    save_steps: int = 100
    seed: int = 0
    split_seed: int | None = None  # None: the seed
    output: str = "runs/run"
    overwrite: bool = False
    resume: bool = False
    report_to: list[str] = field(default_factory=list)
    eval_steps: int = 0

    @property
    def splits_seed(self) -> int:
        """The seed the splits are sampled with."""
        return self.seed if self.split_seed is None else self.split_seed

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r} is not valid; use one of {', '.join(TASKS)}.")
        for name in (
            "train_size",
            "test_size",
            "batch_size",
            "gradient_accumulation",
            "save_steps",
            "max_length",
            "block_size",
        ):
            value = getattr(self, name)
            if value is None and name in ("train_size", "test_size", "max_length"):
                continue  # fitted to the data, or to the model
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} is not valid; use an integer >= 1.")
        if isinstance(self.eval_steps, bool) or not isinstance(self.eval_steps, int) or self.eval_steps < 0:
            raise ValueError(
                f"eval_steps={self.eval_steps!r} is not valid; use a step count >= 1, or 0 to score only at the end."
            )
        if self.eval_steps and not self.validation_size:
            raise ValueError(
                f"eval_steps={self.eval_steps} needs a validation split to score; pass --validation-size N as well."
            )
        steps = self.max_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps != -1 and steps < 1:
            raise ValueError(f"max_steps={steps!r} is not valid; use a step count >= 1, or -1 to train for --epochs.")
        lr = self.learning_rate
        if lr is not None and not (_is_number(lr) and 0 < lr < math.inf):
            raise ValueError(f"learning_rate={self.learning_rate!r} is not valid; use a positive finite number.")
        if not (_is_number(self.epochs) and 0 < self.epochs < math.inf):
            raise ValueError(f"epochs={self.epochs!r} is not valid; use a positive number of passes (e.g. 1 or 0.5).")
        ratio = self.loraplus_lr_ratio
        if ratio is not None and not (_is_number(ratio) and math.isfinite(ratio) and ratio >= 1):
            raise ValueError(
                f"loraplus_lr_ratio={ratio!r} is not valid; use a number >= 1 (B's rate over A's), or None."
            )
        if not (_is_number(self.warmup_ratio) and 0 <= self.warmup_ratio < 1):
            raise ValueError(
                f"warmup_ratio={self.warmup_ratio!r} is not valid; use a share of the steps from 0 up to (not "
                "including) 1, e.g. 0.05."
            )
        for name in ("validation_size", "seed", "split_seed"):
            value = getattr(self, name)
            if value is None and name == "split_seed":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r} is not valid; use a whole number >= 0.")
        for name in ("model", "data", "text_column", "label_column", "prompt_column", "response_column", "output"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name}={value!r} is not valid; give it as non-empty text.")
        if self.messages_column is not None and (not isinstance(self.messages_column, str) or self.task != "sft"):
            raise ValueError(
                f"messages_column={self.messages_column!r} applies to --task sft, with a column name; drop it or "
                "pass --task sft."
            )
        if self.forget_data is not None and (not isinstance(self.forget_data, str) or not self.forget_data.strip()):
            raise ValueError(f"forget_data={self.forget_data!r} is not valid; name a data set as for --data.")
        if self.template is not None and not isinstance(self.template, str):
            raise ValueError(f"template={self.template!r} is not valid; give it as text.")
        from transformers.trainer_utils import SchedulerType  # here, not on import: the CLI loads libraries late

        schedules = [s.value for s in SchedulerType]
        if self.lr_scheduler not in schedules:
            raise ValueError(f"lr_scheduler={self.lr_scheduler!r} is not valid; use one of {', '.join(schedules)}.")
        self.report_to = [self.report_to] if isinstance(self.report_to, str) else list(self.report_to or [])
        from transformers.integrations import get_available_reporting_integrations

        available = get_available_reporting_integrations()
        for name in self.report_to:
            if name not in available:
                shown = ", ".join(available) or "none is installed"
                raise ValueError(
                    f"report_to={name!r} is not an installed logger; use one of: {shown} (e.g. tensorboard)."
                )


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def fit_splits(options: RunOptions, rows: int) -> dict[str, int]:
    """The split sizes of a run on ``rows`` examples: those given, and for those not given the defaults
    (1000 train, 500 test) when they fit beside the rest, else a fifth of the data for test and the rest,
    up to 1000, for training."""
    validation = options.validation_size
    test = options.test_size
    if test is None:
        room = rows - validation - (options.train_size or DEFAULT_SPLITS["train"])
        test = DEFAULT_SPLITS["test"] if room >= DEFAULT_SPLITS["test"] else max(1, int(rows * TEST_SHARE))
    train = options.train_size
    if train is None:
        train = max(1, min(DEFAULT_SPLITS["train"], rows - validation - test))
    sizes = {"train": train, "test": test}
    if validation:
        sizes["validation"] = validation
    return sizes
