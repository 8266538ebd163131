"""Speed and memory, side by side: loraboost's presets against plain PEFT LoRA under transformers' Trainer.

One process times every arm on the same model and the same batches, interleaving the arms in
repetitions so that machine noise hits them alike, and reports step times as ratios:

- ``peft-lora``: the anchor, plain PEFT LoRA r=8 on the attention query/value projections, trained by
  the plain Trainer without loraboost;
- ``lora``, ``xgblora``, ``cola``: loraboost presets at their defaults, trained by the same Trainer
  with BoostCallback;
- ``xgblora-grad``: XGBLoRA with gradient-boosted rounds (``round_init`` and ``layer_selection`` "gradient"):
  the same step as ``xgblora`` except in the sketched steps at a round's end, timed apart (below);
- ``xgblora-grad-bf16``: the same with the sketch's captured layer inputs held in bf16 (``sketch_input_dtype``), and
  ``xgblora-grad-fp8`` in float8 with a scale per token;
- ``peft-lora-r1-all``: plain PEFT LoRA r=1 (alpha 2) on every linear layer of every block, XGBLoRA's
  matched baseline in the quality benchmark: what rank-1 adapters cost when all blocks train at once;
- ``floor``: the limit any adapter method could reach: the model's forward pass plus the backward pass
  an adapter needs, with negligible adapter compute (one rank-1 PEFT adapter on the lowest block's query
  projection, so the gradient still flows through every block).

Then: the cost of an XGBLoRA round change as a share of training time at its default kappa; what gradient rounds
add over a run at that kappa (the sketched steps' extra time and the round change's extra work: sketch reads,
SVDs, block choice), timed on a run with kappa 2 where every other step is sketched; and each
arm's peak memory while training (GPU: peak allocated; CPU: peak resident memory of a fresh process per
arm, its peak mark reset once the model is loaded; `--memory-only` measures just that).

    python bench/speed.py [--model default] [--steps 10] [--repeats 3] [--batch 8] [--length 64]
    python bench/speed.py --profile xgblora      # where an arm's step time goes (torch.profiler)
    python bench/speed.py --memory-only          # only the peak memory per arm (--arms: some of them)

Writes bench/results/speed.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers
from review_text import review_token_rows

from loraboost import BoostCallback, BoostConfig, Booster
from loraboost.arms import ARMS as LIBRARY_ARMS

ARMS = (
    "peft-lora", "lora", "xgblora", "xgblora-grad", "xgblora-grad-bf16", "xgblora-grad-fp8", "cola",
    "peft-lora-r1-all", "floor",
)  # fmt: skip
GOALS = {"lora": 1.02, "xgblora": 1.0, "cola": 1.02}  # step time over the anchor's (issue 5)
GRADIENT_ROUNDS = LIBRARY_ARMS["xgblora-grad"].boost  # the library's catalogue holds every booster arm's config
# Gradient rounds whose sketch holds the captured layer inputs in bf16 (issue 33: the sketch's peak memory).
BOOSTS = {
    "xgblora-grad-bf16": dict(GRADIENT_ROUNDS, sketch_input_dtype="bfloat16"),
    "xgblora-grad-fp8": dict(GRADIENT_ROUNDS, sketch_input_dtype="float8_e4m3fn"),
}
GRADIENT_GOAL = 0.02  # extra training time of gradient rounds over a run at the default kappa (issue 19)


def real_batches(tokenizer, count: int, batch: int, length: int) -> list[dict[str, torch.Tensor]]:
    """``count`` causal-LM batches of ``batch`` x ``length`` tokens of real movie-review text."""
    ids = review_token_rows(tokenizer, count * batch, length)
    return [{"input_ids": row, "labels": row.clone()} for row in ids]


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SETTINGS = {"dtype": torch.float32}  # set once from the command line


RANDOM_VOCAB = 49152  # SmolLM2's vocabulary size


def random_llama(folder: Path) -> Path:
    """A Llama-3.2-1B-shaped model (16 blocks, hidden 2048, GQA 32/8 heads, MLP 8192, vocabulary 49,152:
    1.08 B parameters) with random weights: step time does not depend on the weights' values, and no model
    hub is reachable from the benchmark machines. Its batches are random token ids (see main)."""
    if not (folder / "config.json").exists():
        config = transformers.LlamaConfig(
            vocab_size=RANDOM_VOCAB,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            rope_theta=500000.0,
        )
        torch.manual_seed(0)
        transformers.LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    return folder


def build(arm: str, model_dir: Path, boost: BoostConfig | None = None):
    """The model to train and, for loraboost's arms, its Booster (None for the plain PEFT arms)."""
    import peft

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=SETTINGS["dtype"])
    if arm == "peft-lora":
        config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
        return peft.get_peft_model(model, config), None
    if arm == "peft-lora-r1-all":
        config = peft.LoraConfig(r=1, lora_alpha=2, target_modules="all-linear", lora_dropout=0.0)
        return peft.get_peft_model(model, config), None
    if arm == "floor":  # the lowest block only: the backward pass still runs through every block above it
        config = peft.LoraConfig(
            r=1, lora_alpha=2, target_modules=["q_proj"], layers_to_transform=[0], lora_dropout=0.0
        )
        return peft.get_peft_model(model, config), None
    booster = Booster(model, boost or BoostConfig(**BOOSTS.get(arm) or LIBRARY_ARMS[arm].boost))
    return booster.model, booster


