"""Gradient-boosted rounds: the sketch recovers the gradient's top singular pairs, a round starts on the true
gradient's top direction or with one descent step along it (Llama, GPT-2's Conv1D, BERT), idle adapters stay idle
while the gradient is sketched, blocks are picked by their gradient (in proportion, or top-k with forced visits),
and a checkpoint inside a sketched window resumes bit for bit."""

import pytest
import torch
from conftest import MODELS, assert_resume_is_bit_exact, batches, tiny_llama, train

from loraboost import BoostConfig, Booster
from loraboost.selection import starvation_limit, top_k_with_visits
from loraboost.sketch import ModuleSketch, TopSingular


def test_the_sketch_recovers_the_top_singular_pairs_of_a_low_rank_gradient():
    g = torch.Generator().manual_seed(0)
    x, delta = torch.randn(4, 40, generator=g), torch.randn(4, 24, generator=g)  # G = delta^T x has rank 4
    k, l = 6, 13  # noqa: E741  (the sketch sizes' names in the randomized-SVD literature)
    sketch = ModuleSketch(
        torch.randn(40, k, generator=g), torch.randn(l, 24, generator=g), torch.zeros(24, k), torch.zeros(l, 40)
    )
    sketch.fold(x[:2], delta[:2])  # two micro-batches add up to the whole
    sketch.fold(x[2:], delta[2:])
    top = sketch.top(2)
    u, s, vh = torch.linalg.svd(delta.T.double() @ x.double())
    torch.testing.assert_close(top.values.double(), s[:2], rtol=1e-4, atol=0)
    torch.testing.assert_close(  # the triplets rebuild G's best rank-2 approximation
        top.left.double() @ torch.diag(top.values.double()) @ top.right.double(),
        u[:, :2] @ torch.diag(s[:2]) @ vh[:2],
        rtol=0,
        atol=1e-4 * float(s[0]),
    )


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


def test_inputs_held_narrow_start_on_the_true_direction_and_a_shared_input_is_held_once():
    batch = batches("llama", 1, size=1, length=3)[0]
    true = true_weight_gradients("llama", batch)
    config = dict(method="xgblora", round_init="gradient", target_modules="all-linear")
    blocks = len(MODELS["llama"]().model.layers)
    for dtype in ("float32", "bfloat16", "float8_e4m3fn"):
        for live_blocks in (None, 2):  # every block live; 2 live and the rest sketched for the gradient's choice
            chosen = dict(layers_per_round=live_blocks, layer_selection="random" if live_blocks is None else "gradient")
            booster = Booster(MODELS["llama"](), BoostConfig(**config, **chosen, sketch_input_dtype=dtype))
            hold, calls = booster.sketcher._hold, []
            booster.sketcher._hold = lambda given, hold=hold, calls=calls: calls.append(hold(given)) or calls[-1]
            booster.model(**batch).loss.backward()  # round 0's sketched step: its inputs are held until its backward
            assert not booster.sketcher._held  # nothing outlives the backward
            booster.step(torch.optim.AdamW(booster.parameters(), lr=1e-2))
            live = {s.name for s in booster.live_slots}
            for slot in booster.slots if live_blocks is None else ():
                top = torch.linalg.svd(true[slot.name].double())[2][0]
                A = slot.A.detach().double()[0]
                alike = {"float32": 1 - 1e-4, "bfloat16": 0.99, "float8_e4m3fn": 0.98}[dtype]
                assert abs(float(A @ top)) / float(A.norm()) > alike, slot.name
            # A live booster's input is kept by autograd for A's backward: the sketch reads it as it is, never a copy.
            # The idle blocks' inputs are held: per block q/k/v read one input and gate/up another, so 7 modules
            # hold 4 tensors, in the dtype asked for.
            idle_blocks = 0 if live_blocks is None else blocks - live_blocks
            assert len(calls) == 7 * idle_blocks and len({id(x) for x in calls}) == 4 * idle_blocks, (dtype, live)
            assert {x.dtype for x in calls} == ({getattr(torch, dtype)} if idle_blocks else set())


def test_a_captured_input_is_never_widened():
    from loraboost.sketch import GradientSketcher

    sketcher = GradientSketcher([], {}, None, rank=1, input_dtype=torch.float32)
    narrow = torch.randn(2, 3, 4, dtype=torch.bfloat16)
    held = sketcher._hold(narrow)
    assert held.dtype == torch.bfloat16 and held.data_ptr() == narrow.data_ptr()  # the input itself, no fp32 copy


