"""Does a bf16 base lose XGBLoRA's merged updates in real training, and does it cost accuracy? XGBLoRA at the
quality benchmark's settings on a base held in bf16, merging with each residual policy, against an fp32 base.

Variants (``--variants``):
  fp32                the base in fp32: every merge exact (the quality benchmark's setting)
  bf16-plain          a bf16 base, merges added in place (``merge_residual="never"``)
  bf16-fp32-residual  a bf16 base with an fp32 residual per merged weight (``merge_residual="residual"``)
  bf16-bf16-residual  the same with ``merge_residual_dtype="bfloat16"`` (2 bytes per element, not 4)
  bf16-stochastic     a bf16 base, each merge rounded up or down at random (``"stochastic"``, what ``"auto"`` does):
                      no residual, every merge kept in expectation

This CPU has no bf16 matmul units (a bf16 MiniLM step runs about 30x slower than an fp32 one), so bf16
*storage* is emulated and compute stays fp32: every parameter of the loaded model is rounded to a bf16 value,
and each merge runs the library's own ``merge.add_delta_`` on a real bf16 copy of the weight and writes the
bf16 result back. What differs between the variants is therefore exactly what their merges keep. Each run also
reports the share of the merged updates the weights keep: 1 - |held change - exact sum| / |exact sum| over all
merged weights, for the weights the forward pass uses and for weights plus residual; and each bf16 variant's
held-out loss reduction as a share of the exact run's (``bf16-fp32-residual``, every merge kept in full) on the
same seed: (base loss - variant's) / (base loss - exact run's), from the same bf16 base, on the test split; and
the memory the merges add, counted as the bytes of every residual tensor at the end of the run, over the model's
bytes in bf16 (emulation or not, a residual is a real tensor of its own dtype).

    python bench/bf16_merges.py --model minilm --task trec                     # 189 steps, 3 merges
    python bench/bf16_merges.py --model minilm --task trec --steps-factor 3    # 567 steps, 11 merges
    python bench/bf16_merges.py --sizes runs/quality/smollm2-trec/xgblora/*    # merge sizes of finished runs

Runs are reused when finished (the benchmark resumes); writes OUT/<model>-<task>[-Nx]/bf16_merges.json and .md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import shutil
import statistics
import sys
from pathlib import Path
from unittest import mock

import torch

import loraboost.booster
import loraboost.run
from loraboost import BoostConfig
from loraboost.checkpoint import load_state_file
from loraboost.merge import add_delta_
from loraboost.models import load_model
from loraboost.options import RunOptions
from loraboost.run import prepare, train
from loraboost.run_folder import FINISHED, STATE
from loraboost.task_kinds import task_kind

sys.path.insert(0, str(Path(__file__).parent))
from quality_plan import MODELS, SIZES  # noqa: E402  (the quality benchmark's models, epochs and splits)

VARIANTS = {  # name -> (base held in bf16, merge_residual, merge_residual_dtype)
    "fp32": (False, "auto", "float32"),
    "bf16-plain": (True, "never", "float32"),
    "bf16-fp32-residual": (True, "always", "float32"),  # "always": the emulated base is stored as fp32 tensors
    "bf16-bf16-residual": (True, "always", "bfloat16"),
    "bf16-stochastic": (True, "stochastic", "float32"),
}
KEPT = "merge_kept.json"


class MergeTracker:
    """Wraps ``merge.add_delta_`` as the booster calls it: optionally on bf16 storage, and counting per merged
    weight its value before the first merge and the exact (fp64) sum of every delta added since."""

    def __init__(self, bf16: bool):
        self.bf16 = bf16
        self.weights: dict[int, tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def __call__(
        self,
        weight: torch.Tensor,
        delta: torch.Tensor,
        residual: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if id(weight) not in self.weights:
            self.weights[id(weight)] = (
                weight,
                residual,
                weight.detach().clone(),
                torch.zeros_like(weight, dtype=torch.float64),
            )
        self.weights[id(weight)][3].add_(delta.double())
        if not self.bf16:
            add_delta_(weight, delta, residual, generator)
            return
        held = weight.detach().to(torch.bfloat16)
        add_delta_(held, delta, residual, generator)  # the library's bf16 arithmetic, on a real bf16 tensor
        weight.copy_(held.float())

    def residual_bytes(self) -> int:
        """Bytes of every residual tensor the merges made (none without a residual policy)."""
        return sum(r.numel() * r.element_size() for _, r, _, _ in self.weights.values() if r is not None)

    def kept(self) -> dict[str, float]:
        """Share of the exact merged update that the forward weights, and weights plus residual, hold; and
        ``projected``, the forward weights' change projected on the exact update (<change, exact> / |exact|^2):
        1 when the update is kept on average, even if rounding noise sits around it (stochastic rounding)."""
        exact_sq = forward_sq = held_sq = along = 0.0
        for weight, residual, start, exact in self.weights.values():
            change = weight.double() - start.double()
            exact_sq += float(exact.square().sum())
            forward_sq += float((change - exact).square().sum())
            along += float((change * exact).sum())
            if residual is not None:
                change = change + residual.double()
            held_sq += float((change - exact).square().sum())
        if not exact_sq:
            return {"forward": 1.0, "held": 1.0, "projected": 1.0}
        return {
            "forward": 1 - (forward_sq / exact_sq) ** 0.5,
            "held": 1 - (held_sq / exact_sq) ** 0.5,
            "projected": along / exact_sq,
        }


def bf16_valued(load_model):
    """``load_model`` whose model comes back with every parameter rounded to a bf16 value."""

    def load(*args, **kwargs):
        model, tokenizer = load_model(*args, **kwargs)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.bfloat16().float())
        return model, tokenizer

    return load


def run_variant(folder: Path, options: RunOptions, variant: str, seed: int, lr: float, threads: int) -> dict:
    """One XGBLoRA run of ``variant`` (reused when finished); its summary with the merge-kept shares added."""
    if (folder / FINISHED).exists() and (folder / KEPT).exists():
        return {**json.loads((folder / FINISHED).read_text()), "kept": json.loads((folder / KEPT).read_text())}
    torch.set_num_threads(threads)
    bf16, policy, residual_dtype = VARIANTS[variant]
    tracker = MergeTracker(bf16)
    run_options = dataclasses.replace(options, seed=seed, learning_rate=lr, output=str(folder), overwrite=True)
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(loraboost.booster, "add_delta_", tracker))
        if policy == "stochastic":  # the emulated base is stored in fp32: round as a real bf16 weight would be
            stack.enter_context(
                mock.patch.object(loraboost.booster, "rounds_stochastically", lambda policy, dtype: True)
            )
        if bf16:
            stack.enter_context(mock.patch.object(loraboost.run, "load_model", bf16_valued(loraboost.run.load_model)))
        summary = train(
            run_options,
            BoostConfig(method="xgblora", merge_residual=policy, merge_residual_dtype=residual_dtype, seed=seed),
        )
    kept = {**tracker.kept(), "residual_bytes": tracker.residual_bytes()}
    (folder / KEPT).write_text(json.dumps(kept))
    for checkpoint in folder.glob("checkpoint-*"):  # only the summary and the kept shares are needed here
        shutil.rmtree(checkpoint)
    return {**summary, "kept": kept}


EXACT = "bf16-fp32-residual"  # the reference of the bf16 variants: every merge kept to fp32


def base_test_loss(options: RunOptions, seed: int, bf16: bool, threads: int) -> float:
    """The untrained model's test loss on ``seed``'s split (its new head seeded as in training), from the base
    the variants start from: bf16-valued or not."""
    torch.set_num_threads(threads)
    with contextlib.ExitStack() as stack:
        if bf16:
            stack.enter_context(mock.patch.object(loraboost.run, "load_model", bf16_valued(loraboost.run.load_model)))
        model, _, task, splits = prepare(dataclasses.replace(options, seed=seed), BoostConfig(method="xgblora"))
    return task.evaluate(model, splits["test"], progress=False)["loss"]


def base_weights(model: str, task: str) -> tuple[dict[str, torch.Tensor], int]:
    """The untrained model's weights by module name (what each merge's size is measured against) and the
    model's bytes if stored in bf16 (what the merges' memory is measured against)."""
    loaded = load_model(model, task_kind(task).encoder_ok, num_labels=2)[0]
    weights = {name: module.weight.detach() for name, module in loaded.named_modules() if hasattr(module, "weight")}
    return weights, 2 * sum(p.numel() for p in loaded.parameters())


def merge_sizes(folder: Path, weights: dict[str, torch.Tensor]) -> list[float]:
    """Each merge's per-element size relative to its weight, mean |scale * B A| / mean |W| (the measure of
    bench/merge_precision.py's table), from the run's ledger and the base model's ``weights`` by module."""
    state = load_state_file(folder / STATE)
    sizes = []
    for i, record in enumerate(state["meta"]["ledger"]):
        delta = record["scale"] * state["tensors"][f"ledger.{i}.B"] @ state["tensors"][f"ledger.{i}.A"]
        sizes.append(float(delta.abs().mean() / weights[record["module"]].abs().mean()))
    return sizes


