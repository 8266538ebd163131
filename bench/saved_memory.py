"""Activation memory per arm, counted exactly: the bytes autograd keeps for the backward pass of a step.

A process's peak resident memory moves by more than the arms differ at SmolLM2-135M's size (bench/speed.py
saw XGBLoRA's at 1.99 and 2.10 GiB in two runs of one command), so this counts what the adapter method
decides instead: every tensor saved for backward during one forward pass (through
``torch.autograd.graph.saved_tensors_hooks``), each storage once, the model's parameters left out; plus
the trainable state (parameters, and a gradient and two Adam moments for each one the step trained).
The count does not depend on the machine's load. XGBLoRA's activations depend on the lowest block a
round adapts (the backward pass stops there), so it is counted for each of its first rounds' layer sets.

    python bench/saved_memory.py [--model default] [--batch 8] [--length 64] [--rounds 8]

Writes bench/results/saved-memory.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch
import transformers
from speed import ARMS, DTYPES, SETTINGS, build, real_batches

from loraboost import BoostConfig, Booster
from loraboost.models import model_folder


def saved_for_backward_bytes(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> int:
    """Run one forward and backward pass of ``model`` on ``batch`` and return the bytes of the storages
    autograd saved for the backward pass, parameters excluded. Leaves the gradients in place."""
    parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}  # storage address -> bytes; a saved tensor stays alive until backward

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(**batch).loss
    loss.backward()
    return sum(saved.values())


def trainable_state_bytes(model: torch.nn.Module) -> int:
    """After a backward pass: every trainable parameter, plus a gradient and AdamW's two moments for
    each one that got a gradient (XGBLoRA's idle boosters stay trainable but get none)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return sum(p.numel() * p.element_size() * (4 if p.grad is not None else 1) for p in trainable)


def lowest_block(booster: Booster) -> int:
    """The lowest block index the live round adapts."""
    return min(int(key.rsplit(".", 1)[-1]) for key in booster.plan.layers(booster.round))


def xgblora_by_round(model_dir: Path, batch: dict[str, torch.Tensor], rounds: int) -> list[dict]:
    """XGBLoRA's saved bytes in each of its first ``rounds`` rounds (one step per round: the layer sets
    are drawn per round index, so they are those of any round length)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=SETTINGS["dtype"])
    booster = Booster(model, BoostConfig(method="xgblora", steps_per_round=1))
    optimizer = torch.optim.AdamW(booster.parameters(), lr=1e-4)
    rows = []
    for _ in range(rounds):
        rows.append(
            {
                "round": booster.round,
                "lowest_block": lowest_block(booster),
                "saved_bytes": saved_for_backward_bytes(booster.model, batch),
            }
        )
        optimizer.step()
        booster.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="embedded model name or a local causal-LM folder")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=8, help="XGBLoRA rounds whose layer sets are counted")
    parser.add_argument("--out", default="bench/results/saved-memory.json")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    SETTINGS["dtype"] = DTYPES[args.dtype]
    model_dir = model_folder(args.model)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    examples = real_batches(tokenizer, 1, args.batch, args.length)  # ``batch`` rows of real text
    batch = {key: torch.stack([example[key] for example in examples]) for key in examples[0]}

    rows = []
    for arm in ARMS:
        print(f"saved_memory: {arm}", file=sys.stderr, flush=True)
        model, _ = build(arm, model_dir)
        rows.append(
            {
                "arm": arm,
                "saved_bytes": saved_for_backward_bytes(model, batch),
                "trainable_state_bytes": trainable_state_bytes(model),
            }
        )
        del model
    print("saved_memory: xgblora by round", file=sys.stderr, flush=True)
    by_round = xgblora_by_round(model_dir, batch, args.rounds)
    result = {
        "date": datetime.date.today().isoformat(),
        "command": "python bench/saved_memory.py " + " ".join(sys.argv[1:]),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "model": str(model_dir),
        "dtype": args.dtype,
        "batch": [args.batch, args.length],
        "rows": rows,
        "xgblora_by_round": by_round,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))

    mib = 2**20
    anchor = next(r for r in rows if r["arm"] == "peft-lora")
    print("| arm | saved for backward | trainable state (params, grads, Adam) | sum vs PEFT LoRA |\n|---|---|---|---|")
    for r in rows:
        total = r["saved_bytes"] + r["trainable_state_bytes"]
        print(
            f"| {r['arm']} | {r['saved_bytes'] / mib:.1f} MiB | {r['trainable_state_bytes'] / mib:.2f} MiB | "
            f"{total / (anchor['saved_bytes'] + anchor['trainable_state_bytes']):.3f} |"
        )
    print("\n| xgblora round | lowest block | saved for backward |\n|---|---|---|")
    for r in by_round:
        print(f"| {r['round']} | {r['lowest_block']} | {r['saved_bytes'] / mib:.1f} MiB |")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