def test_float8_rows_keep_each_rows_relative_precision_at_a_quarter_of_the_bytes():
    from loraboost.sketch import ScaledFloat8

    rows = torch.randn(64, 32) * torch.logspace(-6, 6, 64)[:, None]  # rows 12 orders of magnitude apart
    rows[3] = 0
    held = ScaledFloat8(rows)
    assert held.values.dtype == torch.float8_e4m3fn and held.scale.shape == (64, 1)
    error = (held.float() - rows).abs().amax(dim=1) / rows.abs().amax(dim=1).clamp_min(1e-30)
    assert float(error.max()) <= 2**-4 and not held.float()[3].any()  # e4m3: 3 mantissa bits; a zero row stays 0
    assert error.max() > 0  # it is a narrower copy, not the rows themselves


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_a_gradient_step_start_is_one_rank_r_descent_step_along_the_true_gradient(arch):
    # 3 tokens: the gradient has rank <= 3, which the sketch (k = 6) recovers exactly.
    batch = batches(arch, 1, size=1, length=3)[0]
    true = true_weight_gradients(arch, batch)
    gamma = 16.0
    booster = Booster(
        MODELS[arch](),
        BoostConfig(
            method="xgblora",
            rank=2,
            layers_per_round=None,
            round_init="gradient-step",
            gradient_step_gamma=gamma,
            target_modules="all-linear" if arch != "bert" else ["query", "value"],
        ),
    )
    opt = torch.optim.AdamW(booster.parameters(), lr=1e-2)
    booster.model(**batch).loss.backward()
    opt.step()
    opt.zero_grad()
    booster.step(opt)
    for slot in booster.slots:
        G = true[slot.name].double()
        if G.norm() == 0:
            continue
        u, s, vh = torch.linalg.svd(G)
        expected = -(u[:, :2] @ torch.diag(s[:2]) @ vh[:2]) / (float(s[0]) * gamma)
        BA = slot.B.detach().double() @ slot.A.detach().double()
        torch.testing.assert_close(BA, expected, rtol=0, atol=1e-5 / gamma, msg=slot.name)
    with torch.no_grad():  # the start is a step: the model moved, downhill
        assert float(booster.model(**batch).loss) < float(MODELS[arch]()(**batch).loss)


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
    gaps = {
        s.name: TopSingular(torch.tensor([1e3 if s.layer == "model.layers.4" else 1e-3]), None, None)
        for s in booster.slots
    }
    assert all(booster._select_layers(gaps, r) == ("model.layers.4",) for r in range(1, 20))


def test_top_k_takes_the_largest_gaps_and_visits_every_block_before_it_starves():
    booster = Booster(
        tiny_llama(),
        BoostConfig(method="xgblora", steps_per_round=2, layers_per_round=2, layer_selection="gradient-topk"),
    )
    keys = booster.plan.layer_keys  # 6 blocks, 2 a round: a block may sit out 6 rounds
    limit = starvation_limit(len(keys), 2)
    gap = {"model.layers.4": 1e3, "model.layers.1": 1e2}
    tops = {s.name: TopSingular(torch.tensor([gap.get(s.layer, 1.0)]), None, None) for s in booster.slots}
    for r in range(1, 30):
        booster.chosen_layers[r] = booster._select_layers(tops, r)
    history = [booster.layers_of(r) for r in range(30)]
    assert history[1] == ("model.layers.1", "model.layers.4")  # Frank-Wolfe's choice while nothing starves
    for key in keys:  # no block sits out longer than the limit
        used = [r for r, layers in enumerate(history) if key in layers]
        assert used and used[0] <= limit and all(b - a <= limit + 1 for a, b in zip(used, used[1:])), (key, used)
    # The gradient still steers: the two largest gaps train in 2 of every 3 rounds, the others in 1 of 6.
    assert (
        sum("model.layers.4" in layers for layers in history) == sum("model.layers.1" in used for used in history) == 20
    )


def test_top_k_puts_the_longest_starved_blocks_first():
    gaps = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.5])
    assert top_k_with_visits(gaps, 2, [1, 1, 2, 3, 6, 8]) == [4, 5]  # both idle >= 6 rounds
    assert top_k_with_visits(gaps, 2, [1, 1, 2, 3, 6, 2]) == [0, 4]  # one starved, then the largest gap
    assert top_k_with_visits(gaps, 2, [1, 1, 2, 3, 5, 2]) == [0, 1]


def test_a_sketch_that_saw_no_training_step_says_so():
    booster = Booster(
        tiny_llama(), BoostConfig(method="xgblora", steps_per_round=2, layers_per_round=2, layer_selection="gradient")
    )
    booster.model.eval()  # a custom loop that forgot model.train(): the hooks see no training forward
    with pytest.warns(UserWarning, match="saw no training step .* call model.train"):
        train(booster, batches("llama", 2))
    assert booster.chosen_layers[1] == booster.plan.layers(1)


def test_random_rounds_take_no_sketch():
    booster = Booster(tiny_llama(), BoostConfig(method="xgblora", steps_per_round=2, layers_per_round=2))
    assert booster.sketcher is None and booster.layers_of(3) == booster.plan.layers(3)


@pytest.mark.parametrize(("init", "selection"), [("gradient", "gradient"), ("gradient-step", "gradient-topk")])
def test_a_checkpoint_inside_a_sketched_window_resumes_bit_for_bit(tmp_path, init, selection):
    config = BoostConfig(
        method="xgblora",
        steps_per_round=3,
        layers_per_round=2,
        round_init=init,
        layer_selection=selection,
        sketch_steps=2,
        seed=2,
    )
    data = batches("llama", 10)

    def fresh():
        booster = Booster(tiny_llama(), config)
        return booster, torch.optim.AdamW(booster.parameters(), lr=1e-2)

    def sketching(booster):  # round 1 is steps 4-6; its sketch holds step 5 of 2
        assert booster.sketcher.armed and all(s.batches == 1 for s in booster.sketcher.sketches.values())

    stopped, resumed = assert_resume_is_bit_exact(fresh, data, 5, tmp_path / "state.safetensors", at_stop=sketching)
    assert resumed.chosen_layers == stopped.chosen_layers | resumed.chosen_layers
