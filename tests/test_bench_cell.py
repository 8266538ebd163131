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
