"""TRL's SFTTrainer drives a Booster through BoostCallback as transformers' Trainer does: rounds merge, a
checkpoint resumes bit for bit, and the exported adapter loads in plain PEFT."""

import torch
import transformers
import trl
from datasets import Dataset
from peft import PeftModel
from safetensors.torch import load_file

from loraboost import BoostCallback, BoostConfig, Booster

PAIRS = [("Say hello.", "Hello!"), ("Count to three.", "One, two, three."), ("Name a colour.", "Blue.")]


def sft_run(model_folder, out, max_steps=6, resume=None):
    """An SFTTrainer run of XGBLoRA (2 steps a round, one block of two) on prompt -> completion pairs."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32)
    booster = Booster(model, BoostConfig(method="xgblora", steps_per_round=2, layers_per_round=1, seed=0))
    data = Dataset.from_dict({"prompt": [p for p, _ in PAIRS] * 8, "completion": [c for _, c in PAIRS] * 8})
    args = trl.SFTConfig(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        save_steps=3,
        logging_steps=1,
        report_to=[],
        bf16=False,
        use_cpu=True,
        seed=0,
        max_length=32,
    )
    trainer = trl.SFTTrainer(
        model=booster.model,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[BoostCallback(booster)],
    )
    trainer.train(resume_from_checkpoint=resume)
    return booster


def test_sft_trainer_merges_rounds_resumes_bit_exactly_and_exports_a_peft_adapter(tiny_model, tmp_path):
    straight = sft_run(tiny_model, tmp_path / "straight")
    assert straight.global_step == 6 and len({entry.round for entry in straight.ledger}) == 3  # every round merged
    straight.save_adapter(tmp_path / "straight-adapter")

    # A second run, then its checkpoint at step 3 (mid-round) resumed on a fresh Booster over the original base.
    sft_run(tiny_model, tmp_path / "stopped")
    resumed = sft_run(tiny_model, tmp_path / "stopped", resume=str(tmp_path / "stopped" / "checkpoint-3"))
    resumed.save_adapter(tmp_path / "resumed-adapter")
    a = load_file(tmp_path / "straight-adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed-adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # Plain PEFT on the original base gives the booster's outputs.
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, tmp_path / "straight-adapter").eval()
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    straight.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(ids).logits, straight.model(ids).logits, rtol=1e-4, atol=1e-5)
