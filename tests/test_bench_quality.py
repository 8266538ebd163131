"""The quality benchmark's protocol: the learning rate is picked on validation (never test), and a grid
whose best rate sits at its edge grows by half-decades before the pick is accepted."""

import importlib.util
import sys
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("quality", Path(__file__).parents[1] / "bench" / "quality.py")
quality = sys.modules["quality"] = importlib.util.module_from_spec(SPEC)  # dataclasses look their module up
SPEC.loader.exec_module(quality)


def test_half_decades_follow_the_1_3_10_ladder():
    assert [quality.half_decade(lr, up=True) for lr in (1e-4, 3e-4, 3e-3)] == [3e-4, 1e-3, 1e-2]
    assert [quality.half_decade(lr, up=False) for lr in (1e-5, 3e-5, 1e-3)] == [3e-6, 1e-5, 3e-4]


def fake_runs(monkeypatch, validation, test):
    """run_once replaced by a table: validation and test accuracy as functions of the rate and seed."""
    calls = []

    def run_once(folder, options, method, overrides, seed, lr):
        calls.append((seed, lr))
        return {"metrics": {"validation": {"accuracy": validation(lr)}, "test": {"accuracy": test(lr, seed)}},
                "live_trainable_parameters": 1, "trainable_parameters": 1, "optimizer_state_bytes": 8,
                "peak_memory_bytes": 1, "train_seconds": 1.0, "steps": 10, "rounds_merged": 0}

    monkeypatch.setattr(quality, "run_once", run_once)
    return calls


@pytest.mark.parametrize("peak, picked, edge", [(1e-3, 1e-3, False), (1e-2, 1e-2, False), (1.0, 3e-2, True)])
def test_grid_grows_towards_a_best_rate_at_its_edge(monkeypatch, tmp_path, peak, picked, edge):
    # Validation accuracy peaks at `peak`; test accuracy prefers another rate, and must not be looked at.
    calls = fake_runs(monkeypatch, validation=lambda lr: -abs(lr - peak), test=lambda lr, seed: lr)
    result = quality.cell(tmp_path, None, "m", quality.METHODS["lora-qv"], [0, 1, 2], (3e-4, 1e-3, 3e-3))
    assert result["picked_lr"] == picked and result["lr_at_grid_edge"] == edge
    searched = {lr for seed, lr in calls if seed == 0}  # the picked rate is asked for twice on seed 0
    assert len(searched) <= 3 + quality.MAX_EXTENSIONS
    assert [(seed, lr) for seed, lr in calls if seed != 0] == [(1, picked), (2, picked)]
    assert result["test_scores"] == [picked] * 3


@pytest.mark.parametrize("ablation", quality.ABLATIONS, ids=[a.name for a in quality.ABLATIONS])
def test_every_ablation_is_a_valid_config_that_differs_from_its_method(ablation):
    from loraboost import BoostConfig

    base = BoostConfig(**quality.METHODS[ablation.method].boost)
    variant = BoostConfig(**{**quality.METHODS[ablation.method].boost, **ablation.overrides})
    assert (variant != base or ablation.steps_factor != 1.0 or ablation.lr_steps) and variant.method == base.method


def test_an_ablation_runs_at_its_methods_rate_moved_along_the_ladder_or_picks_its_own():
    variant = quality.Ablation("v", "lora-qv", {}, "v")
    assert variant.learning_rate(1e-2) == 1e-2
    assert variant._replace(lr_steps=-1).learning_rate(1e-2) == 3e-3
    assert variant._replace(lr_steps=2).learning_rate(1e-3) == 1e-2
    assert variant._replace(own_lr=True).learning_rate(1e-2) is None


def test_run_cells_yields_every_job_once_with_or_without_a_pool():
    import concurrent.futures

    jobs = {f"job{i}": (pow, i, 2) for i in range(5)}
    assert dict(quality.run_cells(None, jobs)) == {f"job{i}": i * i for i in range(5)}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        assert dict(quality.run_cells(pool, jobs)) == {f"job{i}": i * i for i in range(5)}


def test_timing_note_says_when_train_times_were_taken_differently():
    base = {"name": "base"}
    alone = {"name": "lora-qv", "timed_as": ["one run at a time"]}
    paired = {"name": "xgblora", "timed_as": ["2 runs side by side, 1 torch thread(s) each"]}
    assert quality.timing_note([base, alone]) == "Train times measured: one run at a time."
    assert quality.timing_note([alone, paired]).count(";") == 1
    assert "not recorded" in quality.timing_note([base, {"name": "cola"}])


def test_overview_has_a_row_per_method_a_column_per_cell_and_bolds_each_cells_best():
    def row(name, mean, seeds=3):
        return {"name": name, "label": name.upper(), "mean": mean, "std": 0.01, "test_scores": [mean] * seeds}
    sections = {"a": [row("base", 0.9), row("lora", 0.8), row("xgb", 0.7, seeds=5)], "b": [row("lora", 0.6)]}
    lines = quality.overview(sections).splitlines()
    assert lines[0] == "| method | a | b |"
    assert lines[2] == "| BASE | 0.900 +- 0.010 | - |"  # the untrained base is never the best
    assert lines[3] == "| LORA | **0.800 +- 0.010** | **0.600 +- 0.010** |"
    assert lines[4] == "| XGB | 0.700 +- 0.010 (n=5) | - |"
