"""Integration: the engine on the real SmolLM2-135M-Instruct (the embedded default), a few short rounds."""

import pytest
import torch
from conftest import base_weights
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraboost import BoostConfig, Booster
from loraboost.assets import default_model_dir
from loraboost.options import RunOptions
from loraboost.run import prepare

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def model_dir():
    return default_model_dir()


def test_xgblora_on_smollm2_merges_exactly_and_keeps_outputs(model_dir):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    booster = Booster(model, BoostConfig(method="xgblora", steps_per_round=2, layers_per_round=3, seed=0))
    assert len(booster.slots) == 30 * 7 and len(booster.live_slots) == 3 * 7
    texts = ["a gorgeous, witty, seductive movie .", "the plot is nothing but boilerplate clichés ."]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    original = base_weights(booster)
    opt = torch.optim.AdamW(booster.parameters(), lr=1e-3)
    for step in range(4):
        booster.model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
        booster.model.eval()
        with torch.no_grad():
            before = booster.model(**batch).logits
            changed = booster.step(opt)
            after = booster.model(**batch).logits
        booster.model.train()
        assert changed == (step % 2 == 1)
        torch.testing.assert_close(after, before, rtol=0, atol=1e-4)
    assert len(booster.ledger) == 2
    layer_of = {s.name: s.layer for s in booster.slots}
    for r in booster.ledger.rounds():
        assert {layer_of[m] for m in booster.ledger.modules(r)} == set(booster.plan.layers(r))
    for name in booster.ledger.modules():
        slot = next(s for s in booster.slots if s.name == name)
        change = slot.base_weight.detach() - original[name]
        delta = booster.ledger.delta(name)
        # A one-step delta is ~1e-3 of these weights, so adding it rounds away ~half an fp32 ulp per
        # element: the error must stay at that rounding level (relative to the weight, not the delta).
        eps = torch.finfo(torch.float32).eps
        assert (change - delta).norm() <= 2 * eps * slot.base_weight.detach().norm(), name
    answer = tokenizer.decode(
        booster.model.generate(
            **tokenizer("The capital of France is", return_tensors="pt"), max_new_tokens=3, do_sample=False
        )[0]
    )
    assert "Paris" in answer  # four tiny merges leave the model's knowledge intact


def test_an_encoders_new_head_is_drawn_from_the_runs_seed():
    """MiniLM gets a fresh classifier head; the same seed must give the same head whatever ran before."""

    def head(seed: int, rng_before: int) -> torch.Tensor:
        torch.manual_seed(rng_before)  # what other work left in the global RNG
        options = RunOptions(model="minilm", data="trec", train_size=8, test_size=8, seed=seed)
        model = prepare(options, BoostConfig(method="lora"))[0]
        return model.classifier.weight.detach().clone()

    assert torch.equal(head(seed=3, rng_before=0), head(seed=3, rng_before=1))
    assert not torch.equal(head(seed=3, rng_before=0), head(seed=4, rng_before=0))


def test_continued_pretraining_of_the_default_on_a_glob_and_a_one_step_run(model_dir, tmp_path):
    from loraboost.cli import main

    (tmp_path / "src" / "pkg").mkdir(parents=True)
    for i in range(8):
        (tmp_path / "src" / "pkg" / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 4)
    common = ["--model", "default", "--batch-size", "2", "--block-size", "32", "--train-size", "6", "--test-size", "2"]
    glob = str(tmp_path / "src" / "**" / "*.py")
    run = tmp_path / "lm"
    assert main(["train", "--task", "lm", "--data", glob, *common, "--max-steps", "5", "--output", str(run)]) == 0
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    # The smoke run users try first: one step on the embedded model and data.
    args = ["train", "--model", "default", "--max-steps", "1", "--train-size", "8", "--test-size", "8"]
    assert main([*args, "--batch-size", "4", "--output", str(tmp_path / "one")]) == 0
