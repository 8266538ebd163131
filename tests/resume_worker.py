"""Runs one half of a resume test in a fresh process (see test_resume.py).

python resume_worker.py loop    FOLDER   # load FOLDER/state + optimizer, train the second half
python resume_worker.py trainer FOLDER   # Trainer.train(resume_from_checkpoint=FOLDER/run/checkpoint-5)
"""

import sys
from pathlib import Path

import torch
import transformers
from conftest import batches, tiny_llama

from loraboost import BoostCallback, BoostConfig, Booster

STEPS, HALF = 10, 5  # rounds of 2 steps: the stop falls in the middle of a round
CONFIG = dict(method="xgblora", steps_per_round=2, layers_per_round=2, seed=3)


def build():
    booster = Booster(tiny_llama(seed=0), BoostConfig(**CONFIG))
    return booster, torch.optim.AdamW(booster.parameters(), lr=1e-2)


def train_loop(booster, opt, data):
    for batch in data:
        booster.model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
        booster.step(opt)


def outcome(booster):
    """Everything that must be identical: base weights, live factors, ledger, position."""
    return {
        "weights": {s.name: s.base_weight.detach().clone() for s in booster.slots},
        "live": {s.name: (s.A.detach().clone(), s.B.detach().clone()) for s in booster.slots},
        "ledger": [(e.round, e.module, e.scale, e.A, e.B) for e in booster.ledger],
        "position": (booster.global_step, booster.round),
    }


class Rows(torch.utils.data.Dataset):
    def __init__(self):
        self.rows = [{k: v[0] for k, v in b.items()} for b in batches("llama", 64, size=1)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def trainer(booster, folder):
    args = transformers.TrainingArguments(
        output_dir=str(folder),
        max_steps=STEPS,
        save_strategy="steps",
        save_steps=HALF,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to=[],
        logging_steps=1000,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    return transformers.Trainer(
        model=booster.model, args=args, train_dataset=Rows(), callbacks=[BoostCallback(booster)]
    )


if __name__ == "__main__":
    mode, folder = sys.argv[1], Path(sys.argv[2])
    booster, opt = build()
    if mode == "loop":
        booster.load_state(folder / "state.safetensors")
        opt.load_state_dict(torch.load(folder / "optimizer.pt"))
        train_loop(booster, opt, batches("llama", STEPS)[HALF:])
    else:
        trainer(booster, folder / "run").train(resume_from_checkpoint=str(folder / "run" / f"checkpoint-{HALF}"))
    torch.save(outcome(booster), folder / "resumed.pt")
