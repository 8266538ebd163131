"""Arms side by side: booster presets, full fine-tuning and the optimizer peers (GaLore, APOLLO) through the
command line on a tiny model; each row's own label and memory; resume of a peer; bad arms refused."""

import json
import os
import signal
import sys

import pytest
import torch
import transformers
from conftest import train_args
from safetensors.torch import load_file

from loraboost.arms import ARMS, get_arm
from loraboost.cli import main
from loraboost.config import PRESETS, BoostConfig


def compare_args(tiny_model, reviews_csv, out, methods, *extra):
    return [
        "compare", "--methods", methods, "--seeds", "0", "--model", str(tiny_model), "--data", str(reviews_csv),
        "--output", str(out), "--train-size", "32", "--test-size", "16", "--batch-size", "8", "--max-steps", "4",
        "--steps-per-round", "2", "--learning-rate", "0.01", "--save-steps", "100", *extra,
    ]  # fmt: skip


def test_compare_puts_boosters_full_galore_and_apollo_mini_in_one_table(tiny_model, reviews_csv, tmp_path):
    out = tmp_path / "cmp"
    methods = "lora,full,galore,apollo-mini,xgblora"
    assert main(compare_args(tiny_model, reviews_csv, out, methods, "--rank", "4")) == 0
    rows = {r["method"]: r for r in json.loads((out / "compare.json").read_text())["rows"]}
    assert list(rows) == ["base (untuned)", "lora", "full", "galore", "apollo-mini", "xgblora"]
    for name in methods.split(","):
        row, summary = rows[name], json.loads((out / f"{name}-seed0" / "summary.json").read_text())
        assert row["label"] == ARMS[name].label and summary["method"] == name
        assert row["trainable_parameters"] > 0 and row["optimizer_state_bytes"] > 0 and row["peak_memory_bytes"] > 0
    weights = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_pretrained(tiny_model).parameters())
    assert rows["full"]["trainable_parameters"] == rows["galore"]["trainable_parameters"] == weights
    # The peers step every weight, but keep their moments in the projected space: less state than full AdamW.
    assert rows["galore"]["optimizer_state_bytes"] < rows["full"]["optimizer_state_bytes"]
    assert rows["xgblora"]["rounds_merged"] == 2 and rows["galore"]["rounds_merged"] == 0
    assert "| galore | GaLore" in (out / "compare.md").read_text()
    # The peers trained their own way: the saved models differ from each other and from full fine-tuning's.
    peers = ("full", "galore", "apollo-mini")
    saved = {n: load_file(out / f"{n}-seed0" / "model" / "model.safetensors") for n in peers}
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(saved["full"][key], saved["galore"][key])
    assert not torch.equal(saved["galore"][key], saved["apollo-mini"][key])


def test_galore_counts_its_projection_matrices_as_optimizer_state():
    from galore_torch import GaLoreAdamW

    from loraboost.monitors import optimizer_state_bytes

    weight = torch.nn.Parameter(torch.randn(16, 32))
    optimizer = GaLoreAdamW([{"params": [weight], "rank": 2, "update_proj_gap": 10, "scale": 0.25, "proj_type": "std"}])
    weight.grad = torch.randn(16, 32)
    optimizer.step()
    # Two moments of the projected 2 x 32 gradient, and the 16 x 2 projection: (2 * 64 + 32) floats.
    assert optimizer_state_bytes(optimizer) == 4 * (2 * 2 * 32 + 16 * 2)


