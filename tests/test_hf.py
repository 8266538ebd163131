"""BoostCallback under transformers.Trainer: rounds change, every round trains, the schedule composes."""

import pytest
import torch
import transformers
from conftest import base_weights, batches, tiny_llama
from torch.utils.data import Dataset

from loraboost import BoostCallback, BoostConfig, Booster


class Rows(Dataset):
    def __init__(self, n: int):
        self.rows = [{k: v[0] for k, v in b.items()} for b in batches("llama", n, size=1)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def trainer_for(booster, tmp_path, max_steps, callbacks=(), **args):
    arguments = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        logging_steps=1000,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        **args,
    )
    return transformers.Trainer(
        model=booster.model, args=arguments, train_dataset=Rows(64), callbacks=[BoostCallback(booster), *callbacks]
    )


class Snapshots(transformers.TrainerCallback):
    """Records which blocks each merge changed, and the learning rate of every step."""

    def __init__(self, booster):
        self.booster, self.changed, self.lrs = booster, [], []
        self.before = base_weights(booster)

    def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
        # Runs after BoostCallback (callbacks run in order), so a merge of this step is visible.
        now = base_weights(self.booster)
        changed = {s.layer for s in self.booster.slots if not torch.equal(now[s.name], self.before[s.name])}
        if changed:
            self.changed.append(changed)
        self.before = now
        self.lrs.append(lr_scheduler.get_last_lr()[0])


def test_every_xgblora_round_trains_under_the_trainer(tmp_path):
    booster = Booster(tiny_llama(), BoostConfig(method="xgblora", steps_per_round=3, layers_per_round=2))
    spy = Snapshots(booster)
    trainer = trainer_for(booster, tmp_path, max_steps=12, callbacks=[spy])
    trainer.train()
    assert len(booster.ledger) == 4 and booster.round == 4 and booster.global_step == 12
    # Pitfall 3: a Trainer builds its optimizer once; every round after the first must still train.
    assert [len(c) for c in spy.changed] == [2, 2, 2, 2]
    assert spy.changed == [set(booster.plan.layers(r)) for r in range(4)]
    assert all(e.B.abs().sum() > 0 for e in booster.ledger)
    # The reset reached the Trainer's (accelerate-wrapped) optimizer: finished rounds hold no state.
    live = {p for s in booster.live_slots for p in (s.A, s.B)}
    state = trainer.optimizer.state
    assert all(len(state.get(p, {})) == 0 for s in booster.slots for p in (s.A, s.B) if p not in live)


def test_cola_knots_come_from_the_trainer_max_steps(tmp_path):
    booster = Booster(tiny_llama(), BoostConfig(method="cola", rounds=3))
    trainer_for(booster, tmp_path, max_steps=9).train()
    assert booster.plan.total_steps == 9 and len(booster.ledger) == 2 and booster.round == 2


def test_per_round_schedule_rewarms_after_each_merge(tmp_path):
    booster = Booster(tiny_llama(), BoostConfig(method="relora", rounds=3, round_warmup_steps=2))
    spy = Snapshots(booster)
    trainer_for(booster, tmp_path, max_steps=24, callbacks=[spy], lr_scheduler_type="constant").train()
    rate = {i + 1: lr for i, lr in enumerate(spy.lrs)}  # rate[k]: the learning rate after k steps
    peak = 1e-2
    assert max(rate.values()) <= peak + 1e-12
    for knot in (8, 16):  # rounds of 8 steps
        assert rate[knot - 1] < 0.1 * peak  # decayed towards zero right before the merge ...
        assert rate[knot] < 0.4 * peak < rate[knot + 2]  # ... and re-warming right after it
        assert rate[knot] < rate[knot + 1] < rate[knot + 2]


def test_trainer_optimizer_missing_booster_parameters_is_refused(tmp_path):
    booster = Booster(tiny_llama(), BoostConfig(method="xgblora", steps_per_round=3, layers_per_round=2))
    live = [p for s in booster.live_slots for p in (s.A, s.B)]
    opt = torch.optim.AdamW(live, lr=1e-2)
    trainer = trainer_for(booster, tmp_path, max_steps=3)
    trainer.optimizer = opt
    with pytest.raises(ValueError, match="does not hold"):
        trainer.train()
