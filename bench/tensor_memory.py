"""Where a training step's peak memory goes: the bytes torch holds in tensors at the step's peak, by kind
(parameters, optimizer state, inputs, activations, autograd's own, gradients), read from torch.profiler's memory
timeline, per arm of bench/speed.py.

Unlike bench/saved_memory.py, which counts what autograd saves for the backward, this counts every tensor alive at
the step's peak: also what a gradient sketch holds beside autograd, its sketches, the optimizer's state and the
temporaries. Peak RSS (bench/speed.py --memory-only) also counts the allocator's free pages, the libraries and
Python, and moves by tens of MB from one fresh process to the next; the tensors a step holds do not, so one run
resolves differences of a few MB. Each arm trains two steps in a fresh process on the same batches (forward,
backward, AdamW, the booster's step): the first is the one a gradient arm sketches, the second a plain step.

    python bench/tensor_memory.py [--arms peft-lora,xgblora,xgblora-grad,xgblora-grad-bf16] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy
import torch
import transformers
from speed import ARMS, build, real_batches
from torch.profiler import ProfilerActivity, profile

# torch's memory timeline is a private module (torch 2.13.0 here, pinned by the Makefile): its public export
# (export_memory_timeline) writes only files, and is deprecated in favour of a CUDA-only snapshot.
from torch.profiler._memory_profiler import _CATEGORY_TO_INDEX, MemoryProfileTimeline

from loraboost.models import model_folder

# The timeline's columns: one before the categories (never filled on CPU), then one per category, None last.
KINDS = ["-", *(category.name.lower() if category else "unknown" for category in _CATEGORY_TO_INDEX)]


def step_peaks(arm: str, model_dir: Path, batch: int, length: int) -> list[dict]:
    """Two training steps of ``arm``: each one's peak tensor bytes and, at that moment, the bytes of each kind."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    rows = real_batches(tokenizer, 2, batch, length)
    steps = [torch.stack([row["input_ids"] for row in rows[i * batch : (i + 1) * batch]]) for i in range(2)]
    torch.manual_seed(0)
    model, booster = build(arm, model_dir)
    model.train()
    trainable = booster.parameters() if booster else [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(list(trainable), lr=1e-4)

    def train_step(ids: torch.Tensor) -> None:
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        if booster is not None:
            booster.step(optimizer)
        optimizer.zero_grad(set_to_none=True)

    return [peak_tensor_bytes(lambda ids=ids: train_step(ids)) for ids in steps]


def peak_tensor_bytes(work) -> dict:
    """Run ``work()`` under torch.profiler's memory timeline (CPU): the most bytes held in tensors at any moment,
    counting the ones alive when it starts, and the bytes of each kind at that moment."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as p:
        work()
    _, sizes = MemoryProfileTimeline(p._memory_profile())._coalesce_timeline(torch.device("cpu"))
    sizes = numpy.asarray(sizes, dtype=numpy.int64)
    at = int(sizes.sum(axis=1).argmax())
    return {"peak_bytes": int(sizes[at].sum()), "by_kind": {kind: int(b) for kind, b in zip(KINDS, sizes[at]) if b}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="embedded model name or a local causal-LM folder")
    parser.add_argument("--arms", type=lambda text: text.split(","), default=["peft-lora", "xgblora", "xgblora-grad"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--out", default="runs/tensor_memory.json")
    parser.add_argument("--arm-of", help=argparse.SUPPRESS)  # internal: one arm, in this process
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)
    model_dir = model_folder(args.model)
    if args.arm_of:
        print(json.dumps(step_peaks(args.arm_of, model_dir, args.batch, args.length)))
        return
    unknown = [arm for arm in args.arms if arm not in ARMS]
    if unknown:
        parser.error(f"--arms {unknown[0]!r} is not an arm; use some of {', '.join(ARMS)}.")
    result = {}
    for arm in args.arms:  # a fresh process each: nothing an earlier arm allocated is in the timeline
        command = [sys.executable, __file__, "--arm-of", arm, "--model", args.model, "--batch", str(args.batch)]
        command += ["--length", str(args.length)]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        result[arm] = json.loads(out.strip().splitlines()[-1])
        print(f"| {arm} | " + " | ".join(f"{s['peak_bytes'] / 2**20:.1f} MiB" for s in result[arm]) + " |", flush=True)
    anchor = result.get("peft-lora")
    report = {
        "date": datetime.date.today().isoformat(),
        "command": "python bench/tensor_memory.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, CPU, 1 torch thread",
        "model": str(model_dir),
        "batch": [args.batch, args.length],
        "steps": ["first (sketched by a gradient arm)", "second (plain)"],
        "arms": result,
    }
    if anchor:
        report["peak_over_peft_lora"] = {
            arm: [s["peak_bytes"] / a["peak_bytes"] for s, a in zip(steps, anchor)] for arm, steps in result.items()
        }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(out)


if __name__ == "__main__":
    main()
