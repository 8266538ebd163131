"""Export: the stacked adapter and the merged model reproduce the booster model in plain PEFT /
transformers; SVD compression is exact at full rank and its error falls with k; writes are atomic."""

import json

import pytest
import torch
import transformers
from conftest import MODELS, batches, train
from peft import PeftModel

import loraboost.export
from loraboost import BoostConfig, Booster

RUNS = {  # each with merged rounds and a trained live booster
    "llama": dict(method="xgblora", steps_per_round=2, layers_per_round=2),
    "gpt2": dict(method="cola", rounds=3),
    "bert": dict(method="cola", rounds=3, modules_to_save=["classifier"]),
}
AUTO = {
    "llama": transformers.AutoModelForCausalLM,
    "gpt2": transformers.AutoModelForCausalLM,
    "bert": transformers.AutoModelForSequenceClassification,
}


def trained(arch, steps=7):
    booster = Booster(MODELS[arch](seed=0), BoostConfig(**RUNS[arch]), total_steps=steps)
    train(booster, batches(arch, steps))
    assert len(booster.ledger) >= 2 and any(s.B.count_nonzero() for s in booster.live_slots)
    return booster.model.eval(), booster


def logits(model, arch):
    with torch.no_grad():
        return model(input_ids=batches(arch, 1, seed=5)[0]["input_ids"]).logits


def test_exact_adapter_loads_in_plain_peft_and_matches(arch, tmp_path):
    model, booster = trained(arch)
    booster.save_adapter(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and "method" not in config and "loraboost" not in json.dumps(config)
    record = json.loads((tmp_path / "adapter" / "loraboost.json").read_text())
    assert record["kind"] == "exact" and record["config"]["method"] == RUNS[arch]["method"]
    loaded = PeftModel.from_pretrained(MODELS[arch](seed=0), tmp_path / "adapter").eval()
    torch.testing.assert_close(logits(loaded, arch), logits(model, arch), rtol=0, atol=1e-4)
    if arch == "gpt2":
        assert config["fan_in_fan_out"] is True


def test_xgblora_modules_get_their_own_ranks(tmp_path):
    _, booster = trained("llama", steps=9)
    booster.save_adapter(tmp_path / "a")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    ranks = json.loads((tmp_path / "a" / "loraboost.json").read_text())["module_ranks"]
    rounds_of = {m: sum(e.module == m for e in booster.ledger) for m in booster.ledger.modules()}
    live = {s.name for s in booster.live_slots if s.B.count_nonzero()}
    assert ranks == {m: rounds_of.get(m, 0) + (m in live) for m in set(rounds_of) | live}
    assert len(set(ranks.values())) > 1 and config["rank_pattern"] == config["alpha_pattern"]


def test_merged_folder_loads_in_plain_transformers_and_matches(arch, tmp_path):
    model, booster = trained(arch)
    booster.save_merged(tmp_path / "merged")
    loaded = AUTO[arch].from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in n for n, _ in loaded.named_parameters())
    torch.testing.assert_close(logits(loaded, arch), logits(model, arch), rtol=0, atol=1e-4)


def test_svd_error_falls_with_rank_and_full_rank_is_exact(tmp_path):
    model, booster = trained("gpt2")
    errors = []
    for k in (1, 4, 8, 24):
        booster.save_adapter(tmp_path / f"k{k}", rank=k)
        record = json.loads((tmp_path / f"k{k}" / "loraboost.json").read_text())
        assert record["kind"] == "svd" and max(record["module_ranks"].values()) <= k
        errors.append(record["total_relative_error"])
    assert errors[0] > errors[1] > errors[2] > 0.0  # 3 rounds of rank 8 stack to rank 24
    assert errors[3] < 1e-6
    loaded = PeftModel.from_pretrained(MODELS["gpt2"](seed=0), tmp_path / "k24").eval()
    torch.testing.assert_close(logits(loaded, "gpt2"), logits(model, "gpt2"), rtol=0, atol=1e-4)


def test_existing_folder_is_refused_unless_overwrite(tmp_path):
    _, booster = trained("llama")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not empty"):
        booster.save_adapter(tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").exists()
    booster.save_adapter(tmp_path / "out", overwrite=True)
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "adapter_config.json").exists()


@pytest.mark.parametrize("rank", [0, -1, 1.5, True])
def test_bad_rank_is_refused(tmp_path, rank):
    _, booster = trained("llama")
    with pytest.raises(ValueError, match=f"rank={rank!r} is not valid"):
        booster.save_adapter(tmp_path / "a", rank=rank)


def test_nothing_learned_is_refused(tmp_path):
    booster = Booster(MODELS["llama"](), BoostConfig(method="cola", rounds=2), total_steps=4)
    with pytest.raises(ValueError, match="learned nothing yet"):
        booster.save_adapter(tmp_path / "a")


def test_failed_export_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    _, booster = trained("llama")
    booster.save_adapter(tmp_path / "a")
    before = (tmp_path / "a" / "adapter_model.safetensors").read_bytes()
    train(booster, batches("llama", 2, seed=3))

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(loraboost.export, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        booster.save_adapter(tmp_path / "a", overwrite=True)
    with pytest.raises(OSError, match="No space left"):
        booster.save_adapter(tmp_path / "fresh")
    assert (tmp_path / "a" / "adapter_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no half-written folder beside it


def tied_llama(seed: int = 0) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    config = MODELS["llama"]().config
    config.tie_word_embeddings = True
    return transformers.LlamaForCausalLM(config)


def test_trained_tied_embeddings_stay_one_weight_in_training_and_in_both_exports(tmp_path):
    """A head tied to the input embeddings: with the embeddings in modules_to_save, one copy trains for both (PEFT's
    ensure_weight_tying), so the merged model, saved with tied weights, reloads as the model that trained."""
    base = tied_llama()
    assert base.get_output_embeddings().weight is base.get_input_embeddings().weight
    before = base.get_input_embeddings().weight.detach().clone()
    booster = Booster(base, BoostConfig(method="cola", rounds=3, modules_to_save=["embed_tokens"]), total_steps=7)
    extra = [n for n, p in booster.model.named_parameters() if p.requires_grad and ".lora_" not in n]
    assert len(extra) == 1 and "embed_tokens.modules_to_save" in extra[0]
    train(booster, batches("llama", 7))
    model = booster.model.eval()
    trained_embeddings = model.get_input_embeddings().modules_to_save["default"].weight
    assert model.get_output_embeddings().modules_to_save["default"].weight is trained_embeddings
    assert not torch.equal(trained_embeddings, before)
    booster.save_merged(tmp_path / "merged")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(logits(loaded, "llama"), logits(model, "llama"), rtol=0, atol=1e-4)
    booster.save_adapter(tmp_path / "adapter")
    adapted = PeftModel.from_pretrained(tied_llama(), tmp_path / "adapter").eval()
    torch.testing.assert_close(logits(adapted, "llama"), logits(model, "llama"), rtol=0, atol=1e-4)


def test_tied_embeddings_peft_cannot_tie_are_refused():
    # GPT-2's wte is tied to its head under a name PEFT's weight tying does not know: training it would untie them.
    with pytest.raises(ValueError, match="modules_to_save names the input embeddings 'transformer.wte'"):
        Booster(MODELS["gpt2"](), BoostConfig(method="cola", rounds=3, modules_to_save=["wte"]), total_steps=4)
