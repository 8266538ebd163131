import pytest
import torch
from accelerate import Accelerator
from conftest import MODELS, base_weights, batches, tiny_gpt2, tiny_llama, train
from peft import LoraConfig, get_peft_model
from torch import nn

from loraboost import BoostConfig, Booster

CHAINS = {
    "cola": dict(method="cola", rounds=3),
    "xgblora": dict(method="xgblora", steps_per_round=3, rounds=3, layers_per_round=2),
    "raclora": dict(method="raclora", rounds=3),
    "relora": dict(method="relora", rounds=3),
}


def make(arch, total_steps=9, **cfg):
    return Booster(MODELS[arch](), BoostConfig(**cfg), total_steps=total_steps)


# ---------------------------------------------------------------- invariance
@pytest.mark.parametrize("method", sorted(CHAINS))
def test_outputs_equal_right_before_and_right_after_a_round_change(arch, method):
    booster = make(arch, **CHAINS[method])
    data = batches(arch, 3)
    opt = torch.optim.AdamW(booster.parameters(), lr=1e-2)
    probe = batches(arch, 1, seed=9)[0]["input_ids"]
    changed = 0
    for batch in data:
        booster.model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
        booster.model.eval()
        with torch.no_grad():
            before = booster.model(input_ids=probe).logits
        ended = booster.step(opt)
        with torch.no_grad():
            after = booster.model(input_ids=probe).logits
        booster.model.train()
        torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
        changed += ended
    assert changed == 1  # the first round of three ended after 3 steps


# ---------------------------------------------------------------- reconstruction
@pytest.mark.parametrize("method", sorted(CHAINS))
def test_base_weight_change_equals_ledger_delta(arch, method):
    booster = make(arch, **CHAINS[method])
    original = base_weights(booster)
    train(booster, batches(arch, 9))
    assert len(booster.ledger) == 2  # 3 rounds, the last one still live
    merged = set(booster.ledger.modules())
    for slot in booster.slots:
        change = slot.base_weight.detach() - original[slot.name]
        if slot.name in merged:
            delta = booster.ledger.delta(slot.name)
            assert delta.shape == change.shape
            assert (change - delta).norm() / delta.norm() <= 1e-5, slot.name
        else:
            assert torch.equal(change, torch.zeros_like(change)), slot.name


def test_gpt2_conv1d_layout_is_transposed_in_the_ledger():
    booster = Booster(tiny_gpt2(), BoostConfig(method="cola", rounds=2), total_steps=4)
    slot = booster.slots[0]
    assert slot.fan_in_fan_out and slot.base_weight.shape == (32, 96)  # Conv1D stores (in, out)
    train(booster, batches("gpt2", 4))
    assert booster.ledger.delta(slot.name).shape == (32, 96)


# ---------------------------------------------------------------- XGBLoRA subsets
def merged_layers_per_round(booster):
    return [
        {booster.slots[[s.name for s in booster.slots].index(m)].layer for m in booster.ledger.modules(r)}
        for r in booster.ledger.rounds()
    ]


def test_each_xgblora_round_changes_exactly_layers_per_round_layers():
    booster = make("llama", method="xgblora", steps_per_round=2, layers_per_round=2)
    opt = torch.optim.AdamW(booster.parameters(), lr=1e-2)
    for r, batch_pair in enumerate(zip(*[iter(batches("llama", 12))] * 2)):
        before = base_weights(booster)
        planned = set(booster.plan.layers(r))
        train(booster, batch_pair, optimizer=opt)
        changed = {s.layer for s in booster.slots if not torch.equal(s.base_weight, before[s.name])}
        assert changed == planned and len(changed) == 2
    assert len(booster.ledger) == 6
    assert all(len(layers) == 2 for layers in merged_layers_per_round(booster))


def test_seeds_choose_different_subsets_and_one_seed_gives_identical_ledgers():
    def run(seed):
        booster = make("llama", method="xgblora", steps_per_round=2, layers_per_round=2, seed=seed)
        train(booster, batches("llama", 12))
        return booster

    a, b, c = run(0), run(0), run(1)
    assert merged_layers_per_round(a) != merged_layers_per_round(c)
    assert len(a.ledger.entries) == len(b.ledger.entries)
    for x, y in zip(a.ledger, b.ledger):
        assert (x.round, x.module, x.scale) == (y.round, y.module, y.scale)
        assert torch.equal(x.A, y.A) and torch.equal(x.B, y.B)


def test_idle_adapters_run_no_compute_and_get_no_gradient_but_keep_requires_grad():
    booster = make("llama", method="xgblora", steps_per_round=5, layers_per_round=2)
    live = set(booster.live_slots)
    booster.model(**batches("llama", 1)[0]).loss.backward()
    for slot in booster.slots:
        assert slot.A.requires_grad and slot.B.requires_grad
        assert (slot.B.grad is not None) == (slot in live), slot.name


# ---------------------------------------------------------------- optimizer reset
def test_round_change_drops_booster_state_and_base_has_none():
    booster = make("llama", method="cola", rounds=3)
    data = batches("llama", 3)
    _, opt = train(booster, data[:2])
    finished = [p for s in booster.live_slots for p in (s.A, s.B)]
    assert all(opt.state[p]["exp_avg"].abs().sum() > 0 for p in finished)
    train(booster, data[2:], optimizer=opt)  # the third step ends round 0
    assert booster.round == 1
    assert all(len(opt.state.get(p, {})) == 0 for p in finished)
    frozen = [p for p in booster.model.parameters() if not p.requires_grad]
    assert frozen and all(p not in opt.state for p in frozen)


