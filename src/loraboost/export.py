"""Export what a Booster learned: one standard PEFT LoRA adapter (exact stack of every round, or
SVD-compressed to rank k) or a merged transformers model; loraboost.json records the provenance."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .atomic import atomic_folder
from .errors import first_line
from .merge import full_tensor, lora_delta
from .slot import BoosterSurface, Slot
from .version import __version__

PEFT_PREFIX = "base_model.model."


def learned_factors(booster: BoosterSurface, slot: Slot) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Everything ``slot``'s module learned as one LoRA (A: R x in, B: out x R, scales folded into B):
    the merged rounds from the ledger, then the live booster if it is non-zero. None if nothing."""
    parts = []
    stacked = booster.ledger.stacked(slot.name)
    if stacked is not None:
        parts.append(stacked)
    A, B = full_tensor(slot.A.detach()).float().cpu(), full_tensor(slot.B.detach()).float().cpu()
    if slot in booster.live_slots and A.count_nonzero() and B.count_nonzero():
        parts.append((A, B * booster.config.lora_scaling))
    if not parts:
        return None
    return torch.cat([a for a, _ in parts]), torch.cat([b for _, b in parts], dim=1)


def compress(A: torch.Tensor, B: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The best rank-``rank`` approximation of ``B @ A`` (truncated SVD) and its relative Frobenius error.

    Works on the R x R core of the two QR factors, never forming the full out x in matrix.
    """
    q_b, r_b = torch.linalg.qr(B.double())
    q_a, r_a = torch.linalg.qr(A.double().T)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T)
    k = min(rank, int(s.numel()))
    total = s.pow(2).sum()
    error = float((s[k:].pow(2).sum() / total).sqrt()) if total > 0 else 0.0
    B_k = (q_b @ u[:, :k]) * s[:k]
    A_k = (q_a @ vh[:k].T).T
    return A_k.float().contiguous(), B_k.float().contiguous(), error


def save_adapter(booster: BoosterSurface, path: str | Path, rank: int | None = None, overwrite: bool = False) -> Path:
    """Write everything learned so far as one PEFT LoRA adapter (see ``Booster.save_adapter``)."""
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank={rank!r} is not valid; use an integer >= 1, or None for the exact adapter.")
    factors, errors, squared_norms = {}, {}, {}
    for slot in booster.slots:
        learned = learned_factors(booster, slot)
        if learned is None:
            continue
        A, B = learned
        if rank is not None:
            squared_norms[slot.name] = float((B.double() @ A.double()).pow(2).sum())
            A, B, errors[slot.name] = compress(A, B, rank)
        factors[slot.name] = (A, B)
    if not factors:
        raise ValueError("the booster has learned nothing yet (no merged round and a zero live booster); train first.")

    ranks = {name: A.shape[0] for name, (A, _) in factors.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    # The scales are folded into B, so every module's LoRA scaling alpha / r must be exactly 1.
    pattern = {name: k for name, k in ranks.items() if k != r}
    base = booster.model.get_base_model()
    peft_config = booster.model.peft_config["default"]
    config = LoraConfig(
        r=r,
        lora_alpha=r,
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),
        target_modules=sorted(factors),
        lora_dropout=0.0,
        bias="none",
        fan_in_fan_out=peft_config.fan_in_fan_out,
        modules_to_save=peft_config.modules_to_save,
        ensure_weight_tying=peft_config.ensure_weight_tying,
        task_type=peft_config.task_type,
        base_model_name_or_path=getattr(base.config, "_name_or_path", None) or None,
    )
    tensors = {}
    for name, (A, B) in factors.items():
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = A.contiguous()
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = B.contiguous()
    for key, value in get_peft_model_state_dict(booster.model).items():
        if ".lora_A." not in key and ".lora_B." not in key:  # modules_to_save, e.g. a classifier head
            # A copy each: tied embeddings are one tensor under two names, which safetensors will not write.
            tensors[key] = value.detach().cpu().clone()

    record = {
        "loraboost_version": __version__,
        "method": booster.config.method,
        "config": booster.config.to_dict(),
        "global_step": booster.global_step,
        "rounds_merged": len(booster.ledger),
        "live_round": booster.round,
        "kind": "exact" if rank is None else "svd",
        "rank": rank,
        "module_ranks": ranks,
    }
    if rank is not None:
        record["relative_error"] = errors
        total = sum(squared_norms.values())
        record["total_relative_error"] = (
            (sum(errors[n] ** 2 * squared_norms[n] for n in errors) / total) ** 0.5 if total > 0 else 0.0
        )
    with atomic_folder(path, overwrite=overwrite) as staging:
        config.save_pretrained(staging)
        save_file(tensors, staging / "adapter_model.safetensors", metadata={"format": "pt"})
        (staging / "loraboost.json").write_text(json.dumps(record, indent=1))
    return Path(path)


def check_adapter_file(folder: str | Path) -> None:
    """Read every tensor of an exported adapter folder: a missing, truncated or corrupt file is a ValueError."""
    path = Path(folder) / "adapter_model.safetensors"
    if not path.is_file() or not (Path(folder) / "adapter_config.json").is_file():
        raise ValueError(f"the adapter {str(folder)!r} lacks adapter_model.safetensors or adapter_config.json")
    try:
        with safe_open(path, "pt") as f:
            for key in f.keys():
                f.get_tensor(key)
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"the adapter file {str(path)!r} is corrupt or truncated ({first_line(error)})") from None


def merged_state_dict(booster: BoosterSurface) -> dict[str, torch.Tensor]:
    """The base model's state dict with the live booster merged in and every PEFT wrapper removed."""
    base = booster.model.get_base_model()
    if any(hasattr(p, "device_mesh") for p in base.parameters()):
        raise ValueError(
            "save_merged needs the full weights, but this model is sharded (FSDP2); save_adapter works sharded, "
            "and the adapter merges into the original base with PeftModel.from_pretrained(...).merge_and_unload()."
        )
    if booster.side_paths:
        raise ValueError(
            "save_merged needs full-precision weights, but this base is quantized; use save_adapter and load it "
            "onto the full-precision original (PeftModel.from_pretrained(...).merge_and_unload())."
        )
    live = {s.name: s for s in booster.live_slots}
    slots = {s.name: s for s in booster.slots}
    out = {}
    for key, value in base.state_dict().items():
        if ".lora_" in key or ".original_module." in key:
            continue
        name = key.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
        tensor = value.detach().clone()
        module = name.rsplit(".", 1)[0]
        if name.endswith(".weight") and module in slots:
            # In fp32: the weight, what its residual holds back, and the live booster; rounded once.
            full = booster.merged_weight(slots[module])
            if module in live:
                slot = live[module]
                full = full + lora_delta(slot.A, slot.B, booster.config.lora_scaling, slot.fan_in_fan_out).to(
                    full.device
                )
            tensor = full.to(value.dtype)
        out[name] = tensor
    return out


def save_merged(booster: BoosterSurface, path: str | Path, tokenizer=None, overwrite: bool = False) -> Path:
    """Write a plain transformers model folder with every update merged (see ``Booster.save_merged``)."""
    base = booster.model.get_base_model()
    if not hasattr(base, "save_pretrained"):
        raise TypeError(f"save_merged needs a transformers model, got {type(base).__name__}; use save_adapter instead.")
    state = merged_state_dict(booster)
    with atomic_folder(path, overwrite=overwrite) as staging:
        base.save_pretrained(staging, state_dict=state)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        (staging / "loraboost.json").write_text(
            json.dumps(
                {
                    "loraboost_version": __version__,
                    "method": booster.config.method,
                    "config": booster.config.to_dict(),
                    "global_step": booster.global_step,
                    "rounds_merged": len(booster.ledger),
                    "kind": "merged",
                },
                indent=1,
            )
        )
    return Path(path)
