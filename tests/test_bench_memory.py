"""The exact activation-memory count of bench/saved_memory.py: what autograd saves for backward, each
storage once and parameters left out, and that the backward pass of a higher adapter saves less."""

import sys
from pathlib import Path
from types import SimpleNamespace

import peft
import torch
import transformers

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
import saved_memory  # noqa: E402  (bench/ holds scripts, not a package)


class OneLinear(torch.nn.Module):
    """loss = sum(linear(x)): the smallest model whose saved tensors are known by hand."""

    def __init__(self, train_weight: bool):
        super().__init__()
        self.linear = torch.nn.Linear(16, 4, bias=False)
        self.linear.weight.requires_grad_(train_weight)

    def forward(self, x):
        return SimpleNamespace(loss=self.linear(x).sum())


def test_a_trained_weight_saves_its_input_and_the_weight_itself_is_not_counted():
    x = torch.randn(8, 16)
    assert saved_memory.saved_for_backward_bytes(OneLinear(train_weight=True), {"x": x}) == x.nbytes
    # A frozen weight needs only itself for the input's gradient, and parameters are left out: nothing.
    x_grad = torch.randn(8, 16, requires_grad=True)
    assert saved_memory.saved_for_backward_bytes(OneLinear(train_weight=False), {"x": x_grad}) == 0


def test_trainable_state_counts_gradient_and_moments_only_where_a_gradient_arrived():
    model = OneLinear(train_weight=True)
    weight_bytes = model.linear.weight.nbytes
    assert saved_memory.trainable_state_bytes(model) == weight_bytes  # no backward yet
    saved_memory.saved_for_backward_bytes(model, {"x": torch.randn(2, 16)})
    assert saved_memory.trainable_state_bytes(model) == 4 * weight_bytes


def tiny_llama_with_adapter_on(layer: int):
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    lora = peft.LoraConfig(r=2, target_modules=["q_proj"], layers_to_transform=[layer], lora_dropout=0.0)
    return peft.get_peft_model(transformers.LlamaForCausalLM(config), lora)


def test_an_adapter_higher_up_saves_less_for_backward_than_one_on_the_lowest_block():
    ids = torch.randint(64, (2, 12), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids}
    lowest = saved_memory.saved_for_backward_bytes(tiny_llama_with_adapter_on(0), batch)
    highest = saved_memory.saved_for_backward_bytes(tiny_llama_with_adapter_on(3), batch)
    assert 0 < highest < lowest


def test_the_tensor_peak_is_the_most_bytes_alive_at_once_with_each_kind():
    import tensor_memory

    def work():
        held = torch.ones(1024, 1024)  # 4 MiB alive while a second 4 MiB comes and goes
        torch.ones(1024, 1024).sum()
        del held
        torch.ones(512, 1024).sum()  # 2 MiB later: not the peak

    peak = tensor_memory.peak_tensor_bytes(work)
    assert 8 * 2**20 <= peak["peak_bytes"] < 8 * 2**20 + 2**16
    assert sum(peak["by_kind"].values()) == peak["peak_bytes"]
    # A model's step: its parameters are counted as parameters, and its saved activations as activations.
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
    x = torch.randn(512, 256)
    peak = tensor_memory.peak_tensor_bytes(lambda: model(x).sum().backward())
    assert peak["by_kind"]["parameter"] == sum(p.nbytes for p in model.parameters())
    assert peak["by_kind"].get("activation", 0) >= 512 * 256 * 4  # the ReLU's output, saved for the last layer
