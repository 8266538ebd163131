"""The quality benchmark's protocol: the learning rate is picked on validation (never test), and a grid
whose best rate sits at its edge grows by half-decades before the pick is accepted."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
import quality  # noqa: E402  (the bench scripts import each other from bench/)
import quality_estimate as estimate_mod  # noqa: E402
import quality_plan as catalogue  # noqa: E402
import quality_report as report  # noqa: E402
import sweep  # noqa: E402


def test_half_decades_follow_the_1_3_10_ladder():
    assert [catalogue.half_decade(lr, up=True) for lr in (1e-4, 3e-4, 3e-3)] == [3e-4, 1e-3, 1e-2]
    assert [catalogue.half_decade(lr, up=False) for lr in (1e-5, 3e-5, 1e-3)] == [3e-6, 1e-5, 3e-4]


def fake_runs(monkeypatch, validation, test):
    """run_once replaced by a table: validation and test accuracy as functions of the rate and seed."""
    calls = []

    def run_once(folder, options, method, overrides, seed, lr):
        calls.append((seed, lr))
        return {
            "metrics": {"validation": {"accuracy": validation(lr)}, "test": {"accuracy": test(lr, seed)}},
            "live_trainable_parameters": 1,
            "trainable_parameters": 1,
            "optimizer_state_bytes": 8,
            "peak_memory_bytes": 1,
            "train_seconds": 1.0,
            "steps": 10,
            "rounds_merged": 0,
        }

    monkeypatch.setattr(sweep, "run_once", run_once)
    return calls


@pytest.mark.parametrize("peak, picked, edge", [(1e-3, 1e-3, False), (1e-2, 1e-2, False), (1.0, 3e-2, True)])
def test_grid_grows_towards_a_best_rate_at_its_edge(monkeypatch, tmp_path, peak, picked, edge):
    # Validation accuracy peaks at `peak`; test accuracy prefers another rate, and must not be looked at.
    calls = fake_runs(monkeypatch, validation=lambda lr: -abs(lr - peak), test=lambda lr, seed: lr)
    lora = catalogue.METHODS["lora-qv"]
    result = sweep.cell(tmp_path, catalogue.RunOptions(), "m", lora, [0, 1, 2], (3e-4, 1e-3, 3e-3))
    assert result["picked_lr"] == picked and result["lr_at_grid_edge"] == edge
    searched = {lr for seed, lr in calls if seed == 0}  # the picked rate is asked for twice on seed 0
    assert len(searched) <= 3 + sweep.MAX_EXTENSIONS
    assert [(seed, lr) for seed, lr in calls if seed != 0] == [(1, picked), (2, picked)]
    assert result["test_scores"] == [picked] * 3


@pytest.mark.parametrize("ablation", catalogue.ABLATIONS, ids=[a.name for a in catalogue.ABLATIONS])
def test_every_ablation_is_a_valid_config_that_differs_from_its_method(ablation):
    from loraboost import BoostConfig

    base = BoostConfig(**catalogue.METHODS[ablation.method].boost)
    variant = BoostConfig(**{**catalogue.METHODS[ablation.method].boost, **ablation.overrides})
    assert (variant != base or ablation.steps_factor != 1.0 or ablation.lr_steps) and variant.method == base.method


def test_an_ablation_runs_at_its_methods_rate_moved_along_the_ladder_or_picks_its_own():
    variant = catalogue.Ablation("v", "lora-qv", {}, "v")
    assert variant.learning_rate(1e-2) == 1e-2
    assert variant._replace(lr_steps=-1).learning_rate(1e-2) == 3e-3
    assert variant._replace(lr_steps=2).learning_rate(1e-3) == 1e-2
    assert variant._replace(own_lr=True).learning_rate(1e-2) is None


def test_run_cells_yields_every_job_once_with_or_without_a_pool():
    import concurrent.futures

    jobs = {f"job{i}": (pow, i, 2) for i in range(5)}
    assert dict(sweep.run_cells(None, jobs)) == {f"job{i}": i * i for i in range(5)}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        assert dict(sweep.run_cells(pool, jobs)) == {f"job{i}": i * i for i in range(5)}


def test_timing_note_says_when_train_times_were_taken_differently():
    base = {"name": "base"}
    alone = {"name": "lora-qv", "timed_as": ["one run at a time"]}
    paired = {"name": "xgblora", "timed_as": ["2 runs side by side, 1 torch thread(s) each"]}
    assert report.timing_note([base, alone]) == "Train times measured: one run at a time."
    assert report.timing_note([alone, paired]).count(";") == 1
    assert report.timing_note([base, {"name": "cola"}]) == "Train times measured: not recorded."
    assert (
        report.timing_note([alone, {"name": "cola"}])
        == "Train times measured: one run at a time; for some runs not recorded."
    )


def test_overview_has_a_row_per_method_a_column_per_cell_and_bolds_each_cells_best():
    def row(name, mean, seeds=3):
        return {"name": name, "label": name.upper(), "mean": mean, "std": 0.01, "test_scores": [mean] * seeds}

    sections = {"a": [row("base", 0.9), row("lora", 0.8), row("xgb", 0.7, seeds=5)], "b": [row("lora", 0.6)]}
    lines = report.overview(sections).splitlines()
    assert lines[0] == "| method | a | b |"
    assert lines[2] == "| BASE | 0.900 +- 0.010 | - |"  # the untrained base is never the best
    assert lines[3] == "| LORA | **0.800 +- 0.010** | **0.600 +- 0.010** |"
    assert lines[4] == "| XGB | 0.700 +- 0.010 (n=5) | - |"


def test_default_plan_names_only_known_models_tasks_and_methods():
    for (model, task), plan in catalogue.DEFAULT_PLAN.items():
        assert model in catalogue.MODELS and task in catalogue.TASKS
        assert set(plan.methods) <= {"base", *catalogue.METHODS}


def finished_run(folder, seconds, ran_as="one run at a time, 2 torch threads"):
    """A run folder whose run.json and summary.json are ``seconds`` apart, as a finished run leaves them."""
    import os

    folder.mkdir(parents=True)
    for name, when in (("run.json", 1000.0), ("summary.json", 1000.0 + seconds)):
        (folder / name).write_text("{}")
        os.utime(folder / name, (when, when))
    (folder / "ran_as.txt").write_text(ran_as)


def test_estimate_sums_each_runs_share_of_the_machine_for_the_chosen_seeds(tmp_path):
    cell = tmp_path / "minilm-trec" / "lora-qv"
    finished_run(cell / "lr0.001-seed0", 60)
    finished_run(cell / "lr0.003-seed0", 60)
    finished_run(cell / "lr0.003-seed1", 120, ran_as="2 runs side by side, 1 torch thread(s) each")  # 60 of the machine
    finished_run(cell / "lr0.003-seed4", 600)  # a seed not chosen
    (cell / "lr0.01-seed0").mkdir()  # started, never finished
    assert estimate_mod.recorded_seconds(cell / "lr0.003-seed1") == 60
    assert estimate_mod.recorded_seconds(cell / "lr0.01-seed0") is None
    report = estimate_mod.estimate(tmp_path, [("minilm", "trec", "lora-qv"), ("minilm", "trec", "cola")], [0, 1, 2])
    assert "minilm-trec/lora-qv: 3 runs, 3 min" in report
    assert "estimate: 0.1 h of machine time for the 1 cells" in report
    assert report.endswith("no finished runs to go by for: minilm-trec/cola")


def test_a_command_runs_what_it_names_else_the_default_plan():
    import argparse

    def args(**given):
        return argparse.Namespace(**{"part": "all", "methods": None, "ablations": None, "quick": False, **given})

    assert quality.chosen_methods(args(), "minilm", "trec") == list(catalogue.DEFAULT_PLAN["minilm", "trec"].methods)
    assert ("smollm2", "movie-reviews") not in catalogue.DEFAULT_PLAN
    assert quality.chosen_methods(args(), "smollm2", "movie-reviews") == []
    assert quality.chosen_methods(args(methods="cola"), "smollm2", "movie-reviews") == ["cola"]
    assert quality.chosen_methods(args(methods="all"), "smollm2", "movie-reviews") == ["base", *catalogue.METHODS]
    assert quality.chosen_methods(args(methods="gradient"), "minilm", "trec") == list(catalogue.GRADIENT_ROWS)
    assert not set(catalogue.GRADIENT_VARIANTS) & set(catalogue.DEFAULT_PLAN["minilm", "trec"].methods)
    assert quality.chosen_ablations(args(ablations="all"), "smollm2", "movie-reviews") == catalogue.ABLATIONS
    assert quality.chosen_methods(args(methods="cola", part="ablations"), "minilm", "trec") == []
    assert [a.name for a in quality.chosen_ablations(args(ablations="cola-2"), "smollm2", "movie-reviews")] == [
        "cola-2"
    ]
    assert quality.chosen_ablations(args(ablations="cola-2", part="grid"), "minilm", "trec") == []
    assert quality.chosen_ablations(args(), "minilm", "trec") == catalogue.ABLATIONS
    assert quality.chosen_ablations(args(), "smollm2", "trec") == []
    assert quality.chosen_ablations(args(quick=True), "minilm", "trec") == []


def test_a_model_runs_every_tasks_grid_before_any_ablation_and_ablations_at_the_picked_rate(monkeypatch, tmp_path):
    calls = []

    def cell(folder, options, name, method, seeds, lr_grid, overrides=None, picked_lr=None):
        calls.append((options.data, name, picked_lr))
        return {"name": name, "picked_lr": {"lora-qv": 3e-3, "xgblora": 1e-2}.get(name, 1e-3)}

    monkeypatch.setattr(quality, "cell", cell)
    monkeypatch.setattr(quality, "write", lambda results, out: None)
    results = {"grid": {}, "ablations": {}}
    kappa10, lower = catalogue.ABLATIONS[0], next(a for a in catalogue.ABLATIONS if a.name == "lora-lr-down")
    chosen = {"movie-reviews": (["cola"], [kappa10]), "trec": (["lora-qv"], [lower])}
    quality.run_model(results, tmp_path, None, "minilm", chosen, catalogue.QUICK_SIZES, [0], quick=False)
    # First the grid of both tasks, with the method that an ablation needs, each picking its own rate...
    grid, ablations = calls[:3], calls[3:]
    assert sorted(grid) == [
        ("movie-reviews", "cola", None),
        ("movie-reviews", "xgblora", None),
        ("trec", "lora-qv", None),
    ]
    # ...then the ablations at their method's picked rate (LoRA's moved one rung down).
    assert ablations == [("movie-reviews", "xgb-kappa10", 1e-2), ("trec", "lora-lr-down", 1e-3)]
    assert [r["name"] for r in results["ablations"]["minilm on trec"]] == ["lora-qv", "lora-lr-down"]
    assert [r["name"] for r in results["grid"]["minilm on movie-reviews"]] == ["cola", "xgblora"]


def summary_row(name, scores):
    import statistics

    return {
        "name": name,
        "label": name.upper(),
        "mean": statistics.fmean(scores),
        "std": statistics.stdev(scores),
        "test_scores": scores,
    }


def test_gap_closed_is_each_methods_share_of_the_gap_from_lora_to_full_and_says_when_the_gap_is_noise():
    clear = [
        summary_row("base", [0.1, 0.1, 0.1]),
        summary_row("full", [0.9, 0.91, 0.89]),
        summary_row("lora-qv", [0.8, 0.81, 0.79]),
        summary_row("xgblora", [0.85, 0.86, 0.84]),
        summary_row("cola", [0.75, 0.76, 0.74]),
    ]
    noisy = [
        summary_row("full", [0.9, 0.8, 1.0]),
        summary_row("lora-qv", [0.85, 0.8, 0.9]),
        summary_row("xgblora", [0.9, 0.9, 0.9]),
    ]
    behind = [summary_row("full", [0.7, 0.7, 0.71]), summary_row("lora-qv", [0.8, 0.8, 0.81])]
    text = report.gap_closed({"clear": clear, "noisy": noisy, "behind": behind})
    assert (
        "clear: full 0.900 +- 0.010, LoRA r8 q/v 0.800 +- 0.010, gap 0.100 (12.5% of base -> full); a clear gap" in text
    )
    assert "noisy: " in text and "**not a clear gap**" in text and "behind:" not in text  # full does not lead there
    assert "| method | clear | noisy |" in text
    assert "| XGBLORA | +0.50 | +1.00 |" in text and "| COLA | -0.50 | - |" in text
    assert report.gap_closed({"behind": behind}).startswith("Full fine-tuning leads LoRA r8 q/v in no cell")
    assert report.gap_closed({"clear": clear[:3]}).endswith("No other method has run in these cells yet.")


def test_validation_curve_reads_every_seeds_scored_steps_and_the_merges(tmp_path):
    import json

    folders = []
    for seed, accuracies in enumerate([(0.5, 0.7), (0.4, 0.8)]):
        folder = tmp_path / f"seed{seed}"
        folder.mkdir()
        rows = [{"step": step, "round": (step - 1) // 2, "loss": 1.0} for step in (1, 2, 3, 4)]
        rows.insert(2, {"step": 2, "round": 0, "validation_accuracy": accuracies[0]})
        rows.append({"step": 4, "round": 1, "validation_accuracy": accuracies[1]})
        (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        folders.append(folder)
    assert sweep.validation_curve(folders) == {
        "metric": "accuracy",
        "steps": [2, 4],
        "by_seed": [[0.5, 0.7], [0.4, 0.8]],
        "round_ends": [2],
    }


def test_the_capacity_cell_has_its_own_sizes_and_budget_and_runs_only_where_it_can():
    import argparse

    options = catalogue.cell_options("minilm", "word-valence", catalogue.SIZES, quick=False)
    steps = options.train_size // options.batch_size * options.epochs
    assert steps >= 600 and options.validation_size and options.test_size == 2000  # XGBLoRA merges 12+ times
    assert catalogue.cell_options("minilm", "trec", catalogue.SIZES, quick=False).train_size == 1000  # the protocol's
    assert catalogue.cell_options("minilm", "trec-fine", catalogue.QUICK_SIZES, quick=True).epochs == 1.0
    args = argparse.Namespace(part="all", methods="capacity", ablations=None, quick=False)
    assert quality.chosen_methods(args, "minilm", "word-valence") == list(catalogue.CAPACITY_GRID)
    assert set(catalogue.CAPACITY_GRID) - {"base"} <= set(catalogue.METHODS)
    assert quality.chosen_methods(args, "smollm2", "trec-fine") == []  # no label words for a causal LM


def test_a_loss_cell_picks_and_ranks_the_lowest_and_says_lower_is_better(monkeypatch, tmp_path):
    # Validation loss is lowest at 1e-3; the pick must follow the loss down, not up.
    fake_runs(monkeypatch, validation=lambda lr: abs(lr - 1e-3), test=lambda lr, seed: 2.0 + seed / 100)
    original = sweep.run_once

    def as_loss(folder, options, method, overrides, seed, lr):
        summary = original(folder, options, method, overrides, seed, lr)
        summary["metrics"] = {split: {"loss": values["accuracy"]} for split, values in summary["metrics"].items()}
        return summary

    monkeypatch.setattr(sweep, "run_once", as_loss)
    options = catalogue.RunOptions(data="movie-dialog", task="sft")
    result = sweep.cell(tmp_path, options, "m", catalogue.METHODS["lora-qv"], [0, 1, 2], (3e-4, 1e-3, 3e-3))
    assert result["picked_lr"] == 1e-3 and result["metric"] == "loss"
    rows = [
        {**summary_row("base", [3.0, 3.1, 3.2]), "metric": "loss"},
        {**summary_row("full", [2.0, 2.01, 1.99]), "metric": "loss"},
        {**summary_row("lora-qv", [2.2, 2.21, 2.19]), "metric": "loss"},
        {**summary_row("xgblora", [2.1, 2.11, 2.09]), "metric": "loss"},
    ]
    assert "| FULL | 3.100" not in report.overview({"dialog": rows})
    assert "| method | dialog: loss (lower is better) |" in report.overview({"dialog": rows})
    assert "| FULL | **2.000 +- 0.010** |" in report.overview({"dialog": rows})  # the lowest loss is the best
    text = report.gap_closed({"dialog": rows})
    assert "gap 0.200" in text and "a clear gap" in text and "| XGBLORA | +0.50 |" in text
    assert "test loss (lower is better)" in report.table([result])
