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
from .checkpoint import STATE_FILE
from .config import BoostConfig
from .options import RunOptions

RUN_FILE = "run.json"  # the resolved options, written when a run starts
FINISHED = "summary.json"  # written last: a folder without it is not a finished run
METRICS = "metrics.jsonl"
STATE = "booster_state.safetensors"  # the final booster state (Booster.save_state)
FULL_MODEL = "model"  # where a full fine-tuning run saves its model
TRAINER_STATE = "trainer_state.json"  # the Trainer's own record in each checkpoint: global_step, max_steps
CHECKPOINT_DONE = "loraboost_checkpoint.json"  # written last into a checkpoint: without it, it is incomplete
# Options that may change when a run is resumed: they do not change what it trains (a run folder may move).
RESUMABLE_CHANGES = frozenset({"output", "resume", "overwrite", "report_to", "save_steps", "eval_steps"})


def is_run(folder: Path) -> bool:
    return (folder / RUN_FILE).exists() or (folder / FINISHED).exists()


def run_holding(path: Path) -> Path | None:
    """The run folder that is ``path`` or holds it somewhere below, if any."""
    path = path.resolve()
    return next((folder for folder in (path, *path.parents) if folder.is_dir() and is_run(folder)), None)


def check_not_run_files(target: Path, what: str, allowed: tuple[str, ...] = ()) -> None:
    """Refuse a command's output that is a run folder or lies inside one (only train writes there), except the
    names in ``allowed`` directly inside the run (eval's eval*.json, export's repair of RUN/adapter)."""
    run = run_holding(target)
    if run is None:
        return
    inside = target.resolve().relative_to(run)
    if len(inside.parts) == 1 and any(inside.match(pattern) for pattern in allowed):
        return
    raise ValueError(
        f"{what} {str(target)!r} is {'the' if not inside.parts else 'inside the'} run folder {str(run)!r}, whose "
        "files only train writes; choose a path outside it."
    )


def is_finished(folder: Path) -> bool:
    return (folder / FINISHED).exists()


def staging_folder(out: Path) -> Path:
    """Where ``--overwrite`` trains the new run, beside the old one, until it is finished."""
    return out.with_name(f".{out.name}.overwrite")


def foreign_entries(folder: Path) -> list[str]:
    """What a folder holds that loraboost did not write into a run (its files, checkpoints, eval outputs and the
    reporters' logs): a folder with any is not ours to replace."""
    ours = {RUN_FILE, FINISHED, METRICS, STATE, FULL_MODEL, "adapter", "runs", "ran_as.txt"}
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.name not in ours
        and checkpoint_step(p) is None
        and not (p.name.startswith("eval") and p.suffix == ".json")
        and not p.name.startswith(".")  # atomic writes' staging files
    )


def check_output(out: Path, overwrite: bool, resume: bool) -> None:
    """Refuse, before any model is loaded, an output that is a file, sits where nothing can be written, holds
    something the flags do not allow to touch (a folder of the user's own files, whatever the flags say), or a
    ``--resume`` with nothing to resume."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {str(out)!r} is a file, not a folder; choose a folder path for the run.")
    under = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if under is not None:
        raise ValueError(f"output {str(out)!r} lies under the file {str(under)!r}; choose a folder path.")
    _check_writable(out)
    holds_files = out.is_dir() and any(out.iterdir())
    if holds_files and not is_run(out):
        raise ValueError(
            f"output folder {str(out)!r} holds files that are not a loraboost run, which loraboost never replaces; "
            "choose a new or empty folder."
        )
    if holds_files and foreign_entries(out) and (overwrite or not resume):
        raise ValueError(
            f"output folder {str(out)!r} holds a run and also {foreign_entries(out)[0]!r}, which loraboost did not "
            "write and never deletes; move it out, or choose another --output."
        )
    if holds_files and not (overwrite or resume):
        raise ValueError(
            f"output folder {str(out)!r} already holds a run; pass --overwrite to replace it or "
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


def final_step(checkpoint: Path) -> int | None:
    """The step of a checkpoint written at its run's last step (a kill came during the final outputs), else None."""
    state = json.loads((checkpoint / TRAINER_STATE).read_text())
    return state["global_step"] if state["global_step"] >= state["max_steps"] > 0 else None


def restore_final_checkpoint(checkpoint: Path, model, booster) -> None:
    """Load the state a run ended with from its last checkpoint: the booster's, or the model's own weights."""
    if booster is not None:
        booster.load_state(checkpoint / STATE_FILE)
        return
    from safetensors.torch import load_file

    weights = {}
    for file in sorted(checkpoint.glob("model*.safetensors")):
        weights.update(load_file(file))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {name for name, p in model.named_parameters(remove_duplicate=False)} - {
        name for name, p in model.named_parameters()
    }
    if unexpected or set(missing) - tied:
        raise ValueError(
            f"checkpoint {str(checkpoint)!r} does not hold this model's weights (e.g. {(unexpected or missing)[0]!r}); "
            "pass --overwrite without --resume to train the run again."
        )


def absolute_paths(options: RunOptions) -> dict[str, str]:
    """The data and model of a run as absolute paths where they are files or folders here (embedded names stay),
    so that run.json reads the same from any working directory."""
    from .data import EMBEDDED
    from .models import EMBEDDED_MODELS

    changes = {}
    for name, embedded in (("data", EMBEDDED), ("forget_data", EMBEDDED), ("model", EMBEDDED_MODELS)):
        value = getattr(options, name)
        if value is not None and value not in embedded and Path(value).exists():
            changes[name] = str(Path(value).resolve())
    return changes


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
