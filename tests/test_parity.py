"""Our `lora` preset against plain PEFT LoRA: same base, same initial factors, same data, same losses."""

import torch
from conftest import MODELS, batches
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer

from loraboost import BoostConfig, Booster


def test_lora_preset_matches_peft_lora_step_by_step(arch):
    booster = Booster(MODELS[arch](seed=0), BoostConfig(method="lora", rank=4, alpha=8, seed=5))
    reference = get_peft_model(MODELS[arch](seed=0), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0))
    ours = {n for n, m in booster.model.named_modules() if isinstance(m, LoraLayer)}
    theirs = {n for n, m in reference.named_modules() if isinstance(m, LoraLayer)}
    assert ours == theirs  # same default targets as PEFT for the architecture
    # Our factors come from the booster's own seeded generator; start PEFT from the same ones.
    reference.load_state_dict(booster.model.state_dict())

    opt_ours = torch.optim.AdamW(booster.parameters(), lr=5e-3)
    opt_ref = torch.optim.AdamW([p for p in reference.parameters() if p.requires_grad], lr=5e-3)
    for batch in batches(arch, 8):
        losses = []
        for model, opt in ((booster.model, opt_ours), (reference, opt_ref)):
            loss = model(**batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        assert booster.step(opt_ours) is False  # plain LoRA never merges
        assert abs(losses[0] - losses[1]) <= 1e-6, losses
    assert len(booster.ledger) == 0
