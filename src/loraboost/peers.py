"""How an arm without a booster trains under transformers' Trainer: which weights train (all, or only the
blocks' linear ones), the optimizer peer's Trainer settings, and reading its state back on resume."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from .arms import Arm
from .targets import resolve_targets


def block_linear_weights(model: nn.Module) -> list[str]:
    """Parameter names of the weights of every linear module inside the blocks: what 'all-linear' adapters touch."""
    return [f"{name}.weight" for name in resolve_targets(model, "all-linear")]


def set_trainable(arm: Arm, model: nn.Module) -> None:
    """A ``blocks_only`` arm trains the blocks' linear weights alone; embeddings, norms, biases and heads freeze."""
    if not arm.blocks_only:
        return
    keep = set(block_linear_weights(model))
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in keep)


def training_arguments(arm: Arm, model: nn.Module) -> dict[str, Any]:
    """The TrainingArguments an arm adds: for a peer, its optimizer, settings and target modules (every nn.Linear
    inside the blocks, named exactly, as GaLore's and APOLLO's papers project the attention and MLP weights)."""
    if arm.peer is None:
        return {"optim": arm.optim}
    linear = [n for n in resolve_targets(model, "all-linear") if isinstance(model.get_submodule(n), nn.Linear)]
    if not linear:
        raise ValueError(
            f"--method {arm.name} projects the gradients of nn.Linear weights, and this model's blocks have none "
            "(GPT-2 keeps them in Conv1D); use a booster method or --method full."
        )
    allow_peer_checkpoints()
    return {
        "optim": arm.optim,
        "optim_args": ",".join(f"{key}={value}" for key, value in arm.optim_args.items()),
        "optim_target_modules": "|".join(re.escape(name) for name in linear),  # a regex matched in full
    }


def allow_peer_checkpoints() -> None:
    """Let the Trainer's ``torch.load(weights_only=True)`` read the peers' projector objects back from a
    checkpoint's optimizer state, so a GaLore or APOLLO run resumes (they are plain tensors and numbers)."""
    classes = []
    for module, names in (
        ("galore_torch.galore_projector", ("GaLoreProjector",)),
        ("apollo_torch.random_projector", ("GradientProjector",)),
        ("apollo_torch.svd_projector", ("GaLoreProjector",)),
    ):
        try:
            imported = __import__(module, fromlist=list(names))
        except ImportError:
            continue
        classes += [getattr(imported, name) for name in names if hasattr(imported, name)]
    torch.serialization.add_safe_globals(classes)