def print_sizes(folders: list[Path]) -> None:
    """Per run folder: its learning rate, merges and each merge's size relative to its weight."""
    loaded = {}
    print("| run | learning rate | module merges | merge size / weight: median (range) |\n|---|---|---|---|")
    for folder in folders:
        if not (folder / STATE).exists():
            raise SystemExit(f"{folder} holds no {STATE}; pass finished loraboost run folders to --sizes.")
        options = json.loads((folder / "run.json").read_text())["options"]
        if options["model"] not in loaded:
            loaded[options["model"]] = base_weights(options["model"], options["task"])[0]
        sizes = sorted(merge_sizes(folder, loaded[options["model"]]))
        summary = f"{statistics.median(sizes):.1e} ({sizes[0]:.0e} - {sizes[-1]:.0e})" if sizes else "no merge"
        print(f"| {folder} | {options['learning_rate']:g} | {len(sizes)} | {summary} |")


def picked_lr(quality: Path, model: str, task: str) -> float:
    """XGBLoRA's learning rate as the quality benchmark picked it on validation."""
    if not quality.exists():
        raise SystemExit(f"{quality} does not exist; run bench/quality.py for {model} on {task} first, or pass --lr.")
    rows = json.loads(quality.read_text())["grid"].get(f"{model} on {task}", [])
    for row in rows:
        if row["name"] == "xgblora":
            return row["picked_lr"]
    raise SystemExit(f"{quality} has no XGBLoRA cell for {model} on {task}; run that cell first, or pass --lr.")


