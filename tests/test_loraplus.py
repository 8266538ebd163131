"""LoRA+ as a run option: the adapters' B factors train at loraplus_lr_ratio times A's rate (PEFT's grouping), in
plain LoRA and in a chain of boosters alike; a method without adapters refuses it before any file is written."""

import json
import shutil

import pytest
import torch
from test_tasks import code_dir, lm_args  # noqa: F401 (code_dir is a fixture)

from loraboost.cli import main
from loraboost.options import RunOptions


def group_rates(run):
    """(parameter count, peak learning rate) of each non-empty group in the run's last optimizer checkpoint."""
    state = torch.load(run / "checkpoint-5" / "optimizer.pt", weights_only=True)
    return [(len(group["params"]), group["initial_lr"]) for group in state["param_groups"] if group["params"]]


@pytest.mark.parametrize("method", ["lora", "cola"])
def test_b_factors_train_at_the_ratio_times_a_rate(method, tiny_model, code_dir, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    args = lm_args(tiny_model, f"{code_dir}/**/*.py", run, "--method", method, "--loraplus-lr-ratio", "16")
    assert main(args) == 0
    (a_count, a_rate), (b_count, b_rate) = group_rates(run)
    assert a_count == b_count > 0  # one A and one B per adapted module
    assert b_rate == pytest.approx(16 * a_rate) and a_rate > 0
    assert json.loads((run / "run.json").read_text())["options"]["loraplus_lr_ratio"] == 16
    plain = tmp_path / "plain"
    assert main(lm_args(tiny_model, f"{code_dir}/**/*.py", plain, "--method", method)) == 0
    (count, rate), *rest = group_rates(plain)
    assert rate == pytest.approx(a_rate) and all(r == pytest.approx(rate) for _, r in rest)


def test_a_method_without_adapters_refuses_it_and_writes_nothing(tiny_model, code_dir, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "run"
    args = lm_args(tiny_model, f"{code_dir}/**/*.py", run, "--method", "full", "--loraplus-lr-ratio", "16")
    assert main(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "loraplus_lr_ratio=16 " in errors[0] and "'full' trains no adapters" in errors[0]
    assert not run.exists()


@pytest.mark.parametrize("ratio", [0.5, float("inf"), "16"])
def test_a_ratio_below_one_or_not_a_number_is_one_sentence(ratio):
    with pytest.raises(ValueError, match=r"loraplus_lr_ratio=.* is not valid; use a number >= 1"):
        RunOptions(loraplus_lr_ratio=ratio)


def test_a_run_killed_mid_way_resumes_its_rate_groups_to_the_same_bytes(tiny_model, code_dir, tmp_path):  # noqa: F811
    extra = ["--method", "cola", "--loraplus-lr-ratio", "16", "--max-steps", "4", "--save-steps", "2"]
    done = tmp_path / "done"
    assert main(lm_args(tiny_model, f"{code_dir}/**/*.py", done, *extra)) == 0
    killed = tmp_path / "killed"  # as if killed after step 2's checkpoint: the Trainer reloads the grouped optimizer
    shutil.copytree(done, killed)
    for name in ("checkpoint-4", "adapter", "model"):
        shutil.rmtree(killed / name, ignore_errors=True)
    for name in ("summary.json", "booster_state.safetensors"):
        (killed / name).unlink(missing_ok=True)
    metrics = killed / "metrics.jsonl"  # step 1's row marked: a resume keeps it, a run from scratch would not
    rows = metrics.read_text().splitlines()
    metrics.write_text("\n".join([json.dumps({**json.loads(rows[0]), "marked": True}), *rows[1:]]) + "\n")
    assert main([*lm_args(tiny_model, f"{code_dir}/**/*.py", killed, *extra), "--resume"]) == 0
    assert json.loads(metrics.read_text().splitlines()[0]).get("marked")
    adapter = "adapter/adapter_model.safetensors"
    assert (killed / adapter).read_bytes() == (done / adapter).read_bytes()
