"""Merges into bf16 weights keep the update (stochastic rounding, the default, in expectation; an fp32 or bf16
residual exactly), where a plain bf16 add loses most of it; a state saved when "auto" meant a residual replays so."""

import pytest
import torch
from conftest import batches, tiny_llama

from loraboost import BoostConfig, Booster
from loraboost.export import merged_state_dict


def bf16_booster(
    policy: str, rounds: int = 100, residual_dtype: str = "float32"
) -> tuple[Booster, dict[str, torch.Tensor]]:
    model = tiny_llama(layers=2).to(torch.bfloat16)
    booster = Booster(
        model,
        BoostConfig(
            method="xgblora",
            rank=1,
            steps_per_round=1,
            layers_per_round=None,
            target_modules=["q_proj", "v_proj"],
            merge_residual=policy,
            merge_residual_dtype=residual_dtype,
            seed=1,
        ),
    )
    original = {s.name: s.base_weight.detach().double().clone() for s in booster.slots}
    # Steps small enough that each merge is ~1e-4 of the weights: the regime where bf16 rounds updates away.
    opt = torch.optim.AdamW(booster.parameters(), lr=2e-5)
    for batch in batches("llama", rounds, size=2, length=8):
        booster.model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
        booster.step(opt)
    assert len(booster.ledger) == rounds
    return booster, original


def kept_share(booster, original) -> float:
    """1 - |(what the weights hold) - (W0 + the exact fp32 sum of the merges)| / |that sum|, all modules."""
    error = total = 0.0
    for slot in booster.slots:
        exact = booster.ledger.delta(slot.name).double()
        held = booster.merged_weight(slot).double() - original[slot.name]
        error += (held - exact).pow(2).sum().item()
        total += exact.pow(2).sum().item()
    return 1 - (error / total) ** 0.5


def test_hundred_small_merges_into_bf16_keep_the_update():
    compensated, original = bf16_booster("residual")
    assert compensated.residuals and all(r.dtype == torch.float32 for r in compensated.residuals.values())
    naive, naive_original = bf16_booster("never")
    assert not naive.residuals
    kept, kept_naive = kept_share(compensated, original), kept_share(naive, naive_original)
    print(f"bf16, 100 rounds: fp32 residual keeps {kept:.4%}, plain bf16 add keeps {kept_naive:.4%}")
    assert kept >= 0.99
    assert kept_naive < 0.5


def test_a_bf16_residual_takes_half_the_memory_and_still_keeps_the_update():
    compact, original = bf16_booster("residual", residual_dtype="bfloat16")
    assert compact.residuals and all(r.dtype == torch.bfloat16 for r in compact.residuals.values())
    naive, naive_original = bf16_booster("never")
    kept, kept_naive = kept_share(compact, original), kept_share(naive, naive_original)
    print(f"bf16, 100 rounds: bf16 residual keeps {kept:.4%}, plain bf16 add keeps {kept_naive:.4%}")
    assert kept >= 0.95 > 0.5 > kept_naive


@pytest.mark.parametrize("residual_dtype", ["float32", "bfloat16"])
def test_merged_export_and_resume_include_what_the_residual_holds(tmp_path, residual_dtype):
    booster, _ = bf16_booster("residual", rounds=6, residual_dtype=residual_dtype)
    state = merged_state_dict(booster)
    for slot in booster.slots:
        expected = booster.merged_weight(slot).to(torch.bfloat16)  # nothing live: all merged
        assert torch.equal(state[f"{slot.name}.weight"], expected)
    booster.save_state(tmp_path / "s.safetensors")
    fresh = Booster(tiny_llama(layers=2).to(torch.bfloat16), booster.config)
    fresh.load_state(tmp_path / "s.safetensors")
    for slot, again in zip(booster.slots, fresh.slots):
        assert torch.equal(slot.base_weight, again.base_weight)
        assert torch.equal(booster.residuals[slot.name], fresh.residuals[slot.name])


def test_always_makes_fp32_reconstruction_exact_for_tiny_updates():
    model = tiny_llama(layers=2)
    booster = Booster(model, BoostConfig(method="cola", rounds=4, merge_residual="always"), total_steps=8)
    original = {s.name: s.base_weight.detach().clone() for s in booster.slots}
    opt = torch.optim.AdamW(booster.parameters(), lr=1e-6)  # deltas far below the weights' fp32 resolution
    for batch in batches("llama", 8):
        booster.model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
        booster.step(opt)
    for slot in booster.slots:
        delta = booster.ledger.delta(slot.name).double()
        # In float64: weight + residual holds more digits than one fp32 number.
        held = slot.base_weight.double() + booster.residuals[slot.name].double() - original[slot.name].double()
        assert (held - delta).norm() / delta.norm() <= 1e-5, slot.name