def report(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| variant | test accuracy (mean +- std) | per seed | merges | merge size / weight, median "
        "(range) | merged update kept by the forward weights | by weights + residual | forward change projected "
        f"on the update | test loss, per seed | loss reduction kept vs {EXACT}, per seed | memory merges add "
        "/ model in bf16 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        kept_loss = ", ".join(f"{k:.3f}" for k in r["loss_reduction_kept"]) if r.get("loss_reduction_kept") else "-"
        losses = ", ".join(f"{x:.4f}" for x in r["test_losses"]) if r.get("test_losses") else "-"
        lines.append(
            f"| {r['variant']} | {r['mean']:.3f} +- {r['std']:.3f} | {', '.join(f'{s:.3f}' for s in r['test_scores'])} "
            f"| {r['rounds_merged']} | {r['merge_size_median']:.1e} ({r['merge_size_range'][0]:.0e} - "
            f"{r['merge_size_range'][1]:.0e}) | {min(r['kept_forward']):.3%} - {max(r['kept_forward']):.3%} "
            f"| {min(r['kept_held']):.3%} - {max(r['kept_held']):.3%} "
            f"| {min(r.get('kept_projected', [1.0])):.3f} - {max(r.get('kept_projected', [1.0])):.3f} "
            f"| {losses} | {kept_loss} | {max(r.get('merge_memory_over_model', [float('nan')])):.1%} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="minilm")
    parser.add_argument("--task", choices=("movie-reviews", "trec"), default="trec")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated: {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps-factor", type=float, default=1.0, help="the quality benchmark's epochs times this")
    parser.add_argument("--lr", type=float, help="default: XGBLoRA's LR picked by bench/quality.py (see --quality)")
    parser.add_argument("--quality", type=Path, default=Path("runs/quality/quality.json"))
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side, each with cores/jobs torch threads")
    parser.add_argument("--output", type=Path, default=Path("runs/bf16_merges"))
    parser.add_argument(
        "--sizes",
        type=Path,
        nargs="+",
        metavar="RUN",
        help="only print the merge sizes of finished loraboost run folders, and train nothing",
    )
    args = parser.parse_args()
    if args.sizes:
        print_sizes(args.sizes)
        return
    variants = args.variants.split(",")
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"--variants has {v!r}, which is not one of {', '.join(VARIANTS)}.")
    seeds = [int(s) for s in args.seeds.split(",")]
    lr = args.lr or picked_lr(args.quality, args.model, args.task)
    epochs = MODELS[args.model]["epochs"] * args.steps_factor
    options = RunOptions(model=MODELS[args.model]["model"], data=args.task, save_steps=50, epochs=epochs, **SIZES)
    out = args.output / (f"{args.model}-{args.task}" + (f"-{args.steps_factor:g}x" if args.steps_factor != 1 else ""))
    threads = max(1, torch.get_num_threads() // args.jobs)

    jobs = {(v, s): (out / v / f"seed{s}", options, v, s, lr, threads) for v in variants for s in seeds}
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
        futures = {key: pool.submit(run_variant, *job) for key, job in jobs.items()}
        bases = {
            (bf16, s): pool.submit(base_test_loss, options, s, bf16, threads) for bf16 in (False, True) for s in seeds
        }
        summaries = {key: f.result() for key, f in futures.items()}
        base_loss = {key: f.result() for key, f in bases.items()}
    weights, model_bytes = base_weights(options.model, options.task)
    rows = []
    for v in variants:
        runs = [summaries[v, s] for s in seeds]
        sizes = sorted(size for s in seeds for size in merge_sizes(jobs[v, s][0], weights))
        scores = [r["metrics"]["test"]["accuracy"] for r in runs]
        losses = [r["metrics"]["test"]["loss"] for r in runs]
        rows.append(
            {
                "variant": v,
                "seeds": seeds,
                "test_scores": scores,
                "mean": statistics.fmean(scores),
                "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                "rounds_merged": runs[0]["rounds_merged"],
                "steps": runs[0]["steps"],
                "kept_forward": [r["kept"]["forward"] for r in runs],
                "kept_held": [r["kept"]["held"] for r in runs],
                "kept_projected": [r["kept"].get("projected", float("nan")) for r in runs],
                "merge_memory_over_model": [r["kept"].get("residual_bytes", float("nan")) / model_bytes for r in runs],
                "test_losses": losses,
                "base_test_losses": [base_loss[VARIANTS[v][0], s] for s in seeds],
                "merge_size_median": statistics.median(sizes),
                "merge_size_range": [sizes[0], sizes[-1]],
            }
        )
    exact = next((r for r in rows if r["variant"] == EXACT), None)
    for r in rows:
        if exact is not None and VARIANTS[r["variant"]][0]:  # a bf16 variant: the same base as the exact run
            r["loss_reduction_kept"] = [
                (base - mine) / (base - theirs)
                for base, mine, theirs in zip(r["base_test_losses"], r["test_losses"], exact["test_losses"])
            ]
    header = (
        f"XGBLoRA on {args.model} / {args.task}, lr {lr:g}, {rows[0]['steps']} steps, seeds {args.seeds}; "
        f"bf16 storage emulated (fp32 compute). Command: `python {' '.join(sys.argv)}`"
    )
    (out / "bf16_merges.json").write_text(json.dumps({"command": sys.argv, "lr": lr, "rows": rows}, indent=1))
    (out / "bf16_merges.md").write_text(report(rows, header))
    print(report(rows, header))


if __name__ == "__main__":
    main()
