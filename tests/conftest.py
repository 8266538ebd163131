"""Tiny models built from configs (Llama, GPT-2 with Conv1D, BERT) and fixed batches for the tests."""

from __future__ import annotations

import pytest
import torch
import transformers

VOCAB = 64


def tiny_llama(seed: int = 0, layers: int = 6, hidden: int = 32) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg)


def tiny_gpt2(seed: int = 0, layers: int = 4) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=layers, n_head=4, n_positions=64,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg)


def tiny_bert(seed: int = 0, layers: int = 3) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                  num_attention_heads=4, max_position_embeddings=64, num_labels=3,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertForSequenceClassification(cfg)


MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "bert": tiny_bert}


def batches(kind: str, n: int, seed: int = 0, size: int = 4, length: int = 12) -> list[dict[str, torch.Tensor]]:
    """``n`` fixed training batches for a model of ``kind``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (size, length), generator=g)
        if kind == "bert":
            out.append({"input_ids": ids, "labels": torch.randint(0, 3, (size,), generator=g)})
        else:
            out.append({"input_ids": ids, "labels": ids.clone()})
    return out


def train(booster, data, lr: float = 1e-2, optimizer=None):
    """A plain loop: forward, backward, step, booster.step. Returns the losses and the optimizer."""
    opt = optimizer or torch.optim.AdamW(booster.parameters(), lr=lr)
    losses = []
    for batch in data:
        loss = booster.model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        booster.step(opt)
        losses.append(loss.item())
    return losses, opt


def base_weights(booster) -> dict[str, torch.Tensor]:
    """Every target module's current base weight (a copy), by module name."""
    return {s.name: s.base_weight.detach().clone() for s in booster.slots}


@pytest.fixture(params=sorted(MODELS))
def arch(request) -> str:
    return request.param
