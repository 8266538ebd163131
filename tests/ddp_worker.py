"""One rank of the data-parallel test (see test_distributed.py); run under torchrun with 2 processes.

    python -m torch.distributed.run --standalone --nproc_per_node 2 ddp_worker.py MODE OUT

MODE: loop (plain DDP), fsdp (FSDP2 fully_shard), trainer, or trainer-checkpointing (gradient checkpointing with the
settings that BoostCallback asks for); loop-gradient and fsdp-gradient run gradient-boosted rounds, whose sketches are
summed over the ranks (the loop: round_init and layer_selection "gradient"; FSDP2, whose shards must each take their
rows of both factors: "gradient-step" and "gradient-topk"); loop-stochastic and fsdp-stochastic train a
bf16 model whose merges round stochastically (the loop names merge_residual="stochastic"; FSDP2 takes the default,
"auto", which means the same on bf16); fsdp-persistent keeps half of every booster's ranks across merges.
"""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import transformers
from conftest import batches, tiny_llama
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from loraboost import BoostCallback, BoostConfig, Booster
from loraboost.merge import full_tensor

STEPS, GLOBAL_BATCH = 10, 4
CONFIG = dict(method="xgblora", steps_per_round=2, layers_per_round=2, seed=3)
GRADIENT = dict(CONFIG, round_init="gradient", layer_selection="gradient")
GRADIENT_STEP = dict(CONFIG, round_init="gradient-step", layer_selection="gradient-topk")
STOCHASTIC = dict(CONFIG, merge_residual="stochastic")  # on a bf16 model: merges rounded at random
# Half of every booster's ranks persist across merges: its chain part is a slice of each sharded factor.
PERSISTENT = dict(method="lora", target_modules="all-linear", rank=4, persistent_rank=2, rounds=None,
                  steps_per_round=2, optimizer_reset="keep", seed=3)  # fmt: skip


def config(mode: str) -> BoostConfig:
    if mode == "loop-stochastic":
        return BoostConfig(**STOCHASTIC)
    if mode == "fsdp-stochastic":
        return BoostConfig(**CONFIG)  # merge_residual="auto" on a bf16 model
    if mode == "fsdp-gradient":
        return BoostConfig(**GRADIENT_STEP)
    if mode == "fsdp-persistent":
        return BoostConfig(**PERSISTENT)
    return BoostConfig(**(GRADIENT if mode.endswith("-gradient") else CONFIG))


def base_model(mode: str):
    model = tiny_llama(seed=0)
    return model.to(torch.bfloat16) if mode.endswith("-stochastic") else model


def global_batches():
    return batches("llama", STEPS, seed=11, size=GLOBAL_BATCH)


def outcome(booster):
    return {
        "weights": {s.name: full_tensor(s.base_weight.detach()).clone() for s in booster.slots},
        "ledger": [(e.round, e.module, e.scale, e.A, e.B) for e in booster.ledger],
        "plan": [booster.layers_of(r) for r in range(booster.round + 1)],
        "position": (booster.global_step, booster.round),
    }


CHECKPOINTING = dict(
    gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}, ddp_find_unused_parameters=True
)


def trained_by_trainer(out: Path, per_device_batch: int, checkpointing: bool = False):
    booster = Booster(tiny_llama(seed=0), BoostConfig(**CONFIG))
    extra = CHECKPOINTING if checkpointing else {}
    args = transformers.TrainingArguments(
        output_dir=str(out),
        max_steps=STEPS,
        per_device_train_batch_size=per_device_batch,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        report_to=[],
        save_strategy="no",
        logging_steps=1000,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        ddp_backend="gloo" if "RANK" in os.environ else None,
        **extra,
    )
    transformers.Trainer(
        model=booster.model, args=args, train_dataset=Rows(), callbacks=[BoostCallback(booster)]
    ).train()
    return booster


def single_process(mode: str, out: Path):
    """The reference: one process on the whole global batches (the same samples per step as the ranks')."""
    if mode.startswith("trainer"):
        return outcome(trained_by_trainer(out, GLOBAL_BATCH, checkpointing=mode == "trainer-checkpointing"))
    booster = Booster(base_model(mode), config(mode))
    opt = torch.optim.AdamW(booster.parameters(), lr=1e-2)
    for batch in global_batches():
        booster.model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
        booster.step(opt)
    return outcome(booster)


class Rows(torch.utils.data.Dataset):
    def __init__(self):
        self.rows = [{k: v[i] for k, v in b.items()} for b in global_batches() for i in range(GLOBAL_BATCH)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def main(mode: str, out: Path) -> None:
    # Different global seeds per rank: only the booster's own seeded generators may make them agree.
    torch.manual_seed(100 + int(os.environ["RANK"]))
    if not mode.startswith("trainer"):
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        booster = Booster(base_model(mode), config(mode))
        if mode.startswith("fsdp"):  # FSDP2: every block and the root sharded; merges go into the shards
            for block in booster.model.get_base_model().model.layers:
                fully_shard(block)
            model = fully_shard(booster.model)
            weight = booster.slots[0].base_weight  # really sharded: each rank holds half the rows
            assert weight.to_local().shape[0] * world == weight.shape[0], weight.placements
        else:  # idle XGBLoRA adapters get no gradient in a step: DDP must be told some go unused
            model = DistributedDataParallel(booster.model, find_unused_parameters=True)
        opt = torch.optim.AdamW(booster.parameters(), lr=1e-2)
        share = GLOBAL_BATCH // world
        for batch in global_batches():
            local = {k: v[rank * share : (rank + 1) * share] for k, v in batch.items()}
            model(**local).loss.backward()
            opt.step()
            opt.zero_grad()
            booster.step(opt)
    else:  # the Trainer wraps the model in DDP itself; find_unused_parameters is its default here
        booster = trained_by_trainer(out / "run", GLOBAL_BATCH // 2, checkpointing=mode == "trainer-checkpointing")
        rank = dist.get_rank()
    torch.save(outcome(booster), out / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
