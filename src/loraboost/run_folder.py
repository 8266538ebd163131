"""The run folder on disk and the promises kept about it: checks before anything is written, an overwrite
that replaces the old run only once the new one is finished, and resume from the newest complete checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import transformers
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .arms import Arm, arm_of, get_arm
from .atomic import atomic_file
from .config import BoostConfig
from .options import RunOptions

RUN_FILE = "run.json"  # the resolved options, written when a run starts
FINISHED = "summary.json"  # written last: a folder without it is not a finished run
METRICS = "metrics.jsonl"
STATE = "booster_state.safetensors"  # the final booster state (Booster.save_state)
FULL_MODEL = "model"  # where a full fine-tuning run saves its model
CHECKPOINT_DONE = "loraboost_checkpoint.json"  # written last into a checkpoint: without it, it is incomplete
# Options that may change when a run is resumed: they do not change what it trains (a run folder may move).
RESUMABLE_CHANGES = frozenset({"output", "resume", "overwrite", "report_to", "save_steps", "eval_steps"})


def is_run(folder: Path) -> bool:
    return (folder / RUN_FILE).exists() or (folder / FINISHED).exists()


def is_finished(folder: Path) -> bool:
    return (folder / FINISHED).exists()


def staging_folder(out: Path) -> Path:
    """Where ``--overwrite`` trains the new run, beside the old one, until it is finished."""
    return out.with_name(f".{out.name}.overwrite")


def check_output(out: Path, overwrite: bool, resume: bool) -> None:
    """Refuse, before any model is loaded, an output that is a file, sits where nothing can be written, holds
    something the flags do not allow to touch, or a ``--resume`` with nothing to resume."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {str(out)!r} is a file, not a folder; choose a folder path for the run.")
    _check_writable(out)
    holds_files = out.is_dir() and any(out.iterdir())
    if holds_files and not (overwrite or resume):
        what = "a run" if is_run(out) else "files"
        raise ValueError(
            f"output folder {str(out)!r} already holds {what}; pass --overwrite to replace it or "
            "--resume to continue it."
        )
    if resume:
        if overwrite and is_run(staging_folder(out)):
            return  # an interrupted --overwrite run, continued beside the old one
        if not is_run(out):
            raise ValueError(f"--resume needs a run in {str(out)!r}, but there is none; drop --resume to start one.")
        if is_finished(out):
            raise ValueError(
                f"the run in {str(out)!r} is finished, so there is nothing to resume; pass --overwrite "
                "without --resume to train it again, or choose another --output."
            )


def _check_writable(out: Path) -> None:
    """Probe the nearest existing folder on the way to ``out`` with a real file (permission bits lie for root)."""
    existing = out if out.is_dir() else next((p for p in out.parents if p.is_dir()), Path("."))
    try:
        handle, probe = tempfile.mkstemp(prefix=".loraboost-probe-", dir=existing)
    except OSError as error:
        raise ValueError(
            f"cannot write into {str(existing)!r} ({error.strerror}); choose an --output where you can create files."
        ) from None
    os.close(handle)
    os.unlink(probe)


def check_same_settings(folder: Path, settings: dict[str, Any]) -> None:
    """``--resume`` continues a run with the settings it started with (``options``, ``arm``, ``boost`` as
    run.json keeps them): name the first one that differs."""
    saved = json.loads((folder / RUN_FILE).read_text())
    saved_options = dict(saved["options"])
    if "arm" not in saved:  # written before arms: the method was the booster's, or full fine-tuning
        full = saved_options.pop("full_finetune", False)
        saved["arm"] = {"name": "full" if full else (saved.get("boost") or {}).get("method")}
    if settings["arm"]["name"] != saved["arm"]["name"]:
        given, before = settings["arm"]["name"], saved["arm"]["name"]
        raise ValueError(
            f"--resume continues the run in {str(folder)!r} with its own settings, but --method {given} differs "
            f"from its {before}; drop --method, or pass --overwrite without --resume to start again."
        )
    pairs = [(k, v, saved_options.get(k)) for k, v in settings["options"].items() if k not in RESUMABLE_CHANGES]
    pairs += [(k, v, (saved.get("boost") or {}).get(k)) for k, v in (settings["boost"] or {}).items()]
    pairs += [(k, v, saved["arm"].get(k, v)) for k, v in settings["arm"].items()]
    for name, given, before in pairs:
        if _normal(given) != _normal(before):
            flag = "--" + name.replace("_", "-")
            raise ValueError(
                f"--resume continues the run in {str(folder)!r} with its own settings, but {name}="
                f"{given!r} differs from its {name}={before!r}; drop {flag}, or pass --overwrite "
                "without --resume to start again."
            )


def _normal(value: Any) -> Any:
    """A value as run.json stores it (tuples become lists)."""
    return json.loads(json.dumps(value))


def write_run_file(folder: Path, content: dict[str, Any]) -> None:
    with atomic_file(folder / RUN_FILE) as staging:
        staging.write_text(json.dumps(content, indent=1))


def checkpoint_step(path: Path) -> int | None:
    prefix = f"{PREFIX_CHECKPOINT_DIR}-"
    tail = path.name[len(prefix) :]
    return int(tail) if path.name.startswith(prefix) and tail.isdigit() else None


def newest_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint that was written to the end, after removing any that a kill cut short
    (they can never be resumed from, and the Trainer would otherwise pick the newest folder)."""
    checkpoints = sorted(
        (p for p in folder.iterdir() if p.is_dir() and checkpoint_step(p) is not None), key=checkpoint_step
    )
    complete = [p for p in checkpoints if (p / CHECKPOINT_DONE).is_file()]
    for partial in set(checkpoints) - set(complete):
        shutil.rmtree(partial)
    return complete[-1] if complete else None


def trim_metrics(folder: Path, last_step: int) -> None:
    """Drop the logged rows after ``last_step``: a resumed run logs those steps again."""
    path = folder / METRICS
    if not path.exists():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    kept = []
    for line in rows:
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (ValueError, KeyError):
            pass  # a line cut short by a kill
    with atomic_file(path) as staging:
        staging.write_text("".join(line + "\n" for line in kept))


def swap_in(staging: Path, out: Path) -> None:
    """Replace ``out`` by the finished run in ``staging``: the old run is moved aside first and removed last."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


class MarkCheckpointComplete(transformers.TrainerCallback):
    """Writes the marker that says a checkpoint folder is complete; it must run after every other callback's
    ``on_save`` (BoostCallback writes the booster state there)."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            with atomic_file(folder / CHECKPOINT_DONE) as staging:
                staging.write_text(json.dumps({"step": state.global_step}))


def saved_run(folder: Path) -> tuple[RunOptions, Arm, BoostConfig | None]:
    """A run folder's options, arm and BoostConfig (None without a booster), as run.json recorded them; a run
    written before arms existed names full fine-tuning by ``options.full_finetune`` and its method in ``boost``."""
    saved = json.loads((folder / RUN_FILE).read_text())
    options = dict(saved["options"])
    full = options.pop("full_finetune", False)
    boost = saved.get("boost")
    if "arm" in saved:
        arm = Arm.from_dict(saved["arm"])
    else:
        arm = get_arm("full") if full else arm_of(BoostConfig.from_dict(boost))
        boost = None if full else boost
    return RunOptions(**options), arm, BoostConfig.from_dict(boost) if boost else None
