"""Which modules of a model carry boosters, and which block (layer) each one sits in.
Resolves target_modules with PEFT's semantics and explains in one sentence when nothing fits."""

from __future__ import annotations

import re
from collections.abc import Sequence

from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.constants import EMBEDDING_LAYER_NAMES, TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn
from transformers.pytorch_utils import Conv1D

LINEAR_TYPES = (nn.Linear, Conv1D)
ALL_LAYERS = "all"  # the one group used when every round covers every block


def refuse_existing_adapters(model: nn.Module) -> None:
    """Raise when ``model`` already carries PEFT adapters: a Booster must own every adapter it trains."""
    if any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        raise ValueError(
            "the model already carries PEFT adapters; pass the plain base model to Booster "
            "(for a PeftModel, use peft_model.merge_and_unload() or the model before get_peft_model)."
        )


def refuse_partitioned_parameters(model: nn.Module) -> None:
    """Raise for DeepSpeed ZeRO-3 partitioned weights: a merge needs each weight (or an FSDP2 shard of it)."""
    if any(hasattr(p, "ds_id") for p in model.parameters()):
        raise ValueError(
            "the model's weights are partitioned by DeepSpeed ZeRO-3, which loraboost does not support; "
            "use DDP, or FSDP2 (torch.distributed.fsdp.fully_shard after creating the Booster)."
        )


def linear_module_names(model: nn.Module) -> list[str]:
    """Names of every nn.Linear and GPT-2 Conv1D in ``model``, in model order."""
    return [name for name, module in model.named_modules() if isinstance(module, LINEAR_TYPES)]


def resolve_targets(
    model: nn.Module, target_modules: str | Sequence[str] | None, layers_pattern: str | None = None
) -> list[str]:
    """Full names of the linear modules that ``target_modules`` selects.

    ``None`` takes PEFT's default for the architecture; ``"all-linear"`` takes every linear module
    inside the transformer blocks (so neither the LM head nor a classifier head); a list matches names
    equal to an entry or ending in ``"." + entry``; any other string is a regular expression that
    must match the whole name.
    """
    linear = linear_module_names(model)
    if target_modules is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
            raise ValueError(
                f"there is no default target_modules for model type {model_type!r}; set target_modules, "
                f"e.g. 'all-linear' or some of {_short_names(linear)}."
            )
        target_modules = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type]
    if target_modules == "all-linear":
        in_blocks = [n for n in linear if layer_key(model, n, layers_pattern) is not None]
        chosen = in_blocks or _without_output_layer(model, linear)
    elif isinstance(target_modules, str):
        chosen = [n for n in linear if re.fullmatch(target_modules, n)]
    else:
        chosen = [n for n in linear if any(n == t or n.endswith("." + t) for t in target_modules)]
    if not chosen:
        raise ValueError(
            f"target_modules={target_modules!r} matches no linear module of this model; "
            f"its linear modules are {_short_names(linear)}."
        )
    return chosen


def check_modules_to_save(model: nn.Module, targets: Sequence[str], names: Sequence[str] | None) -> None:
    """Each of ``modules_to_save`` names modules of the model (PEFT's matching: the name or its last parts) that
    hold no target module: a whole block trained and saved beside its own boosters cannot work."""
    modules = [name for name, _ in model.named_modules() if name]
    for entry in names or ():
        matched = [n for n in modules if n == entry or n.endswith("." + entry)]
        if not matched:
            raise ValueError(
                f"modules_to_save entry {entry!r} names no module of this model; name a head such as 'score'."
            )
        holding = next((t for t in targets for m in matched if t.startswith(m + ".")), None)
        if holding:
            raise ValueError(
                f"modules_to_save entry {entry!r} holds the target module {holding!r}; name a module outside the "
                "boosters' targets, such as a classification head."
            )
    embeddings = tied_input_embeddings(model, names)
    if embeddings is not None and embeddings.rsplit(".", 1)[-1] not in EMBEDDING_LAYER_NAMES:
        raise ValueError(
            f"modules_to_save names the input embeddings {embeddings!r}, which share their weight with the output "
            f"head, and PEFT can train one copy for both only in modules named {EMBEDDING_LAYER_NAMES}; leave "
            "them out of modules_to_save, or untie the head from them first."
        )


def tied_input_embeddings(model: nn.Module, names: Sequence[str] | None) -> str | None:
    """The name of the input embeddings when ``modules_to_save`` names them and the output head shares their weight,
    else None. PEFT must then train one copy for both (its ``ensure_weight_tying``): otherwise the head keeps the old
    weight while training, and a merged model saved with tied weights reloads with the new one in the head as well."""
    embeddings = model.get_input_embeddings() if names and hasattr(model, "get_input_embeddings") else None
    head = model.get_output_embeddings() if embeddings is not None and hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "weight", None) is not getattr(embeddings, "weight", None):
        return None
    name = next(n for n, module in model.named_modules() if module is embeddings)
    return name if any(name == entry or name.endswith("." + entry) for entry in names) else None


def check_rank(model: nn.Module, targets: Sequence[str], rank: int) -> None:
    """Refuse a rank above the smaller side of some target: it adds no expressiveness there, only memory
    (a rank of 100000 would allocate gigabytes before the first step)."""
    sizes = {}
    for name in targets:
        module = model.get_submodule(name)
        if hasattr(module, "in_features"):
            sizes[name] = min(module.in_features, module.out_features)
        else:  # GPT-2's Conv1D: weight (in, out)
            sizes[name] = min(module.weight.shape)
    name = min(sizes, key=sizes.get)
    if rank > sizes[name]:
        raise ValueError(
            f"rank={rank} is larger than {name.rsplit('.', 1)[-1]}'s smaller side ({sizes[name]}), where a "
            f"booster cannot use it; use a rank of at most {sizes[name]}."
        )


def layer_key(model: nn.Module, name: str, layers_pattern: str | None = None) -> str | None:
    """The block a module sits in, as ``"<container>.<index>"`` (e.g. ``model.layers.3``), or None.

    The block is the outermost numbered child of a ModuleList on the module's path; with
    ``layers_pattern``, only a ModuleList of that name counts.
    """
    parts = name.split(".")
    for i in range(1, len(parts)):
        if not parts[i].isdigit():
            continue
        if layers_pattern is not None and parts[i - 1] != layers_pattern:
            continue
        if isinstance(model.get_submodule(".".join(parts[:i])), nn.ModuleList):
            return ".".join(parts[: i + 1])
    return None


def layer_keys_of(model: nn.Module, targets: Sequence[str], layers_pattern: str | None) -> dict[str, str]:
    """The block of every target module; raises a ValueError naming the first module without one."""
    keys = {}
    for name in targets:
        key = layer_key(model, name, layers_pattern)
        if key is None:
            hint = (
                f"no ModuleList named {layers_pattern!r} holds it"
                if layers_pattern
                else "it is not inside a numbered ModuleList of blocks"
            )
            raise ValueError(
                f"cannot tell which layer module {name!r} belongs to ({hint}); set layers_pattern to the name "
                "of the ModuleList that holds the blocks (e.g. 'layers' for Llama, 'h' for GPT-2, 'layer' for "
                "BERT), or leave this module out of target_modules."
            )
        keys[name] = key
    return keys


def _without_output_layer(model: nn.Module, names: list[str]) -> list[str]:
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [n for n in names if model.get_submodule(n) is not output]


def _short_names(names: Sequence[str]) -> list[str]:
    """Distinct last name parts (``q_proj``, ``c_attn``...), which is how users name targets."""
    return sorted({n.rsplit(".", 1)[-1] for n in names})
