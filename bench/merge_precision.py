"""How much of 100 small rank-1 merges a bf16 base keeps: plain in-place bf16 adds against the fp32
residual (compensated) merges loraboost uses for bf16/fp16 weights and the same with a bf16 residual
(half the memory), on SmolLM2-135M's real weights;
and what the residual costs in memory for each preset's targets.

    python bench/merge_precision.py [--rounds 100] [--out bench/results/merge_precision.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from loraboost import BoostConfig, Booster
from loraboost.assets import default_model_dir
from loraboost.merge import add_delta_

MODULES = ["model.layers.0.self_attn.q_proj", "model.layers.10.mlp.down_proj", "model.layers.29.self_attn.o_proj"]


SCHEMES = {"plain bf16 add": None, "fp32 residual": torch.float32, "bf16 residual": torch.bfloat16}


def kept_share(weight_fp32: torch.Tensor, rounds: int, relative_size: float, scheme: str, seed: int) -> float:
    """1 - |held - exact| / |exact| after ``rounds`` rank-1 merges of per-element size ``relative_size``
    times the weight's mean magnitude, into a bf16 copy of the weight, with a residual of SCHEMES[scheme]."""
    g = torch.Generator().manual_seed(seed)
    weight = weight_fp32.to(torch.bfloat16)
    start = weight.double()
    residual_dtype = SCHEMES[scheme]
    residual = None if residual_dtype is None else torch.zeros_like(weight_fp32, dtype=residual_dtype)
    exact = torch.zeros_like(start)
    scale = relative_size * weight_fp32.abs().mean()
    for _ in range(rounds):
        a = torch.randn(1, weight.shape[1], generator=g)
        b = torch.randn(weight.shape[0], 1, generator=g)
        delta = b @ a
        delta *= scale / delta.abs().mean()
        exact += delta.double()
        add_delta_(weight, delta, residual)
    held = weight.double() + (0 if residual is None else residual.double()) - start
    return 1 - float((held - exact).norm() / exact.norm())


def residual_bytes(model_dir: Path) -> dict[str, int]:
    """fp32 residual bytes once every target of each preset has merged (4 bytes per weight element)."""
    out = {}
    for method in ("lora", "cola", "xgblora"):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
        booster = Booster(model, BoostConfig(method=method), total_steps=100)
        merges = booster.plan.round_end(0) is not None  # plain LoRA never merges: no residual
        out[method] = 4 * sum(s.base_weight.numel() for s in booster.slots) if merges else 0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--out", default="bench/results/merge_precision.json")
    args = parser.parse_args()
    model_dir = default_model_dir()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    weights = {name: model.get_submodule(name).weight.detach() for name in MODULES}
    bf16_bytes = 2 * sum(p.numel() for p in model.parameters())
    rows = []
    for size in (1e-3, 1e-4, 1e-5):
        for scheme in SCHEMES:
            kept = [kept_share(w, args.rounds, size, scheme, seed=i) for i, w in enumerate(weights.values())]
            rows.append(
                {"relative_size": size, "scheme": scheme, "kept_min": min(kept), "kept_mean": sum(kept) / len(kept)}
            )
    memory = residual_bytes(model_dir)
    report = {
        "rounds": args.rounds,
        "modules": MODULES,
        "rows": rows,
        "residual_bytes": memory,
        "model_bf16_bytes": bf16_bytes,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"{args.rounds} rank-1 merges into bf16 weights of SmolLM2-135M ({len(MODULES)} modules)")
    print(f"{'update size':>12} {'scheme':>16} {'kept (min)':>11} {'kept (mean)':>12}")
    for r in rows:
        print(f"{r['relative_size']:12.0e} {r['scheme']:>16} {r['kept_min']:11.6%} {r['kept_mean']:12.6%}")
    print(f"\nfp32 residual memory once every target merged (model in bf16: {bf16_bytes / 2**20:.0f} MiB):")
    for method, size in memory.items():
        print(f"  {method:8} {size / 2**20:7.1f} MiB  ({size / bf16_bytes:.0%} of the bf16 model)")


if __name__ == "__main__":
    main()
