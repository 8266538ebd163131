"""Gradient-boosted rounds: the sketch recovers the gradient's top singular pairs, a round starts on the true
gradient's top direction (Llama, GPT-2's Conv1D, BERT), idle adapters stay idle while the gradient is sketched,
blocks are picked by their gradient, and a checkpoint inside a sketched window resumes bit for bit."""

import pytest
import torch
from conftest import MODELS, batches, tiny_llama, train

from loraboost import BoostConfig, Booster
from loraboost.sketch import ModuleSketch


def test_the_sketch_recovers_the_top_singular_pairs_of_a_low_rank_gradient():
    g = torch.Generator().manual_seed(0)
    x, delta = torch.randn(4, 40, generator=g), torch.randn(4, 24, generator=g)  # G = delta^T x has rank 4
    k, l = 6, 13  # noqa: E741  (the sketch sizes' names in the randomized-SVD literature)
    sketch = ModuleSketch(
        torch.randn(40, k, generator=g), torch.randn(l, 24, generator=g), torch.zeros(24, k), torch.zeros(l, 40)
    )
    sketch.fold(x[:2], delta[:2])  # two micro-batches add up to the whole
    sketch.fold(x[2:], delta[2:])
    values, vectors = sketch.top(2)
    _, s, vh = torch.linalg.svd(delta.T.double() @ x.double())
    torch.testing.assert_close(values.double(), s[:2], rtol=1e-4, atol=0)
    cosines = (vectors.double() * vh[:2]).sum(-1).abs()
    assert bool((cosines > 1 - 1e-5).all()), cosines


def true_weight_gradients(kind, batch):
    """The loss gradient of every linear weight of the untouched model, as (out, in)."""
    model = MODELS[kind]()
    model.train()
    model(**batch).loss.backward()
    grads = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if weight is not None and weight.grad is not None and weight.dim() == 2:
            grads[name] = weight.grad.T if type(module).__name__ == "Conv1D" else weight.grad
    return grads


def test_round_zero_starts_on_the_true_gradient_direction(arch):
    # 3 tokens: the gradient has rank <= 3, which the sketch (k = 5) recovers exactly.
    batch = batches(arch, 1, size=1, length=3)[0]
    true = true_weight_gradients(arch, batch)
    booster = Booster(
        MODELS[arch](),
        BoostConfig(
            method="xgblora",
            layers_per_round=None,
            round_init="gradient",
            target_modules="all-linear" if arch != "bert" else ["query", "value"],
        ),
    )
    opt = torch.optim.AdamW(booster.parameters(), lr=1e-2)
    booster.model(**batch).loss.backward()
    opt.step()
    opt.zero_grad()
    booster.step(opt)  # round 0 restarts from the sketch of its first step
    checked = 0
    for slot in booster.slots:
        G = true[slot.name]
        if G.norm() == 0:
            continue
        top = torch.linalg.svd(G.double())[2][0]
        A = slot.A.detach().double()[0]
        assert abs(float(A @ top)) / float(A.norm()) > 1 - 1e-4, slot.name
        assert float(A.norm()) == pytest.approx(3**-0.5, rel=1e-5)
        assert not slot.B.detach().any()  # B = 0: the model's output is unchanged at the restart
        checked += 1
    assert checked == len(booster.slots)
    assert not opt.state  # the dropped step's optimizer state goes with it


def test_idle_adapters_stay_idle_while_the_gradient_is_sketched():
    booster = Booster(
        tiny_llama(),
        BoostConfig(
            method="xgblora", steps_per_round=2, layers_per_round=1, round_init="gradient", layer_selection="gradient"
        ),
    )
    data = batches("llama", 2)
    booster.model(**data[0]).loss.backward()
    assert booster.sketcher.armed
    live = set(booster.live_slots)
    for slot in booster.slots:
        assert (slot.A.grad is not None) == (slot in live), slot.name  # idle ones computed nothing
    # ... yet every module's gradient was sketched, through the embeddings' gradient.
    assert all(sketch.batches == 1 for sketch in booster.sketcher.sketches.values())
    assert len(booster.sketcher.sketches) == len(booster.slots)


def test_gradient_selection_picks_blocks_and_the_booster_follows_them():
    booster = Booster(
        tiny_llama(),
        BoostConfig(method="xgblora", steps_per_round=2, layers_per_round=2, layer_selection="gradient", seed=4),
    )
    train(booster, batches("llama", 8))
    assert sorted(booster.chosen_layers) == [1, 2, 3, 4]  # round 0 is the plan's draw
    layer_of = {s.name: s.layer for s in booster.slots}
    for round_index in (1, 2, 3):  # merged rounds trained on the blocks chosen for them
        assert {layer_of[m] for m in booster.ledger.modules(round_index)} == set(booster.chosen_layers[round_index])
    assert {s.layer for s in booster.live_slots} == set(booster.chosen_layers[4])


def test_a_block_with_a_large_gradient_gap_is_chosen():
    booster = Booster(
        tiny_llama(), BoostConfig(method="xgblora", steps_per_round=2, layers_per_round=1, layer_selection="gradient")
    )
    gaps = {s.name: (torch.tensor([1e3 if s.layer == "model.layers.4" else 1e-3]), None) for s in booster.slots}
    assert all(booster._select_layers(gaps, r) == ("model.layers.4",) for r in range(1, 20))


def test_random_rounds_take_no_sketch():
    booster = Booster(tiny_llama(), BoostConfig(method="xgblora", steps_per_round=2, layers_per_round=2))
    assert booster.sketcher is None and booster.layers_of(3) == booster.plan.layers(3)


def test_a_checkpoint_inside_a_sketched_window_resumes_bit_for_bit(tmp_path):
    config = BoostConfig(
        method="xgblora",
        steps_per_round=3,
        layers_per_round=2,
        round_init="gradient",
        layer_selection="gradient",
        sketch_steps=2,
        seed=2,
    )
    data = batches("llama", 10)

    def fresh():
        booster = Booster(tiny_llama(), config)
        return booster, torch.optim.AdamW(booster.parameters(), lr=1e-2)

    booster, opt = fresh()
    train(booster, data, optimizer=opt)
    straight = {
        s.name: (s.base_weight.detach().clone(), s.A.detach().clone(), s.B.detach().clone()) for s in booster.slots
    }

    booster, opt = fresh()
    train(booster, data[:5], optimizer=opt)  # round 1 is steps 4-6; its sketch holds step 5 of 2
    assert booster.sketcher.armed and all(s.batches == 1 for s in booster.sketcher.sketches.values())
    booster.save_state(tmp_path / "state.safetensors")
    optimizer_state = opt.state_dict()

    resumed, opt = fresh()
    resumed.load_state(tmp_path / "state.safetensors")
    opt.load_state_dict(optimizer_state)
    train(resumed, data[5:], optimizer=opt)
    assert resumed.chosen_layers == booster.chosen_layers | resumed.chosen_layers
    for slot in resumed.slots:
        for mine, theirs in zip((slot.base_weight, slot.A, slot.B), straight[slot.name]):
            assert torch.equal(mine.detach(), theirs), slot.name
