"""persistent_rank: the first k ranks of every booster never merge and keep training (a LoRA of rank k that stays),
the other r - k merge and restart each round. Merges leave the model's output unchanged, the ledger holds only the
merged ranks, the exported adapter reproduces the model, a resume mid-round is bit-exact, and bad settings are
refused in one sentence."""

import pytest
import torch
from conftest import assert_resume_is_bit_exact, batches, tiny_gpt2, tiny_llama, train
from peft import PeftModel

from loraboost import BoostConfig, Booster

RANK, KEPT, KAPPA = 4, 1, 3


def hybrid(model, **extra) -> Booster:
    config = dict(method="lora", target_modules="all-linear", rank=RANK, persistent_rank=KEPT, rounds=None,
                  steps_per_round=KAPPA, optimizer_reset="keep", seed=1)  # fmt: skip
    return Booster(model, BoostConfig(**{**config, **extra}))


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2])  # GPT-2's Conv1D stores its weight transposed
def test_a_merge_keeps_the_persistent_ranks_and_restarts_the_rest_without_changing_the_output(make):
    data = batches("llama", KAPPA)
    booster = hybrid(make())
    optimizer = train(booster, data[:-1])[1]
    before = {s.name: s.base_weight.detach().clone() for s in booster.slots}
    loss = booster.model(**data[-1]).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    after_step = {s.name: (s.A.detach().clone(), s.B.detach().clone()) for s in booster.slots}
    booster.model.eval()
    with torch.no_grad():
        logits = booster.model(**data[0]).logits
    assert booster.step(optimizer)  # ends round 0: its chain part merges
    with torch.no_grad():
        torch.testing.assert_close(booster.model(**data[0]).logits, logits, atol=1e-5, rtol=0)
    entries = list(booster.ledger)
    assert len(entries) == len(booster.slots) and all(e.A.shape[0] == RANK - KEPT for e in entries)
    for slot, entry in zip(booster.slots, entries):
        A, B = after_step[slot.name]
        assert torch.equal(slot.A[:KEPT], A[:KEPT]) and torch.equal(slot.B[:, :KEPT], B[:, :KEPT])  # persists
        assert torch.equal(entry.A, A[KEPT:]) and torch.equal(entry.B, B[:, KEPT:])  # what merged
        assert not torch.equal(slot.A[KEPT:], A[KEPT:]) and not slot.B[:, KEPT:].any()  # a fresh chain part
        assert not torch.equal(slot.base_weight, before[slot.name])  # the merge reached the weight


def test_the_exported_adapter_reproduces_the_model_and_resume_is_bit_exact(tmp_path):
    data = batches("llama", 3 * KAPPA + 1)
    booster = hybrid(tiny_llama())
    train(booster, data)
    assert booster.round == 3
    adapter = booster.save_adapter(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(tiny_llama(), adapter).eval()
    booster.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**data[0]).logits, booster.model(**data[0]).logits, atol=1e-5, rtol=0)

    def fresh():
        b = hybrid(tiny_llama())
        return b, torch.optim.AdamW(b.parameters(), lr=1e-2)

    assert_resume_is_bit_exact(fresh, data, 2 * KAPPA + 1, tmp_path / "state.safetensors")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (dict(persistent_rank=4), "persistent_rank=4 leaves no rank to merge in a booster of rank=4"),
        (dict(persistent_rank=-1), "persistent_rank=-1 is not valid; use an integer >= 0"),
        (dict(optimizer_reset="reset"), "optimizer_reset='reset' does not allow; use optimizer_reset='keep'"),
        (dict(optimizer_reset="prune"), "optimizer_reset='prune' does not allow"),
        (dict(layers_per_round=1), "layers_per_round=1 does not allow; use layers_per_round=None"),
        (dict(frozen_factor="A"), "frozen_factor='A' does not allow"),
        (dict(round_init="gradient"), "round_init='gradient' does not allow"),
    ],
)
def test_settings_that_cannot_keep_a_part_are_refused(extra, message):
    config = dict(method="lora", rank=RANK, persistent_rank=KEPT, rounds=None, steps_per_round=KAPPA,
                  optimizer_reset="keep")  # fmt: skip
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        BoostConfig(**{**config, **extra})