def test_stochastic_rounding_is_unbiased_and_repeats_with_its_seed():
    from loraboost.merge import stochastic_round
    from loraboost.plan import round_generator

    value = torch.full((200_000,), 1.0 + 2**-10)  # a quarter of the way from 1 to the next bf16 number
    rounded = stochastic_round(value, torch.bfloat16, round_generator(0, 3, "merge:x"))
    assert set(rounded.float().unique().tolist()) == {1.0, 1.0 + 2**-7}
    assert abs(rounded.double().mean().item() - (1.0 + 2**-10)) < 2e-5  # the plain bf16 rounding gives 1.0
    again = stochastic_round(value, torch.bfloat16, round_generator(0, 3, "merge:x"))
    assert torch.equal(rounded, again)
    exact = torch.tensor([1.0, -2.5, 0.0])  # representable values stay as they are
    assert torch.equal(stochastic_round(exact, torch.bfloat16, round_generator(0, 0, "m")).float(), exact)


def projected_share(booster, original) -> float:
    """The weights' change projected on the exact merged update, <held, exact> / |exact|^2: 1 when the update
    is kept on average, however much rounding noise sits around it."""
    along = total = 0.0
    for slot in booster.slots:
        exact = booster.ledger.delta(slot.name).double()
        held = booster.merged_weight(slot).double() - original[slot.name]
        along += (held * exact).sum().item()
        total += exact.pow(2).sum().item()
    return along / total


def test_stochastic_merges_keep_the_update_on_average_with_no_residual():
    stochastic, original = bf16_booster("stochastic")
    assert not stochastic.residuals  # no memory beyond the bf16 weights
    naive, naive_original = bf16_booster("never")
    kept, kept_naive = projected_share(stochastic, original), projected_share(naive, naive_original)
    print(f"bf16, 100 rounds, update kept on average: stochastic {kept:.3f}, plain bf16 add {kept_naive:.3f}")
    assert 0.9 <= kept <= 1.1 and kept_naive < 0.5


def test_stochastic_merges_resume_and_repeat_bit_for_bit(tmp_path):
    first, _ = bf16_booster("stochastic", rounds=6)
    second, _ = bf16_booster("stochastic", rounds=6)  # another rank, or the same run again: the same draws
    first.save_state(tmp_path / "s.safetensors")
    fresh = Booster(tiny_llama(layers=2).to(torch.bfloat16), first.config)
    fresh.load_state(tmp_path / "s.safetensors")  # replays the 6 merges, with their draws
    for a, b, c in zip(first.slots, second.slots, fresh.slots):
        assert torch.equal(a.base_weight, b.base_weight) and torch.equal(a.base_weight, c.base_weight)


def test_auto_rounds_bf16_merges_stochastically_and_adds_fp32_merges_in_place():
    auto, _ = bf16_booster("auto", rounds=6)
    stochastic, _ = bf16_booster("stochastic", rounds=6)
    assert not auto.residuals  # no memory beyond the bf16 weights
    for mine, theirs in zip(auto.slots, stochastic.slots):
        assert torch.equal(mine.base_weight, theirs.base_weight)
    fp32 = Booster(tiny_llama(layers=2), BoostConfig(method="cola", rounds=2), total_steps=2)
    train_steps(fp32, 2)
    assert not fp32.residuals and len(fp32.ledger) > 0


def train_steps(booster, steps):
    opt = torch.optim.AdamW(booster.parameters(), lr=1e-3)
    for batch in batches("llama", steps):
        booster.model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
        booster.step(opt)


def test_a_format_2_state_replays_auto_with_the_residual_it_then_meant():
    residual, _ = bf16_booster("residual", rounds=6)
    state = residual.state_dict()
    state["meta"]["format"] = 2  # saved by loraboost before "auto" meant stochastic rounding
    state["meta"]["config"]["merge_residual"] = "auto"
    resumed = Booster(tiny_llama(layers=2).to(torch.bfloat16), BoostConfig(**state["meta"]["config"]))
    resumed.load_state_dict(state)
    assert resumed.merge_policy == "residual" and resumed.residuals
    for mine, theirs in zip(resumed.slots, residual.slots):
        assert torch.equal(mine.base_weight, theirs.base_weight)
        assert torch.equal(resumed.residuals[mine.name], residual.residuals[theirs.name])
    state["meta"]["format"] = 1
    with pytest.raises(ValueError, match="state format 1 is not supported; this loraboost reads formats 2, 3"):
        Booster(tiny_llama(layers=2).to(torch.bfloat16), BoostConfig(**state["meta"]["config"])).load_state_dict(state)
