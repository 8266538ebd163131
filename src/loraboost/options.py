"""RunOptions: everything a run needs besides its BoostConfig (model, data, task, splits, Trainer settings,
the run folder), each field a CLI flag and a YAML key, checked when it is built."""

from __future__ import annotations

from dataclasses import dataclass, field

TASKS = ("classify", "sft")


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
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise ValueError(f"learning_rate={self.learning_rate!r} is not valid; use a positive number.")
