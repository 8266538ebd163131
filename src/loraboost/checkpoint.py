"""A Booster's resumable state (ledger, live boosters, position in the plan) as a state dict and as
one safetensors file, and the checks a state must pass before a Booster replays it (Booster.load_state_dict)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import atomic_file
from .config import BoostConfig
from .merge import full_tensor
from .slot import BoosterSurface

STATE_FILE = "loraboost_state.safetensors"
# 2: each module's shape is its (out, in), not its weight's storage shape (a Conv1D's is (in, out), and a
# 4-bit weight's changes when bitsandbytes repacks it), so a format-1 state is refused with this message.
# 3: merge_residual="auto" rounds bf16/fp16 merges stochastically; in format 2 it kept a residual (now
# "residual"), and a format-2 state still replays that way.
FORMAT = 3
READABLE_FORMATS = (2, 3)


def booster_state(booster: BoosterSurface) -> dict[str, Any]:
    """``{"meta": JSON-able dict, "tensors": flat dict}``: everything needed to resume.

    The plan draws each round's layers and initial factors from generators seeded by (seed, round),
    so the step count (the round follows from it) is the whole of its random state. Merge residuals
    are not stored: replaying the ledger on load rebuilds them exactly; only a module whose ledger was folded
    (``fold_ledger``) has its merged weight and residual stored, since replaying the sum would round otherwise.
    """
    records, tensors = booster.ledger.to_state()
    for name, param in extra_trainables(booster):  # modules_to_save, e.g. a classification head
        tensors[f"trainable.{name}"] = full_tensor(param.detach()).cpu().clone()
    for slot in booster.slots:
        if slot.name in booster.ledger.folded:  # its weight as merged, which resuming restores instead of a replay
            tensors[f"merged.{slot.name}.weight"] = full_tensor(slot.base_weight.detach()).cpu().clone()
            residual = booster.residuals.get(slot.name)
            if residual is not None:
                tensors[f"merged.{slot.name}.residual"] = full_tensor(residual).cpu().clone()
        tensors[f"live.{slot.name}.A"] = full_tensor(slot.A.detach()).cpu().clone()
        tensors[f"live.{slot.name}.B"] = full_tensor(slot.B.detach()).cpu().clone()
    sketch_batches = {}
    if booster.sketcher is not None and booster.sketcher.armed:  # a checkpoint inside a sketched step window
        for name, sketch in booster.sketcher.sketches.items():
            tensors[f"sketch.{name}.Y"] = sketch.Y.detach().cpu().clone()
            tensors[f"sketch.{name}.Z"] = sketch.Z.detach().cpu().clone()
            sketch_batches[name] = sketch.batches
    meta = {
        "format": FORMAT,
        "chosen_layers": {str(r): list(layers) for r, layers in booster.chosen_layers.items()},
        "sketch_batches": sketch_batches,
        "config": booster.config.to_dict(),
        "model_class": type(booster.model.get_base_model()).__name__,
        "modules": {s.name: list(s.shape) for s in booster.slots},
        "global_step": booster.global_step,
        "total_steps": booster.plan.total_steps,
        "ledger": records,
    }
    return {"meta": meta, "tensors": tensors}


def save_state_file(booster: BoosterSurface, path: str | Path) -> Path:
    """Write the state to one safetensors file, atomically (a crash leaves the previous file intact)."""
    state = booster_state(booster)
    tensors = {k: v.contiguous() for k, v in state["tensors"].items()}
    with atomic_file(path) as staging:
        save_file(tensors, staging, metadata={"loraboost": json.dumps(state["meta"])})
    return Path(path)


def load_state_file(path: str | Path) -> dict[str, Any]:
    """Read a state file written by ``save_state_file``; a corrupt or truncated file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no loraboost state file at {path}.")
    try:
        tensors = load_file(path)
        with open(path, "rb") as f:
            header_size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_size))
        meta = json.loads(header["__metadata__"]["loraboost"])
    except (SafetensorError, ValueError, KeyError, OSError) as error:
        raise ValueError(f"{path} is not a readable loraboost state file (corrupt or truncated): {error}.") from error
    return {"meta": meta, "tensors": tensors}


def extra_trainables(booster: BoosterSurface) -> list[tuple[str, torch.nn.Parameter]]:
    """Trainable parameters that are not booster factors: ``modules_to_save`` copies such as a head."""
    factors = {id(p) for s in booster.slots for p in (s.A, s.B)}
    return [(n, p) for n, p in booster.model.named_parameters() if p.requires_grad and id(p) not in factors]


def merge_policy_of(meta: dict[str, Any], config: BoostConfig) -> str:
    """The merge policy the saved run used: its config's, except that "auto" meant "residual" in format 2."""
    if meta.get("format") == 2 and config.merge_residual == "auto":
        return "residual"
    return config.merge_residual


def check_compatible(booster: BoosterSurface, state: dict[str, Any]) -> None:
    """Raise a ValueError naming the first way ``state`` does not fit this fresh booster (format, model,
    config, modules, shapes); loading changes nothing before every check passed."""
    meta, tensors = state["meta"], state["tensors"]
    if meta.get("format") not in READABLE_FORMATS:
        raise ValueError(
            f"state format {meta.get('format')!r} is not supported; this loraboost reads formats "
            f"{', '.join(map(str, READABLE_FORMATS))}."
        )
    if booster.global_step != 0 or len(booster.ledger) != 0:
        raise ValueError(
            f"load_state_dict needs a fresh Booster on the original base model, but this one has taken "
            f"{booster.global_step} steps; build a new Booster and load into it."
        )
    model_class = type(booster.model.get_base_model()).__name__
    if meta["model_class"] != model_class:
        raise ValueError(f"the state is for a {meta['model_class']}, but this booster wraps a {model_class}.")
    saved = BoostConfig.from_dict(meta["config"]).to_dict()
    current = booster.config.to_dict()
    for field, value in saved.items():
        if current[field] != value:
            raise ValueError(
                f"the state was saved with {field}={value!r}, but this booster has {field}={current[field]!r}."
            )
    ours = {s.name: list(s.shape) for s in booster.slots}
    for name, shape in meta["modules"].items():
        if name not in ours:
            raise ValueError(f"the state has a booster on module {name!r}, which this booster does not target.")
        if ours[name] != shape:
            raise ValueError(f"module {name!r} has shape {tuple(ours[name])} here but {tuple(shape)} in the state.")
    missing = sorted(set(ours) - set(meta["modules"]))
    if missing:
        raise ValueError(f"this booster targets module {missing[0]!r}, which the state does not have.")
    for name, param in extra_trainables(booster):
        saved_tensor = tensors.get(f"trainable.{name}")
        if saved_tensor is None or saved_tensor.shape != param.shape:
            raise ValueError(
                f"the trained module parameter {name!r} is missing or misshapen in the state; "
                "it was saved with other modules_to_save or is truncated."
            )
    for slot in booster.slots:
        for factor, param in (("A", slot.A), ("B", slot.B)):
            saved_tensor = tensors.get(f"live.{slot.name}.{factor}")
            if saved_tensor is None or saved_tensor.shape != param.shape:
                raise ValueError(
                    f"the live factor {factor} of {slot.name!r} is missing or misshapen in the state; "
                    "the file is truncated or was written for another rank."
                )
