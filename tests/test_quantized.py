"""4-bit bases (bitsandbytes NF4, on CPU): the quantized weights are never rewritten, merged rounds run
in full precision beside them, and export and resume still reproduce the model exactly."""

import pytest
import torch
import transformers
from conftest import batches, tiny_llama, train
from peft import PeftModel

from loraboost import BoostConfig, Booster


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    # bitsandbytes from 0.50 on repacks 4-bit weights for its CPU kernels in blocks of 64 input features:
    # a layer narrower than that fails to load, so this model is twice the usual tiny width.
    tiny_llama(seed=0, hidden=64).save_pretrained(folder)
    return folder


def four_bit(folder):
    quantization = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
    return transformers.AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=quantization, dtype=torch.float32
    )


def logits(model):
    with torch.no_grad():
        return model(input_ids=batches("llama", 1, seed=5)[0]["input_ids"]).logits


def trained_on_four_bit(folder, steps=5, total_steps=6):
    booster = Booster(four_bit(folder), BoostConfig(method="cola", rounds=3, seed=2), total_steps=total_steps)
    train(booster, batches("llama", steps))
    return booster


def test_merges_leave_the_quantized_weights_untouched_and_keep_outputs(saved_llama):
    booster = trained_on_four_bit(saved_llama, steps=1)  # knots at steps 2 and 4
    # bitsandbytes >= 0.50 repacks 4-bit weights for its CPU kernels at the first inference forward, once:
    # snapshot after that, so what is checked is that merges never touch them.
    booster.model.eval()
    logits(booster.model)
    booster.model.train()
    packed = {s.name: s.base_weight.detach().clone() for s in booster.slots}
    assert booster.side_paths and all(s.base_weight.dtype == torch.uint8 for s in booster.slots)
    opt = torch.optim.AdamW(booster.parameters(), lr=1e-2)
    changes = 0
    for batch in batches("llama", 4, seed=1):
        booster.model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
        booster.model.eval()
        before = logits(booster.model)
        changes += booster.step(opt)
        torch.testing.assert_close(logits(booster.model), before, rtol=0, atol=1e-5)
        booster.model.train()
    assert changes == 2 and len(booster.ledger) == 2
    assert all(torch.equal(s.base_weight, packed[s.name]) for s in booster.slots)  # never requantized
    assert {p.rank for p in booster.side_paths.values()} == {2 * booster.config.rank}


def test_exact_adapter_on_the_quantized_base_reproduces_the_model(saved_llama, tmp_path):
    booster = trained_on_four_bit(saved_llama)
    booster.model.eval()
    booster.save_adapter(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(four_bit(saved_llama), tmp_path / "adapter").eval()
    torch.testing.assert_close(logits(loaded), logits(booster.model), rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="this base is quantized; use save_adapter"):
        booster.save_merged(tmp_path / "merged")


def test_resume_on_a_quantized_base_rebuilds_the_side_paths(saved_llama, tmp_path):
    booster = trained_on_four_bit(saved_llama)
    booster.save_state(tmp_path / "s.safetensors")
    fresh = Booster(four_bit(saved_llama), booster.config, total_steps=6)
    fresh.load_state(tmp_path / "s.safetensors")
    for name, path in booster.side_paths.items():
        assert torch.equal(path.A, fresh.side_paths[name].A) and torch.equal(path.B, fresh.side_paths[name].B)
    booster.model.eval(), fresh.model.eval()
    assert torch.equal(logits(fresh.model), logits(booster.model))


@pytest.mark.parametrize("init", ["gradient", "gradient-step"])
def test_gradient_rounds_on_a_quantized_base_start_from_the_sketch_and_resume_exactly(saved_llama, tmp_path, init):
    config = BoostConfig(
        method="xgblora", steps_per_round=2, layers_per_round=2, round_init=init, layer_selection="gradient-topk"
    )
    booster = Booster(four_bit(saved_llama), config)
    booster.model.train()  # as the Trainer does: the sketch reads training forwards only (from_pretrained: eval)
    train(booster, batches("llama", 2))  # round 0 merged onto the side paths at step 2; round 1 starts
    assert booster.side_paths and sorted(booster.chosen_layers) == [1]
    live = booster.live_slots
    assert {s.layer for s in live} == set(booster.chosen_layers[1])
    for slot in live:  # started from the sketched gradient of the 4-bit layers
        if init == "gradient":
            assert float(slot.A.detach().norm()) == pytest.approx(3**-0.5, rel=1e-4) and not slot.B.detach().any()
        else:
            assert slot.B.detach().any()
    booster.save_state(tmp_path / "state.safetensors")

    resumed = Booster(four_bit(saved_llama), config)
    resumed.load_state(tmp_path / "state.safetensors")
    assert resumed.chosen_layers == booster.chosen_layers
    for mine, theirs in zip(resumed.slots, booster.slots):
        assert torch.equal(mine.A.detach(), theirs.A.detach()) and torch.equal(mine.B.detach(), theirs.B.detach())
    resumed.model.eval()
    booster.model.eval()
    torch.testing.assert_close(logits(resumed.model), logits(booster.model), rtol=0, atol=1e-6)
