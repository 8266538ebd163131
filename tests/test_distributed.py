"""Data-parallel (DDP) and sharded (FSDP2) training on 2 CPU processes (gloo): every rank draws the same
subsets and factors and merges identically, and the result equals one process on the same global batches."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_llama
from ddp_worker import single_process

from loraboost import BoostConfig, Booster
from loraboost.hf import ddp_problem, parallelism_problem

HERE = Path(__file__).parent


def run_two_ranks(mode: str, out: Path) -> list[dict]:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1"
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(HERE / "ddp_worker.py"),
            mode,
            str(out),
        ],
        check=True,
        env=env,
        timeout=300,
    )
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def assert_close_outcomes(a, b, atol):
    assert a["position"] == b["position"] and a["plan"] == b["plan"]
    for name in a["weights"]:
        torch.testing.assert_close(a["weights"][name], b["weights"][name], rtol=0, atol=atol)
    assert [e[:3] for e in a["ledger"]] == [e[:3] for e in b["ledger"]]
    for x, y in zip(a["ledger"], b["ledger"]):
        torch.testing.assert_close(x[3], y[3], rtol=0, atol=atol)
        torch.testing.assert_close(x[4], y[4], rtol=0, atol=atol)


@pytest.mark.parametrize(
    "mode", ["loop", "fsdp", "trainer", "trainer-checkpointing", "loop-gradient", "fsdp-gradient", "fsdp-persistent"]
)
def test_two_ranks_agree_with_each_other_and_with_one_process(mode, tmp_path):
    rank0, rank1 = run_two_ranks(mode, tmp_path)
    assert rank0["position"] == (10, 5) and len(rank0["ledger"]) > 0
    assert_close_outcomes(rank0, rank1, atol=0)  # bit-identical replicas
    assert_close_outcomes(rank0, single_process(mode, tmp_path / "single"), atol=1e-5)


@pytest.mark.parametrize("mode", ["loop-stochastic", "fsdp-stochastic"])
def test_two_ranks_round_stochastic_bf16_merges_alike(mode, tmp_path):
    rank0, rank1 = run_two_ranks(mode, tmp_path)
    assert rank0["position"] == (10, 5) and len(rank0["ledger"]) > 0
    assert all(w.dtype == torch.bfloat16 for w in rank0["weights"].values())
    assert_close_outcomes(rank0, rank1, atol=0)  # the same draws on every rank (and every shard's own rows)


def test_checkpointing_without_unused_parameter_search_is_refused_with_the_fix():
    assert ddp_problem(1, True, None, subsets=True) is None  # one process: no DDP
    assert ddp_problem(2, False, None, subsets=True) is None  # the Trainer's default finds unused ones
    assert ddp_problem(2, True, None, subsets=False) is None  # every adapter runs every step
    assert ddp_problem(2, True, True, subsets=True) is None
    for checkpointing, find_unused in [(True, None), (False, False)]:
        message = ddp_problem(2, checkpointing, find_unused, subsets=True)
        assert "ddp_find_unused_parameters=True" in message and "use_reentrant" in message


def test_deepspeed_and_fsdp1_are_refused_with_what_to_use_instead():
    assert parallelism_problem(SimpleNamespace(deepspeed=None, fsdp=[], fsdp_config={})) is None
    assert parallelism_problem(SimpleNamespace(deepspeed=None, fsdp=["full_shard"], fsdp_config={"version": 2})) is None
    message = parallelism_problem(SimpleNamespace(deepspeed="ds_config.json", fsdp=[], fsdp_config={}))
    assert "DeepSpeed is not supported" in message and "FSDP2" in message
    message = parallelism_problem(SimpleNamespace(deepspeed=None, fsdp=["full_shard"], fsdp_config={"version": 1}))
    assert "FSDP version 1 is not supported" in message


def test_zero3_partitioned_model_is_refused():
    model = tiny_llama()
    next(model.parameters()).ds_id = 0  # what DeepSpeed ZeRO-3 puts on every partitioned parameter
    with pytest.raises(ValueError, match="partitioned by DeepSpeed ZeRO-3"):
        Booster(model, BoostConfig(method="cola"))
