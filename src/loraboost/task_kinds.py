"""Every task kind by its ``--task`` name, and the one call that binds a kind to a run."""

from __future__ import annotations

from .options import TASKS
from .task import Task
from .task_classify import ClassifyTask
from .task_lm import LmTask
from .task_sft import SftTask

TASK_KINDS: dict[str, type[Task]] = {kind.name: kind for kind in (ClassifyTask, SftTask, LmTask)}
assert tuple(TASK_KINDS) == TASKS, "options.TASKS names every kind, in this order"


def task_kind(name: str) -> type[Task]:
    """The kind of ``--task name`` (RunOptions has already refused an unknown name)."""
    return TASK_KINDS[name]