def wait_for_device() -> None:
    """Block until queued GPU work is done, so a wall-clock reading covers it (kernels launch asynchronously)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepClock(transformers.TrainerCallback):
    """Wall time between consecutive step ends: everything a step costs, the boost callback included."""

    def __init__(self):
        self.step_seconds, self._last = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        if self._last is None:
            self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        wait_for_device()
        now = time.perf_counter()
        self.step_seconds.append(now - self._last)
        self._last = now


class TimedBoostCallback(BoostCallback):
    """BoostCallback whose step-end work (``booster.step``: merge and restart at a round change) is timed,
    split by whether the round changed, with each step's work and whether its gradient was sketched."""

    def __init__(self, booster: Booster):
        super().__init__(booster)
        self.change_seconds, self.plain_seconds = [], []
        self.work_seconds, self.sketched = [], []  # per step

    def on_step_begin(self, args, state, control, **kwargs):
        super().on_step_begin(args, state, control, **kwargs)
        self.sketched.append(self.booster.sketcher is not None and self.booster.sketcher.armed)

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        wait_for_device()  # the step's own kernels are not the boost work's
        round_before, start = self.booster.round, time.perf_counter()
        super().on_step_end(args, state, control, optimizer=optimizer, **kwargs)
        wait_for_device()
        seconds = time.perf_counter() - start
        (self.change_seconds if self.booster.round != round_before else self.plain_seconds).append(seconds)
        self.work_seconds.append(seconds)


def gradient_round_cost(model_dir: Path, batches, steps: int, batch: int, literal_change: float, median_step: float):
    """What gradient rounds add over literal XGBLoRA, from a run with kappa 2 (every other step sketched): the
    extra time of a sketched step (the backward through idle blocks, the hooks), the extra work of a round
    change (sketch reads, SVDs, block choice), and their sum as a share of training time at the default kappa."""
    config = BoostConfig(**GRADIENT_ROUNDS, steps_per_round=2)
    clock, probe = train_arm("xgblora-grad", model_dir, batches, steps, batch, boost=config)
    # Per timed step (the warm-up dropped): its time without the boost work at its end (a round change here).
    compute = [t - work for t, work in zip(clock.step_seconds, probe.work_seconds[1:])]
    sketched_times = [t for t, s in zip(compute, probe.sketched[1:]) if s]
    plain_times = [t for t, s in zip(compute, probe.sketched[1:]) if not s]
    sketch_extra = statistics.median(sketched_times) - statistics.median(plain_times)
    change_extra = statistics.fmean(probe.change_seconds) - literal_change
    default = BoostConfig(**GRADIENT_ROUNDS)  # what a run at the default kappa sketches
    share = (default.sketch_steps * sketch_extra + change_extra) / (default.steps_per_round * median_step)
    return {
        "kappa_probe": 2,
        "sketched_steps_timed": len(sketched_times),
        "plain_steps_timed": len(plain_times),
        "median_sketched_step_seconds": statistics.median(sketched_times),
        "median_plain_step_seconds": statistics.median(plain_times),
        "sketched_step_extra_seconds": sketch_extra,
        "mean_change_seconds": statistics.fmean(probe.change_seconds),
        "change_extra_seconds": change_extra,
        "share_of_training_at_default_kappa": share,
        "goal": GRADIENT_GOAL,
        "meets_goal": share <= GRADIENT_GOAL,
    }


