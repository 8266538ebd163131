"""Every preset learns, and XGBLoRA's sum of rank-1 rounds beats one rank-1 LoRA where rank matters.

The task: match a teacher that differs from the student by a rank-8 update of every q and v
projection (KL between their next-token distributions on random tokens)."""

import pytest
import torch
from conftest import VOCAB, tiny_llama
from torch import nn

from loraboost import BoostConfig, Booster

TARGETS = ["q_proj", "v_proj"]


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    model = tiny_llama(seed=0, layers=2)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith(tuple(TARGETS)):
                out_f, in_f = module.weight.shape
                module.weight += (
                    0.5 * torch.randn(out_f, 8, generator=g) @ torch.randn(8, in_f, generator=g) / in_f**0.5
                )
    return model.eval()


def distill(config: BoostConfig, teacher: nn.Module, steps: int, lr: float) -> tuple[float, float]:
    """Train a booster on the student to match the teacher; the held-out KL before and after."""
    booster = Booster(tiny_llama(seed=0, layers=2), config, total_steps=steps)
    opt = torch.optim.AdamW(booster.parameters(), lr=lr)
    scheduler = booster.lr_scheduler(opt, total_steps=steps, decay="constant")
    g = torch.Generator().manual_seed(1)
    probe = torch.randint(0, VOCAB, (16, 12), generator=torch.Generator().manual_seed(99))

    def kl(ids):
        with torch.no_grad():
            target = teacher(input_ids=ids).logits.log_softmax(-1)
        pred = booster.model(input_ids=ids).logits.log_softmax(-1)
        return nn.functional.kl_div(pred, target, log_target=True, reduction="batchmean")

    with torch.no_grad():
        before = kl(probe).item()
    for _ in range(steps):
        kl(torch.randint(0, VOCAB, (16, 12), generator=g)).backward()
        opt.step()
        scheduler.step()
        opt.zero_grad()
        booster.step(opt)
    with torch.no_grad():
        return before, kl(probe).item()


@pytest.mark.parametrize("method", ["lora", "cola", "xgblora", "raclora", "relora"])
def test_every_preset_lowers_the_loss(method, teacher):
    extra = dict(steps_per_round=10, layers_per_round=1) if method == "xgblora" else {}
    before, after = distill(BoostConfig(method=method, target_modules=TARGETS, **extra), teacher, 40, 2e-2)
    assert after < 0.75 * before, (before, after)


def test_xgblora_beats_a_single_rank1_lora_on_a_rank8_target(teacher):
    steps, lr = 120, 2e-2
    _, lora1 = distill(BoostConfig(method="lora", rank=1, target_modules=TARGETS), teacher, steps, lr)
    _, xgb = distill(
        BoostConfig(method="xgblora", rank=1, target_modules=TARGETS, steps_per_round=10, layers_per_round=None),
        teacher,
        steps,
        lr,
    )
    assert xgb < 0.8 * lora1, (xgb, lora1)
