"""Checkpoints: stopping half-way and resuming in a fresh process ends bit for bit where an
uninterrupted run ends (plain loop and Trainer); bad or broken states are refused before any change."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from conftest import MODELS, batches, tiny_llama, train
from resume_worker import HALF, STEPS, build, outcome, train_loop, trainer

import loraboost.checkpoint
from loraboost import BoostConfig, Booster

HERE = Path(__file__).parent


def resume_in_fresh_process(mode, folder):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, str(HERE / "resume_worker.py"), mode, str(folder)], check=True, env=env)
    return torch.load(folder / "resumed.pt")


def assert_identical(a, b):
    assert a["position"] == b["position"]
    for name in a["weights"]:
        assert torch.equal(a["weights"][name], b["weights"][name]), name
        assert all(torch.equal(x, y) for x, y in zip(a["live"][name], b["live"][name])), name
    assert len(a["ledger"]) == len(b["ledger"])
    for x, y in zip(a["ledger"], b["ledger"]):
        assert x[:3] == y[:3] and torch.equal(x[3], y[3]) and torch.equal(x[4], y[4])


def test_plain_loop_resume_is_bit_for_bit(tmp_path):
    data = batches("llama", STEPS)
    booster, opt = build()
    train_loop(booster, opt, data)
    uninterrupted = outcome(booster)
    assert uninterrupted["position"] == (STEPS, STEPS // 2) and len(uninterrupted["ledger"]) > 0

    booster, opt = build()
    train_loop(booster, opt, data[:HALF])
    booster.save_state(tmp_path / "state.safetensors")
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
    assert_identical(resume_in_fresh_process("loop", tmp_path), uninterrupted)


def test_trainer_resume_is_bit_for_bit(tmp_path):
    booster, _ = build()
    trainer(booster, tmp_path / "run").train()  # writes checkpoint-5 on the way, as a stopped run would
    uninterrupted = outcome(booster)
    assert (tmp_path / "run" / f"checkpoint-{HALF}" / "loraboost_state.safetensors").is_file()
    assert_identical(resume_in_fresh_process("trainer", tmp_path), uninterrupted)


def test_trainer_resume_without_booster_state_is_refused(tmp_path):
    booster, _ = build()
    trainer(booster, tmp_path / "run").train()
    (tmp_path / "run" / f"checkpoint-{HALF}" / "loraboost_state.safetensors").unlink()
    fresh, _ = build()
    with pytest.raises(FileNotFoundError, match="every merged round would be lost"):
        trainer(fresh, tmp_path / "run").train(resume_from_checkpoint=str(tmp_path / "run" / f"checkpoint-{HALF}"))


# ---------------------------------------------------------------- bad input
def saved_state(tmp_path, model=None, **config):
    booster = Booster(model or tiny_llama(), BoostConfig(**(config or dict(method="cola", rounds=2))), total_steps=4)
    train(booster, batches("llama", 3))
    booster.save_state(tmp_path / "s.safetensors")
    return tmp_path / "s.safetensors"


def test_state_of_another_architecture_is_refused(tmp_path):
    booster = Booster(MODELS["gpt2"](), BoostConfig(method="cola", rounds=2), total_steps=4)
    train(booster, batches("gpt2", 3))
    booster.save_state(tmp_path / "g.safetensors")
    fresh = Booster(tiny_llama(), BoostConfig(method="cola", rounds=2), total_steps=4)
    with pytest.raises(ValueError, match="is for a GPT2LMHeadModel, but this booster wraps a LlamaForCausalLM"):
        fresh.load_state(tmp_path / "g.safetensors")


def test_state_of_another_shape_or_target_set_is_refused(tmp_path):
    path = saved_state(tmp_path)
    wider = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=64,
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=6,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    )
    with pytest.raises(ValueError, match=r"module 'model.layers.0.self_attn.q_proj' has shape \(48, 48\) here"):
        Booster(wider, BoostConfig(method="cola", rounds=2), total_steps=4).load_state(path)
    with pytest.raises(ValueError, match=r"'model.layers.4.self_attn.q_proj', which this booster does not target"):
        Booster(tiny_llama(layers=4), BoostConfig(method="cola", rounds=2), total_steps=4).load_state(path)
    with pytest.raises(ValueError, match="saved with target_modules=None, but this booster has target_modules="):
        Booster(
            tiny_llama(), BoostConfig(method="cola", rounds=2, target_modules=["q_proj"]), total_steps=4
        ).load_state(path)


def test_truncated_state_is_refused_and_changes_nothing(tmp_path):
    path = saved_state(tmp_path)
    path.write_bytes(path.read_bytes()[:-200])
    fresh = Booster(tiny_llama(), BoostConfig(method="cola", rounds=2), total_steps=4)
    before = {s.name: s.base_weight.detach().clone() for s in fresh.slots}
    with pytest.raises(ValueError, match="not a readable loraboost state file"):
        fresh.load_state(path)
    assert fresh.global_step == 0 and len(fresh.ledger) == 0
    assert all(torch.equal(s.base_weight, before[s.name]) for s in fresh.slots)


def test_loading_into_a_used_booster_is_refused(tmp_path):
    path = saved_state(tmp_path)
    used = Booster(tiny_llama(), BoostConfig(method="cola", rounds=2), total_steps=4)
    train(used, batches("llama", 1))
    with pytest.raises(ValueError, match="needs a fresh Booster"):
        used.load_state(path)


def test_failed_state_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = saved_state(tmp_path)
    before = path.read_bytes()
    booster = Booster(tiny_llama(), BoostConfig(method="cola", rounds=2), total_steps=4)
    train(booster, batches("llama", 2, seed=8))

    def crash(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(loraboost.checkpoint, "save_file", crash)
    with pytest.raises(OSError):
        booster.save_state(path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors"]


def test_raclora_factor_is_frozen_again_after_loading_a_state(tmp_path):
    path = saved_state(tmp_path, method="raclora", rounds=2)
    fresh = Booster(tiny_llama(), BoostConfig(method="raclora", rounds=2), total_steps=4)
    fresh.model.base_model.set_adapter("default")  # PEFT's set_adapter switches requires_grad on for A too
    assert all(s.A.requires_grad for s in fresh.slots)
    fresh.load_state(path)
    assert all(not s.A.requires_grad and s.B.requires_grad for s in fresh.slots)