@pytest.mark.parametrize("method", ["galore", "apollo"])
def test_a_peer_resumes_bit_exactly_after_ctrl_c(method, tiny_model, reviews_csv, tmp_path, monkeypatch, capsys):
    import loraboost.run as run_module

    base = ["--method", method, "--rank", "4", "--steps-per-round", "2"]
    straight = tmp_path / "straight"
    assert main(train_args(tiny_model, reviews_csv, straight, *base)) == 0

    class CtrlCAtStep3(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGINT)

    original = run_module.TaskTrainer.__init__
    monkeypatch.setattr(
        run_module.TaskTrainer,
        "__init__",
        lambda self, *a, callbacks, **k: original(self, *a, callbacks=[*callbacks, CtrlCAtStep3()], **k),
    )
    run = tmp_path / "run"
    assert main(train_args(tiny_model, reviews_csv, run, *base)) == 130
    monkeypatch.setattr(run_module.TaskTrainer, "__init__", original)
    assert main([*train_args(tiny_model, reviews_csv, run, *base), "--resume"]) == 0
    # The projections are refreshed every 2 steps, across the stop at step 3: the weights end identical.
    resumed, reference = (load_file(f / "model" / "model.safetensors") for f in (run, straight))
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


def test_full_blocks_trains_only_the_blocks_linear_weights(tiny_model, reviews_csv, tmp_path):
    run = tmp_path / "run"
    assert main(train_args(tiny_model, reviews_csv, run, "--method", "full-blocks")) == 0
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_model)
    tuned = transformers.AutoModelForCausalLM.from_pretrained(run / "model")
    changed = {n for n, p in tuned.named_parameters() if not torch.equal(p, base.get_parameter(n))}
    linear = {f"{n}.weight" for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}
    assert changed == linear  # embeddings, norms and the tied head untouched
    summary = json.loads((run / "summary.json").read_text())
    assert summary["trainable_parameters"] == sum(base.get_parameter(n).numel() for n in linear)


@pytest.mark.parametrize(
    "case, words",
    [
        ("unknown arm", "method='adafactor' is not a known method"),
        ("missing peer", "needs the galore-torch package, which is not installed; install it with pip install"),
        ("rank on full", "--rank does not apply to --method full"),
        ("round option on a peer", "--rounds does not apply to --method galore"),
        ("layer-wise peer under DDP", "updates each layer inside backward, which DDP does not support"),
        ("full-finetune with another method", "--full-finetune is the same as --method full"),
    ],
)
def test_a_bad_arm_exits_2_with_one_sentence_and_no_folder(case, words, tiny_model, reviews_csv, tmp_path, monkeypatch,
                                                           capsys):  # fmt: skip
    extra = {
        "unknown arm": ["--method", "adafactor"],
        "missing peer": ["--method", "galore"],
        "rank on full": ["--method", "full", "--rank", "4"],
        "round option on a peer": ["--method", "galore", "--rounds", "3"],
        "layer-wise peer under DDP": ["--method", "galore-layerwise"],
        "full-finetune with another method": ["--full-finetune", "--method", "lora"],
    }[case]
    if case == "missing peer":
        monkeypatch.setitem(sys.modules, "galore_torch", None)  # what an import of a missing package raises
    if case == "layer-wise peer under DDP":
        monkeypatch.setenv("WORLD_SIZE", "2")
    run = tmp_path / "run"
    assert main(train_args(tiny_model, reviews_csv, run, *extra)) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and words in errors[0], errors
    assert errors[0].endswith(".") and errors[0].count(". ") == 0
    assert not run.exists()


def test_compare_refuses_full_finetune_and_a_repeated_method(tiny_model, reviews_csv, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main([*compare_args(tiny_model, reviews_csv, out, "lora,xgblora"), "--full-finetune"]) == 2
    assert "list full in --methods" in capsys.readouterr().err
    assert main(compare_args(tiny_model, reviews_csv, out, "lora,lora")) == 2
    assert "names 'lora' twice" in capsys.readouterr().err
    assert not out.exists()


def test_every_preset_is_an_arm_with_the_same_config():
    for name in PRESETS:
        arm = get_arm(name)
        assert arm.kind == "booster" and arm.booster_config(seed=3) == BoostConfig(method=name, seed=3)
    assert {get_arm(n).kind for n in ("full", "full-blocks")} == {"full"}
    assert {get_arm(n).kind for n in ("galore", "apollo", "apollo-mini")} == {"peer"}