def train_arm(
    arm: str,
    model_dir: Path,
    batches,
    steps: int,
    batch: int,
    boost: BoostConfig | None = None,
    watchers: tuple[transformers.TrainerCallback, ...] = (),
):
    """Train ``arm`` for one warm-up step plus ``steps`` timed steps under the Trainer, with ``watchers``
    as extra callbacks; returns the step clock and the boost callback (None for the plain PEFT arms)."""
    model, booster = build(arm, model_dir, boost)
    if SETTINGS.get("training_peak_only"):
        reset_peak_rss()  # loading the model peaks higher than training at this size; measure training alone
    clock, boost_callback = StepClock(), TimedBoostCallback(booster) if booster is not None else None
    args = transformers.TrainingArguments(
        output_dir="/tmp/loraboost-speed",
        max_steps=steps + 1,
        per_device_train_batch_size=batch,
        learning_rate=1e-4,
        lr_scheduler_type="constant",
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        bf16=SETTINGS["dtype"] == torch.bfloat16,
        dataloader_drop_last=True,
        disable_tqdm=True,
        seed=0,
    )
    # The clock after the boost work, so that it sees it.
    callbacks = ([boost_callback] if boost_callback else []) + [clock, *watchers]
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    transformers.Trainer(model=model, args=args, train_dataset=batches, callbacks=callbacks).train()
    clock.step_seconds = clock.step_seconds[1:]  # the first step warms caches and allocators
    clock.peak_gpu_bytes = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    return clock, boost_callback


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark of this process (Linux: writing 5 to /proc/self/clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss() -> int:
    """Peak resident bytes of this process since start or the last ``reset_peak_rss`` (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status: peak memory needs Linux")


def peak_memory(arm: str, args) -> int:
    """Peak resident bytes while training ``arm`` a few steps, in a fresh process with its peak mark reset
    after the model is loaded (CPU)."""
    command = [
        sys.executable,
        __file__,
        "--memory-of",
        arm,
        "--model",
        args.model,
        "--batch",
        str(args.batch),
        "--length",
        str(args.length),
        "--dtype",
        args.dtype,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return int(result.stdout.strip().splitlines()[-1])


class ProfiledSteps(transformers.TrainerCallback):
    """Runs ``profiler`` over the timed steps alone: from the end of the warm-up step to the end of training."""

    def __init__(self, profiler):
        self.profiler = profiler

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            self.profiler.start()

    def on_train_end(self, args, state, control, **kwargs):
        wait_for_device()
        self.profiler.stop()


def profile(arm: str, model_dir: Path, batches, batch: int, steps: int = 5) -> None:
    """Where ``arm``'s training steps spend their time: wall time per step, the operators' own CPU time and,
    on a GPU, the kernels' own device time per step (device time below wall time means the GPU waited on
    the host), then the top operators."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    gpu = torch.cuda.is_available()
    prof = torch_profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else []))
    clock = train_arm(arm, model_dir, batches, steps, batch, watchers=(ProfiledSteps(prof),))[0]
    events = prof.key_averages()
    summary = (
        f"{arm}: {statistics.fmean(clock.step_seconds) * 1e3:.1f} ms per step (wall, under the profiler), "
        f"{sum(e.self_cpu_time_total for e in events) / 1e3 / steps:.1f} ms own CPU time of operators"
    )
    if gpu:
        # Kernels are events of their own; the operators that launch them carry the same time again.
        kernels = sum(e.self_device_time_total for e in events if e.device_type != torch.autograd.DeviceType.CPU)
        summary += f", {kernels / 1e3 / steps:.1f} ms of GPU kernels"
    print(summary + f" per step (means over {steps} steps after a warm-up step)")
    print(events.table(sort_by="self_device_time_total" if gpu else "self_cpu_time_total", row_limit=25))


