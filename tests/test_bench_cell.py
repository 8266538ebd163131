"""The capacity cell on a smaller shape: its base builds the same bytes twice, and one arm continues
pre-training it on the held-out Python files, scored on test and on the held-out dialog (forgetting)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
import capacity_cell  # noqa: E402
import quality_plan  # noqa: E402

from loraboost.arms import ARMS  # noqa: E402
from loraboost.run import train  # noqa: E402

SMALL = dict(vocab=320, width=16, layers=2, heads=2, ffn=32, steps=3, batch=2, block=16, limit=12, forget=30)


def test_the_cell_builds_the_same_base_twice_and_an_arm_adapts_it(tmp_path):
    first = capacity_cell.build(tmp_path / "a", **SMALL)
    second = capacity_cell.build(tmp_path / "b", **SMALL)
    assert first["loss_curve"] == second["loss_curve"] and first["documents"]["adapt_files"] == 8
    for name in ("base/model.safetensors", "base/tokenizer.json", "adapt.jsonl", "forget.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert capacity_cell.build(tmp_path / "a", **SMALL) == first  # built once, then reused

    settings = dict(
        quality_plan.RANK_CELL,
        data=str(tmp_path / "a" / "adapt.jsonl"),
        forget_data=str(tmp_path / "a" / "forget.jsonl"),
        train_size=4,
        validation_size=2,
        test_size=2,
        max_steps=2,
        block_size=16,
        batch_size=2,
    )
    options = quality_plan.RunOptions(model=str(tmp_path / "a" / "base"), output=str(tmp_path / "run"), **settings)
    summary = train(options, ARMS["lora-all"])
    metrics = summary["metrics"]
    assert summary["steps"] == 2 and metrics["test"]["loss"] > 0 and metrics["forget"]["loss"] > 0
    assert set(metrics) == {"validation", "test", "forget"}


def test_the_cell_report_gives_each_arm_its_share_of_the_gaps_and_its_forgetting(tmp_path):
    import rank_cell_report

    def row(name, losses, forget, seconds=10.0):
        mean = sum(losses) / len(losses)
        spread = (sum((x - mean) ** 2 for x in losses) / (len(losses) - 1)) ** 0.5
        return dict(name=name, label=name, mean=mean, std=spread, test_scores=losses, seeds=[0, 1, 2],
                    forget_mean=forget, live_trainable_parameters=1, optimizer_state_bytes=0,
                    train_seconds=seconds)  # fmt: skip

    rows = [
        row("base", [3.5, 3.5, 3.5], 4.0, 0.0),
        row("full", [3.0, 3.01, 2.99], 5.0, 20.0),
        row("full-blocks", [3.1, 3.1, 3.1], 4.8),
        row("lora-qv", [3.45, 3.45, 3.45], 4.3),
        row("lora-all", [3.4, 3.41, 3.39], 4.4),
        row("xgblora", [3.2, 3.2, 3.2], 4.5),
    ]
    text = rank_cell_report.forgetting_section(rows)
    xgb = next(line for line in text.splitlines() if line.startswith("| xgblora |"))
    # From LoRA r8 all-linear (3.4) to full (3.0): XGBLoRA at 3.2 closes half; to full-blocks (3.1), two thirds.
    assert "| +0.50 |" in xgb and "| +0.67 |" in xgb and "| 4.500 |" in xgb
    assert "2.00x" in next(line for line in text.splitlines() if line.startswith("| full |"))
    assert "| -0.200 +- 0.010 |" in xgb  # against LoRA r8 all-linear, seed by seed on the same split
    assert "the bar is met" in text and "more than twice its std" in text  # 0.4 of a 0.5 span, far beyond the std
    # Seeds that score other files: the rows' stds hold the split, and only the same-split gaps stay tight.
    shifted = [dict(r, test_scores=[x + d for x, d in zip(r["test_scores"], (0.0, 0.3, -0.3))]) for r in rows]
    for r in shifted:
        mean = sum(r["test_scores"]) / 3
        r.update(mean=mean, std=(sum((x - mean) ** 2 for x in r["test_scores"]) / 2) ** 0.5)
    verdict = rank_cell_report.forgetting_section(shifted).splitlines()[-1]
    assert "the bar is **not met**" in verdict and "more than twice its std" in verdict
    rank_cell_report.plot_learning_vs_forgetting({"grid": {"tiny-llama on python-code": rows}}, tmp_path)
    assert (tmp_path / "rank_cell.png").stat().st_size > 10_000


def test_every_screened_variant_keeps_lora_all_linear_live_parameters():
    import cell_screen
    import transformers

    from loraboost import BoostConfig, Booster

    def live_parameters(values: dict) -> int:
        # The capacity cell's block shapes (width 128, MLP 352, 6 blocks) with a small vocabulary.
        config = transformers.LlamaConfig(
            vocab_size=64, hidden_size=128, intermediate_size=352, num_hidden_layers=6, num_attention_heads=4
        )
        booster = Booster(transformers.LlamaForCausalLM(config), BoostConfig(**values, seed=0), total_steps=600)
        return sum(p.numel() for s in booster.live_slots for p in (s.A, s.B) if p.requires_grad)

    budget = live_parameters(ARMS["lora-all"].boost)
    assert budget == 118_272  # what the grid's summary.json reports for lora-all on the cell
    for name, (_, values, rates) in cell_screen.VARIANTS.items():
        assert live_parameters(values) <= budget, name
        assert rates and all(0 < lr < 1 for lr in rates), name


def test_the_screen_table_puts_variants_beside_the_grid_rows(tmp_path):
    import json

    import cell_screen

    quality = {
        "grid": {
            "tiny-llama on python-code": [
                {"name": "lora-all", "seeds": [0, 1], "picked_lr": 0.01, "validation_by_lr": {"0.01": 3.7},
                 "test_scores": [3.5, 3.9], "forget_scores": [4.7, 4.6], "live_trainable_parameters": 10},
                {"name": "xgblora", "seeds": [0], "picked_lr": 0.01, "validation_by_lr": {}, "test_scores": [3.6],
                 "forget_scores": [4.2], "live_trainable_parameters": 1},
            ]
        }
    }  # fmt: skip
    (tmp_path / "quality.json").write_text(json.dumps(quality))
    references = cell_screen.references(tmp_path / "quality.json")
    assert references == {
        "lora-all": {
            "learning_rate": 0.01,
            "validation": 3.7,
            "test": 3.5,
            "forget": 4.7,
            "live_trainable_parameters": 10,
        }
    }
    run = {"metrics": {s: {"loss": 3.0} for s in ("validation", "test", "forget")}, "live_trainable_parameters": 9}
    text = cell_screen.table(
        {"references": references, "variants": {"v": {"0.003": {**run, "train_loss_by_100": [3.1]}}}}
    )
    assert "| lora-all (3-seed grid, seed 0) | 0.01 | 3.7000 | 3.5000 | 4.7000 | 10 | |" in text
    assert "| v | 0.003 | 3.0000 | 3.0000 | 3.0000 | 9 | [3.1] |" in text


def test_the_update_spectrum_counts_the_directions_a_weight_change_uses():
    import torch
    import update_spectrum

    # A change along 10 orthogonal directions with singular values 10, 9, ..., 1.
    u, _ = torch.linalg.qr(torch.randn(40, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    v, _ = torch.linalg.qr(torch.randn(30, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    s = torch.arange(10, 0, -1, dtype=torch.float64)
    found = update_spectrum.spectrum(u @ torch.diag(s) @ v.T)
    energy = s.square()
    assert abs(found["top8_energy"] - float(energy[:8].sum() / energy.sum())) < 1e-9
    assert found["rank_90"] == 6  # 355 / 385 = 0.92 of the energy in the top 6; 330 / 385 = 0.86 in 5
    assert abs(found["stable_rank"] - float(energy.sum() / 100)) < 1e-9
    assert abs(found["norm"] - float(energy.sum().sqrt())) < 1e-9
    assert update_spectrum.spectrum(torch.zeros(4, 3, dtype=torch.float64))["rank_90"] == 0
