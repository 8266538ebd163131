"""Data-parallel step time on CPU: one process with 2 threads against 2 DDP processes (gloo) with one
thread each, on the same global batch (8 x 64 tokens of real text), XGBLoRA's default on SmolLM2-135M.

    python bench/ddp_speed.py [--steps 8] [--out bench/results/ddp_speed.json]

It runs the single-process case itself, then relaunches itself under torchrun for the 2-process case.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).parent))
from engine_overhead import real_batch  # noqa: E402  (the same 8 x 64 tokens)

from loraboost import BoostConfig, Booster  # noqa: E402
from loraboost.assets import default_model_dir  # noqa: E402


def step_times(steps: int, rank: int = 0, world: int = 1) -> list[float]:
    model_dir = default_model_dir(progress=False)
    batch = real_batch(AutoTokenizer.from_pretrained(model_dir))
    share = batch["input_ids"].shape[0] // world
    local = {k: v[rank * share : (rank + 1) * share] for k, v in batch.items()}
    booster = Booster(
        AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), BoostConfig(method="xgblora")
    )
    model = DistributedDataParallel(booster.model, find_unused_parameters=True) if world > 1 else booster.model
    opt = torch.optim.AdamW(booster.parameters(), lr=1e-4)
    times = []
    for i in range(steps + 2):
        if world > 1:
            dist.barrier()
        t0 = time.perf_counter()
        model(**local).loss.backward()
        opt.step()
        opt.zero_grad()
        booster.step(opt)
        if world > 1:
            dist.barrier()
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", default="bench/results/ddp_speed.json")
    parser.add_argument("--rank-output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if "RANK" in os.environ:  # a rank of the 2-process run
        dist.init_process_group("gloo")
        times = step_times(args.steps, dist.get_rank(), dist.get_world_size())
        if dist.get_rank() == 0:
            Path(args.rank_output).write_text(json.dumps(times))
        dist.destroy_process_group()
        return
    torch.set_num_threads(2)
    single = step_times(args.steps)
    rank_file = Path(args.out).with_suffix(".ranks.json")
    rank_file.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            __file__,
            "--steps",
            str(args.steps),
            "--rank-output",
            str(rank_file),
        ],
        check=True,
        env=env,
    )
    double = json.loads(rank_file.read_text())
    rank_file.unlink()
    report = {
        "steps": args.steps,
        "one_process_2_threads_s": statistics.median(single),
        "two_processes_1_thread_s": statistics.median(double),
    }
    report["ratio_2proc_over_1proc"] = report["two_processes_1_thread_s"] / report["one_process_2_threads_s"]
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"1 process x 2 threads: {report['one_process_2_threads_s']:.3f} s/step (median of {args.steps})")
    print(f"2 processes x 1 thread (DDP, gloo): {report['two_processes_1_thread_s']:.3f} s/step")
    print(f"ratio: {report['ratio_2proc_over_1proc']:.3f}")


if __name__ == "__main__":
    main()