def write_json(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default="default",
        help="embedded model name, a local causal-LM folder, or 'random-1b' (Llama-3.2-1B shape, random weights)",
    )
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="weights' dtype (bf16 also autocasts)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per arm and repetition")
    parser.add_argument(
        "--repeats", type=int, default=3, help="repetitions; arms are interleaved within each (--memory-only too)"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument(
        "--kappa-probe-steps",
        type=int,
        default=8,
        help="steps of the XGBLoRA run with kappa=2 that times round changes",
    )
    parser.add_argument(
        "--gradient-probe-steps",
        type=int,
        default=24,
        help="steps of the gradient-rounds run with kappa=2 that times sketched steps and round changes",
    )
    parser.add_argument("--profile", choices=ARMS, nargs="+", help="profile these arms instead of the comparison")
    parser.add_argument("--memory-only", action="store_true", help="only each arm's peak memory while training")
    parser.add_argument(
        "--arms",
        type=lambda text: text.split(","),
        default=list(ARMS),
        help="--memory-only: these arms (comma-separated)",
    )
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # internal: one arm's peak memory
    parser.add_argument("--out", default="bench/results/speed.json")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    SETTINGS["dtype"] = DTYPES[args.dtype]
    count = max(args.steps, args.kappa_probe_steps, args.gradient_probe_steps) + 1
    if args.model == "random-1b":
        model_dir = random_llama(Path(args.out).parent / "random-llama-1b")
        ids = torch.randint(RANDOM_VOCAB, (count * args.batch, args.length), generator=torch.Generator().manual_seed(0))
        batches = [{"input_ids": row, "labels": row.clone()} for row in ids]
    else:
        from loraboost.models import model_folder  # here: it imports `datasets`, which the random model never needs

        model_dir = model_folder(args.model)
        batches = real_batches(transformers.AutoTokenizer.from_pretrained(model_dir), count, args.batch, args.length)

    if args.memory_of:
        SETTINGS["training_peak_only"] = True
        train_arm(args.memory_of, model_dir, batches[: 4 * args.batch], 3, args.batch)
        print(peak_rss())
        return
    if args.memory_only:
        known = [*ARMS, *(name for name, arm in LIBRARY_ARMS.items() if arm.boost and name not in ARMS)]
        unknown = sorted(set(args.arms) - set(known))
        if unknown:
            parser.error(f"--arms {unknown[0]!r} is not an arm; use some of {', '.join(known)}.")
        # Peak RSS varies by tens of MB from one fresh process to the next: repeat, interleaved, and take medians.
        repeats = {arm: [] for arm in args.arms}
        for repeat in range(args.repeats):
            for arm in args.arms if repeat % 2 == 0 else reversed(args.arms):
                repeats[arm].append(peak_memory(arm, args))
                print(f"| {arm} | {repeats[arm][-1] / 2**30:.3f} GiB |", flush=True)
        peaks = {arm: statistics.median(values) for arm, values in repeats.items()}
        write_json(
            Path(args.out),
            {
                "date": datetime.date.today().isoformat(),
                "command": "python bench/speed.py " + " ".join(sys.argv[1:]),
                "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, CPU",
                "model": str(model_dir),
                "batch": [args.batch, args.length],
                "memory_kind": "peak RSS while training (a fresh process per arm and repeat, 3 steps; median)",
                "peak_memory_bytes": peaks,
                "peak_memory_bytes_by_repeat": repeats,
                **(
                    {"over_peft_lora": {a: b / peaks["peft-lora"] for a, b in peaks.items()}}
                    if "peft-lora" in peaks
                    else {}
                ),
            },
        )
        return
    if args.profile:
        for arm in args.profile:
            profile(arm, model_dir, batches, args.batch)
        return

    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    repeat_medians: dict[str, list[float]] = {arm: [] for arm in ARMS}  # per repetition: the spread of the ratios
    gpu_peak: dict[str, int] = {}
    for repeat in range(args.repeats):
        for arm in ARMS if repeat % 2 == 0 else reversed(ARMS):  # alternate the order: no arm always goes first
            print(f"speed: repeat {repeat + 1}/{args.repeats}, {arm}", file=sys.stderr, flush=True)
            clock = train_arm(arm, model_dir, batches, args.steps, args.batch)[0]
            times[arm] += clock.step_seconds
            repeat_medians[arm].append(statistics.median(clock.step_seconds))
            if clock.peak_gpu_bytes is not None:
                gpu_peak[arm] = max(gpu_peak.get(arm, 0), clock.peak_gpu_bytes)
    median = {arm: statistics.median(t) for arm, t in times.items()}

    # Round changes: XGBLoRA's default config with kappa=2, so that several changes fall in a short run.
    default_kappa = BoostConfig(method="xgblora").steps_per_round
    _, probe = train_arm(
        "xgblora",
        model_dir,
        batches,
        args.kappa_probe_steps,
        args.batch,
        boost=BoostConfig(method="xgblora", steps_per_round=2),
    )
    change = statistics.fmean(probe.change_seconds)
    plain = statistics.fmean(probe.plain_seconds)
    share = change / (default_kappa * median["xgblora"])
    gradient = gradient_round_cost(model_dir, batches, args.gradient_probe_steps, args.batch, change, median["xgblora"])

    # GPU: peak allocated memory per arm (reset before each); CPU: peak RSS of a fresh process per arm.
    memory = gpu_peak or {arm: peak_memory(arm, args) for arm in ARMS}
    memory_kind = "peak GPU memory allocated" if gpu_peak else "peak RSS while training"
    anchor = median["peft-lora"]
    rows = []
    for arm in ARMS:
        ratio = median[arm] / anchor
        ratio_by_repeat = [t / a for t, a in zip(repeat_medians[arm], repeat_medians["peft-lora"])]
        goal = GOALS.get(arm)
        rows.append(
            {
                "arm": arm,
                "median_step_seconds": median[arm],
                "steps_timed": len(times[arm]),
                "step_seconds": times[arm],
                "ratio_to_peft_lora": ratio,
                "ratio_by_repeat": ratio_by_repeat,
                "ratio_to_floor": median[arm] / median["floor"],
                "goal": goal,
                "meets_goal": None if goal is None else ratio <= goal,
                "peak_memory_bytes": memory[arm],
                "peak_memory_over_peft_lora": memory[arm] / memory["peft-lora"],
            }
        )
    result = {
        "date": datetime.date.today().isoformat(),
        "command": "python bench/speed.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{'GPU ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": __import__("peft").__version__,
        },
        "model": str(model_dir),
        "dtype": args.dtype,
        "batch": [args.batch, args.length],
        "memory_kind": memory_kind,
        "rows": rows,
        "round_change": {
            "kappa": default_kappa,
            "mean_change_seconds": change,
            "mean_plain_step_end_seconds": plain,
            "changes_timed": len(probe.change_seconds),
            "share_of_training_at_default_kappa": share,
        },
        "gradient_rounds": gradient,
    }
    write_json(Path(args.out), result)
    print(
        "| arm | median step | vs PEFT LoRA (per repetition) | goal | vs floor | "
        f"{memory_kind} | memory vs PEFT LoRA |\n"
        "|---|---|---|---|---|---|---|"
    )
    for r in rows:
        goal = "-" if r["goal"] is None else f"<= {r['goal']:.2f} ({'met' if r['meets_goal'] else 'missed'})"
        spread = ", ".join(f"{x:.3f}" for x in r["ratio_by_repeat"])
        print(
            f"| {r['arm']} | {r['median_step_seconds']:.3f} s | {r['ratio_to_peft_lora']:.3f} ({spread}) | {goal} | "
            f"{r['ratio_to_floor']:.3f} | {r['peak_memory_bytes'] / 2**30:.2f} GiB | "
            f"{r['peak_memory_over_peft_lora']:.3f} |"
        )
    print(
        f"\nXGBLoRA round change: {change * 1e3:.1f} ms (mean of {len(probe.change_seconds)}); step-end work "
        f"without a change {plain * 1e6:.0f} us; at kappa={default_kappa}: {share:.3%} of training time."
    )
    g = gradient
    print(
        f"Gradient rounds: a sketched step takes {g['sketched_step_extra_seconds'] * 1e3:+.1f} ms over a plain one "
        f"({g['median_sketched_step_seconds'] * 1e3:.1f} vs {g['median_plain_step_seconds'] * 1e3:.1f} ms), a round "
        f"change {g['change_extra_seconds'] * 1e3:+.1f} ms over literal XGBLoRA's; at kappa={default_kappa}: "
        f"{g['share_of_training_at_default_kappa']:+.3%} of training time (goal <= {GRADIENT_GOAL:.0%}: "
        f"{'met' if g['meets_goal'] else 'missed'})."
    )
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
