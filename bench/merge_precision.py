"""How much of 100 small rank-1 merges a bf16 base keeps: plain in-place bf16 adds, stochastic rounding (the
default for bf16/fp16 weights: no residual, every merge kept in expectation), and the fp32 and bf16 residual
(compensated) merges, on SmolLM2-135M's real weights; what one merge takes under each; and what a residual
costs in memory for each preset's targets.

"kept" is 1 - |held - exact| / |exact| (rounding noise counts against it); "projected" is the held change
projected on the exact update, <held, exact> / |exact|^2, which is 1 when the update is kept on average; "noise"
is |held - exact| over the error of storing the weight in bf16 once, |bf16(W) - W|: how the rounding error left
after the merges compares with what a bf16 model carries anyway.

    python bench/merge_precision.py [--rounds 100] [--out bench/results/merge_precision.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from loraboost import BoostConfig, Booster
from loraboost.assets import default_model_dir
from loraboost.merge import add_delta_
from loraboost.plan import round_generator

MODULES = ["model.layers.0.self_attn.q_proj", "model.layers.10.mlp.down_proj", "model.layers.29.self_attn.o_proj"]


STOCHASTIC = "stochastic"
SCHEMES = {  # name -> residual dtype, or STOCHASTIC
    "plain bf16 add": None,
    "stochastic": STOCHASTIC,
    "fp32 residual": torch.float32,
    "bf16 residual": torch.bfloat16,
}


def merge_series(weight_fp32: torch.Tensor, rounds: int, relative_size: float, scheme: str, seed: int) -> dict:
    """``rounds`` rank-1 merges of per-element size ``relative_size`` times the weight's mean magnitude into a
    bf16 copy of the weight under ``scheme``: the share kept, the projected share and the seconds per merge."""
    g = torch.Generator().manual_seed(seed)
    weight = weight_fp32.to(torch.bfloat16)
    start = weight.double()
    kind = SCHEMES[scheme]
    residual = None if kind in (None, STOCHASTIC) else torch.zeros_like(weight_fp32, dtype=kind)
    exact = torch.zeros_like(start)
    scale = relative_size * weight_fp32.abs().mean()
    seconds = 0.0
    for r in range(rounds):
        a = torch.randn(1, weight.shape[1], generator=g)
        b = torch.randn(weight.shape[0], 1, generator=g)
        delta = b @ a
        delta *= scale / delta.abs().mean()
        exact += delta.double()
        draws = round_generator(seed, r, "merge:bench") if kind == STOCHASTIC else None
        began = time.perf_counter()
        add_delta_(weight, delta, residual, draws)
        seconds += time.perf_counter() - began
    held = weight.double() + (0 if residual is None else residual.double()) - start
    return {
        "kept": 1 - float((held - exact).norm() / exact.norm()),
        "projected": float((held * exact).sum() / exact.pow(2).sum()),
        "noise_over_bf16_storage": float((held - exact).norm() / (start - weight_fp32.double()).norm()),
        "seconds_per_merge": seconds / rounds,
    }


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
            series = [merge_series(w, args.rounds, size, scheme, seed=i) for i, w in enumerate(weights.values())]
            kept = [x["kept"] for x in series]
            rows.append(
                {
                    "relative_size": size,
                    "scheme": scheme,
                    "kept_min": min(kept),
                    "kept_mean": sum(kept) / len(kept),
                    "projected": [x["projected"] for x in series],
                    "noise_over_bf16_storage": [x["noise_over_bf16_storage"] for x in series],
                    "seconds_per_merge_median": statistics.median(x["seconds_per_merge"] for x in series),
                }
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
    print(
        "| update size | scheme | kept (min) | kept (mean) | projected (per module) | noise / bf16 storage error "
        "(max) | ms per merge (median) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        projected = ", ".join(f"{p:.3f}" for p in r["projected"])
        print(
            f"| {r['relative_size']:.0e} | {r['scheme']} | {r['kept_min']:.4%} | {r['kept_mean']:.4%} | {projected} | "
            f"{max(r['noise_over_bf16_storage']):.3f} | {r['seconds_per_merge_median'] * 1e3:.2f} |"
        )
    print(f"\nfp32 residual memory once every target merged (model in bf16: {bf16_bytes / 2**20:.0f} MiB):")
    for method, size in memory.items():
        print(f"  {method:8} {size / 2**20:7.1f} MiB  ({size / bf16_bytes:.0%} of the bf16 model)")


if __name__ == "__main__":
    main()