def test_reset_goes_through_an_accelerate_wrapped_optimizer():
    booster = make("llama", method="cola", rounds=3)
    opt = Accelerator(cpu=True).prepare(torch.optim.AdamW(booster.parameters(), lr=1e-2))
    train(booster, batches("llama", 3), optimizer=opt)
    assert booster.round == 1
    assert all(len(opt.optimizer.state.get(p, {})) == 0 for s in booster.slots for p in (s.A, s.B))


def test_prune_zeroes_most_moments_and_keep_keeps_them():
    for mode, check in [
        ("prune", lambda m: (m == 0).float().mean() >= 0.98),
        ("keep", lambda m: (m == 0).float().mean() < 0.5),
    ]:
        booster = make("llama", method="cola", rounds=3, optimizer_reset=mode, prune_ratio=0.99)
        _, opt = train(booster, batches("llama", 3))
        assert booster.round == 1
        moments = [opt.state[p]["exp_avg"] for s in booster.slots for p in (s.A, s.B)]
        assert all(check(m) for m in moments), mode
        if mode == "prune":  # one shared mask: no entry keeps a first moment over a zeroed second moment
            assert all(
                ((opt.state[p]["exp_avg"] != 0) & (opt.state[p]["exp_avg_sq"] == 0)).sum() == 0
                for s in booster.slots
                for p in (s.A, s.B)
            )


def test_fresh_booster_is_zero_but_has_a_gradient():
    booster = make("llama", method="cola", rounds=3)
    train(booster, batches("llama", 3))
    for slot in booster.live_slots:
        assert torch.count_nonzero(slot.B) == 0 and torch.count_nonzero(slot.A) > 0
    booster.model(**batches("llama", 1)[0]).loss.backward()
    assert all(s.B.grad.abs().sum() > 0 for s in booster.live_slots)


def test_raclora_trains_only_b_and_resamples_a_each_round():
    booster = make("llama", method="raclora", rounds=3)
    slot = booster.slots[0]
    assert not slot.A.requires_grad and slot.B.requires_grad
    assert all(p is not s.A for s in booster.slots for p in booster.parameters())
    a0 = slot.A.detach().clone()
    train(booster, batches("llama", 3))
    assert booster.round == 1 and not torch.equal(slot.A, a0)
    assert torch.equal(booster.ledger.entries[0].A, a0)  # the frozen A was merged as drawn


# ---------------------------------------------------------------- norm penalty
def test_norm_penalty_is_added_to_the_model_loss():
    booster = make("llama", method="xgblora", steps_per_round=5, layers_per_round=2, norm_penalty=0.5)
    train(booster, batches("llama", 2))  # make B non-zero
    batch = batches("llama", 1, seed=4)[0]
    out = booster.model(**batch)
    logits, labels = out.logits[:, :-1], batch["labels"][:, 1:]
    ce = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    expected = 0.5 * sum(p.pow(2).sum() for s in booster.live_slots for p in (s.A, s.B))
    torch.testing.assert_close(out.loss, ce + expected)
    booster.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(booster.model(**batch).loss, ce)


# ---------------------------------------------------------------- bad input
def test_targets_matching_nothing_list_the_linear_modules():
    with pytest.raises(ValueError, match=r"matches no linear module.*'q_proj'"):
        Booster(tiny_llama(), BoostConfig(method="lora", target_modules=["query"]))


def test_layers_per_round_larger_than_the_model():
    with pytest.raises(ValueError, match="layers_per_round=7 is larger than the model's 6 layers"):
        Booster(tiny_llama(), BoostConfig(method="xgblora", layers_per_round=7))


def test_model_without_findable_layers_says_how_to_name_them():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="set layers_pattern"):
        Booster(model, BoostConfig(method="xgblora", target_modules=["0", "2"], layers_per_round=1))
    booster = Booster(
        nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)),
        BoostConfig(method="cola", target_modules=["0", "2"], steps_per_round=2),
    )
    assert len(booster.slots) == 2  # without layer subsets no layer index is needed


def test_wrong_layers_pattern_is_named():
    with pytest.raises(ValueError, match="no ModuleList named 'h' holds it"):
        Booster(tiny_llama(), BoostConfig(method="xgblora", layers_pattern="h"))


def test_optimizer_without_booster_parameters_is_refused():
    booster = make("llama", method="xgblora", steps_per_round=2, layers_per_round=2)
    live = [p for s in booster.live_slots for p in (s.A, s.B)]
    opt = torch.optim.AdamW(live, lr=1e-2)  # only this round's factors: later rounds would not train
    with pytest.raises(ValueError, match="does not hold .* of the booster's"):
        booster.step(opt)


def test_model_with_adapters_is_refused():
    model = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="already carries PEFT adapters"):
        Booster(model, BoostConfig(method="cola"))
    with pytest.raises(ValueError, match="already carries PEFT adapters"):
        Booster(model.get_base_model(), BoostConfig(method="cola"))


def test_all_linear_on_bert_stays_inside_the_blocks():
    booster = Booster(MODELS["bert"](), BoostConfig(method="xgblora", layers_per_round=1))
    names = [s.name for s in booster.slots]
    assert len(names) == 3 * 6 and not any("pooler" in n or "classifier" in n for n in names)
