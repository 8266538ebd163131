"""A folded ledger (fold_ledger): once a module's merged factors outgrow its weight they are kept as their sum, so
the ledger stays within the adapted weights' fp32 bytes; the exported adapter still reproduces the model, and a
run resumed from a state saved after folds ends bit for bit where the straight run does (fp32, and bf16 with a
residual)."""

import pytest
import torch
from conftest import assert_resume_is_bit_exact, batches, tiny_llama, train
from peft import PeftModel

from loraboost import BoostConfig, Booster

STEPS = 12


def config(fold: bool, **extra) -> BoostConfig:
    # Rank 4 on every linear layer of width 32, a merge every step: a 32 x 32 module's factors pass its weight
    # (4 r (out + in) per round > 4 out in) after 5 rounds, 32 x 64 ones after 6.
    return BoostConfig(
        method="lora", rank=4, target_modules="all-linear", rounds=None, steps_per_round=1, fold_ledger=fold, **extra
    )


def adapted_bytes(booster) -> int:
    return sum(4 * s.shape[0] * s.shape[1] for s in booster.slots)


def test_the_folded_ledger_stays_within_the_weights_and_exports_exactly(tmp_path):
    data = batches("llama", STEPS, size=2, length=8)
    plain = Booster(tiny_llama(layers=2), config(fold=False))
    train(plain, data)
    folded = Booster(tiny_llama(layers=2), config(fold=True))
    train(folded, data)
    assert plain.ledger.nbytes > 2 * adapted_bytes(plain)  # 12 rounds of rank 4: the factors outgrow the weights
    assert folded.ledger.nbytes <= adapted_bytes(folded) and folded.ledger.folded
    assert len(folded.ledger) == len(plain.ledger) == STEPS
    for slot, twin in zip(folded.slots, plain.slots):  # folding stores the sum; the training is the same
        assert torch.equal(slot.base_weight, twin.base_weight)
        torch.testing.assert_close(folded.ledger.delta(slot.name), plain.ledger.delta(slot.name), atol=1e-6, rtol=0)

    folded.save_adapter(tmp_path / "adapter")
    adapted = PeftModel.from_pretrained(tiny_llama(layers=2), tmp_path / "adapter").merge_and_unload()
    for slot in folded.slots:
        live = folded.config.lora_scaling * slot.B.detach() @ slot.A.detach()
        expected = folded.merged_weight(slot) + live
        torch.testing.assert_close(adapted.get_submodule(slot.name).weight, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_run_resumed_after_folds_is_bit_identical(tmp_path, dtype):
    data = batches("llama", STEPS, size=2, length=8)
    extra = {"merge_residual": "residual"} if dtype == torch.bfloat16 else {}

    def fresh():
        booster = Booster(tiny_llama(layers=2).to(dtype), config(fold=True, **extra))
        return booster, torch.optim.AdamW(booster.parameters(), lr=1e-2)

    def folded(booster):
        assert booster.ledger.folded  # the state holds folded modules

    assert_resume_is_bit_exact(fresh, data, 7, tmp_path / "state.safetensors", at_stop=folded)
