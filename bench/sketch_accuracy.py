"""How well does the one-pass gradient sketch find the gradient's top singular directions? On the capacity cell's
base and one 16 x 128 batch of its adaptation data, the share of the top-r gradient energy that the sketch's
r right singular vectors capture, per module kind, against the exact SVD (what GaLore projects on); and, at the
default oversampling, how much holding the layer inputs narrower (``sketch_input_dtype``) changes that share.

captured = ||G V_sketch||_F^2 / ||G V_exact||_F^2, 1 for the exact top-r right singular subspace.

    python bench/capacity_cell.py            # the base, once
    python bench/sketch_accuracy.py [--cell runs/capacity-cell] [--output bench/cpu-runs/DATE/sketch_accuracy.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch
import transformers

from loraboost.sketch import ModuleSketch, ScaledFloat8

RANKS, OVERSAMPLES = (1, 8, 32), (4, 16, 64)
# What the sketch reads back of an input held in each sketch_input_dtype.
HELD = {
    "float32": lambda x: x,
    "bfloat16": lambda x: x.to(torch.bfloat16).float(),
    "float8_e4m3fn": lambda x: ScaledFloat8(x).float(),
}


def one_batch_gradients(cell: Path, batch: int = 16, block: int = 128) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every block linear layer's input x and output gradient delta (tokens x in, tokens x out) on one batch."""
    model = transformers.AutoModelForCausalLM.from_pretrained(cell / "base")
    tokenizer = transformers.AutoTokenizer.from_pretrained(cell / "base")
    rows = [json.loads(line) for line in (cell / "adapt.jsonl").read_text().splitlines()[:60]]
    ids = tokenizer("\n".join(r["text"] for r in rows), return_tensors="pt")["input_ids"][0]
    ids = ids[: batch * block].reshape(batch, block)
    captured = {}

    def capture(name):
        def hook(module, args, output):
            x = args[0].detach().reshape(-1, args[0].shape[-1])
            output.register_hook(lambda d: captured.__setitem__(name, (x, d.detach().reshape(-1, d.shape[-1]))))

        return hook

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            module.register_forward_hook(capture(name))
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    return captured


def captured_energy(
    x: torch.Tensor, delta: torch.Tensor, rank: int, oversample: int, seed: int, held: str = "float32"
) -> float:
    gradient = delta.T.double() @ x.double()
    exact = torch.linalg.svd(gradient, full_matrices=False).Vh[:rank].T
    k = rank + oversample
    g = torch.Generator().manual_seed(seed)
    sketch = ModuleSketch(
        torch.randn(x.shape[1], k, generator=g),
        torch.randn(2 * k + 1, delta.shape[1], generator=g),
        torch.zeros(delta.shape[1], k),
        torch.zeros(2 * k + 1, x.shape[1]),
    )
    sketch.fold(HELD[held](x), delta)
    found = sketch.top(rank).right.double().T
    return float((gradient @ found).pow(2).sum() / (gradient @ exact).pow(2).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell", default="runs/capacity-cell", help="bench/capacity_cell.py's output")
    parser.add_argument("--output", default="runs/sketch_accuracy.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    gradients = one_batch_gradients(Path(args.cell))
    by_kind = defaultdict(list)
    for i, (name, (x, delta)) in enumerate(sorted(gradients.items())):
        kind = name.rsplit(".", 1)[-1]
        for rank in RANKS:
            for oversample in OVERSAMPLES:
                by_kind[kind, rank, oversample].append(captured_energy(x, delta, rank, oversample, seed=i))
    by_held = defaultdict(list)
    for i, (_, (x, delta)) in enumerate(sorted(gradients.items())):
        for rank in RANKS:
            for held in HELD:
                by_held[rank, held].append(captured_energy(x, delta, rank, OVERSAMPLES[0], seed=i, held=held))
    rows = [
        {"module": kind, "rank": rank, "oversample": over, "captured_mean": statistics.fmean(v), "min": min(v)}
        for (kind, rank, over), v in sorted(by_kind.items())
    ]
    held_rows = [
        {"rank": rank, "input_dtype": held, "oversample": OVERSAMPLES[0], "captured_mean": statistics.fmean(v),
         "min": min(v), "modules": len(v)}
        for (rank, held), v in sorted(by_held.items())
    ]  # fmt: skip
    print("| module (6 blocks) | rank | " + " | ".join(f"oversample {o}" for o in OVERSAMPLES) + " |")
    print("|---|---|" + "---|" * len(OVERSAMPLES))
    for kind in sorted({r["module"] for r in rows}):
        for rank in RANKS:
            cells = [next(r for r in rows if (r["module"], r["rank"], r["oversample"]) == (kind, rank, o)) for o in
                     OVERSAMPLES]  # fmt: skip
            print(f"| {kind} | {rank} | " + " | ".join(f"{c['captured_mean']:.3f} (min {c['min']:.3f})" for c in cells)
                  + " |")  # fmt: skip
    print("\n| rank | " + " | ".join(f"inputs held in {h}" for h in HELD) + " |  (every block weight, p = 4)")
    print("|---|" + "---|" * len(HELD))
    for rank in RANKS:
        cells = [next(r for r in held_rows if (r["rank"], r["input_dtype"]) == (rank, h)) for h in HELD]
        print(f"| {rank} | " + " | ".join(f"{c['captured_mean']:.4f} (min {c['min']:.4f})" for c in cells) + " |")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python bench/sketch_accuracy.py " + " ".join(sys.argv[1:])
    out.write_text(json.dumps({"command": command, "rows": rows, "rows_by_input_dtype": held_rows}, indent=1))
    print(out)


if __name__ == "__main__":
    main()
