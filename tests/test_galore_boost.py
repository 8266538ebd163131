"""Boosting contains GaLore: boosters whose shorter-side factor is frozen on the gradient's singular vectors, the
other trained by Adam with its moments kept across merges, move the weights exactly as galore_torch's GaLoreAdamW
does with the same projections (right and left ones), on a tiny Llama with the same batches."""

import json

import pytest
import torch
import transformers
from conftest import assert_resume_is_bit_exact, batches, tiny_llama, train_args
from peft import PeftModel

from loraboost import BoostConfig, Booster
from loraboost.cli import main

galore_torch = pytest.importorskip("galore_torch")
from galore_torch.galore_projector import GaLoreProjector  # noqa: E402

RANK, GAP, SCALE, LR, EPS = 2, 3, 0.25, 1e-2, 1e-6


def galore_booster(model, frozen_factor="shorter", **extra) -> Booster:
    return Booster(
        model,
        BoostConfig(
            method="lora",
            rank=RANK,
            alpha=SCALE * RANK,  # the booster's scaling alpha / r is GaLore's scale
            target_modules="all-linear",
            rounds=None,
            steps_per_round=GAP,  # a round is GaLore's update gap
            frozen_factor=frozen_factor,
            round_init="gradient",
            optimizer_reset="keep",  # GaLore keeps its moments when the projection changes
            **extra,
        ),
    )


class GivenProjection(GaLoreProjector):
    """GaLore's projector, asked for its matrix every step (gap 1), and answering with the booster's frozen factor
    of the round that step belongs to, so both sides project the same gradients on the same subspaces."""

    def __init__(self, matrices: list[torch.Tensor], round_of_call):
        super().__init__(RANK, update_proj_gap=1, scale=SCALE, proj_type="std")
        self.matrices, self.round_of_call, self.calls = matrices, round_of_call, 0

    def get_orthogonal_matrix(self, weights, rank, type):
        matrix = self.matrices[self.round_of_call(self.calls)]
        self.calls += 1
        return matrix


def test_frozen_gradient_factors_are_galore_step_for_step():
    data = batches("llama", 3 * GAP, size=1, length=6)  # 6 tokens: the sketch (k = 6) sees the gradient exactly
    booster = galore_booster(tiny_llama(hidden=32, layers=2))
    optimizer = galore_torch.GaLoreAdamW(booster.parameters(), lr=LR, eps=EPS * SCALE, weight_decay=0.0)
    for batch in data:
        booster.model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        booster.step(optimizer)
    assert booster.round == 3 and len({entry.round for entry in booster.ledger}) == 3

    sides = {slot.name: booster.frozen(slot) for slot in booster.slots}
    assert set(sides.values()) == {"A", "B"}  # q/o/gate/up project on the right, k/v/down on the left
    frozen = {name: [None] * 3 for name in sides}
    for entry in booster.ledger:
        frozen[entry.module][entry.round] = entry.A if sides[entry.module] == "A" else entry.B
    for name, matrices in frozen.items():  # the frozen factors are orthonormal, as GaLore's SVD factors are
        for m in matrices:
            gram = m @ m.T if sides[name] == "A" else m.T @ m
            torch.testing.assert_close(gram, torch.eye(RANK), atol=1e-5, rtol=0)

    # GaLore from the same start. Round 0's first booster step only sketched the gradient and was undone, so
    # GaLore's step j is the booster's step j + 1 and takes that step's batch.
    reference = tiny_llama(hidden=32, layers=2)
    reference.train()
    modules = dict(reference.named_modules())
    weights = [modules[name].weight for name in sides]
    for parameter in reference.parameters():
        parameter.requires_grad_(False)
    for weight in weights:
        weight.requires_grad_(True)
    galore = galore_torch.GaLoreAdamW(
        [{"params": weights, "rank": RANK, "update_proj_gap": 1, "scale": SCALE, "proj_type": "std"}],
        lr=LR,
        eps=EPS,
        weight_decay=0.0,
    )
    for name, weight in zip(sides, weights):
        galore.state[weight]["projector"] = GivenProjection(frozen[name], lambda call: (call + 1) // GAP)
    for batch in data[1:]:
        reference(**batch).loss.backward()
        galore.step()
        galore.zero_grad()

    for slot in booster.slots:
        assert float((slot.B if sides[slot.name] == "A" else slot.A).detach().abs().max()) == 0.0  # round 3 fresh
        moved = modules[slot.name].weight.detach() - tiny_llama(hidden=32, layers=2).get_submodule(slot.name).weight
        assert (
            float(moved.detach().abs().max()) > 1e-3
        )  # GaLore moved it: the comparison is not of two untouched weights
        torch.testing.assert_close(booster.merged_weight(slot), modules[slot.name].weight.detach(), atol=2e-6, rtol=0)


@pytest.mark.parametrize("side", ["shorter", "longer"])
@pytest.mark.parametrize(
    ("size", "length", "oversample"),
    [(1, 6, 4), (4, 12, 32)],  # a gradient of rank <= 6 < k; a full-rank one with k = 34 >= min(out, in)
)
def test_the_frozen_factor_is_the_gradient_singular_subspace(size, length, oversample, side):
    # The projection the booster uses is GaLore's own: the top-r singular vectors of a step's gradient, exactly when
    # the gradient's rank or min(out, in) is within the sketch's k = r + sketch_oversample columns.
    data = batches("llama", 1, size=size, length=length)
    model = tiny_llama(hidden=32, layers=2)
    model.train()
    model(**data[0]).loss.backward()
    grads = {name: m.weight.grad.clone() for name, m in model.named_modules() if name.endswith("_proj")}
    booster = galore_booster(tiny_llama(hidden=32, layers=2), side, sketch_oversample=oversample)
    optimizer = torch.optim.AdamW(booster.parameters(), lr=LR)
    booster.model(**data[0]).loss.backward()
    optimizer.step()
    booster.step(optimizer)  # round 0 restarts from its first step's gradient
    for slot in booster.slots:
        u, _, vh = torch.linalg.svd(grads[slot.name].double())
        if booster.frozen(slot) == "A":
            basis, factor = vh[:RANK].T, slot.A.detach().double().T  # (in, r)
        else:
            basis, factor = u[:, :RANK], slot.B.detach().double()  # (out, r)
        projector = basis @ basis.T  # the same subspace: the factor's columns lie in it
        torch.testing.assert_close(projector @ factor, factor, atol=1e-5, rtol=0)
        assert float((slot.B if booster.frozen(slot) == "A" else slot.A).detach().abs().max()) == 0.0


def test_the_longer_side_frozen_trains_only_the_shorter_sides_factor():
    # frozen_factor="longer" trains r x min(out, in) numbers per module: the same rank per round for fewer live
    # parameters than "shorter" (r x max(out, in)), on every non-square module the other factor than "shorter".
    shorter = galore_booster(tiny_llama(hidden=32, layers=2))
    longer = galore_booster(tiny_llama(hidden=32, layers=2), "longer")
    for short_slot, long_slot in zip(shorter.slots, longer.slots):
        out_features, in_features = long_slot.shape
        trained = [p for p in (long_slot.A, long_slot.B) if p.requires_grad]
        assert len(trained) == 1 and trained[0].numel() == RANK * min(out_features, in_features)
        if out_features != in_features:
            assert {shorter.frozen(short_slot), longer.frozen(long_slot)} == {"A", "B"}
    assert sum(p.numel() for p in longer.parameters() if p.requires_grad) < sum(
        p.numel() for p in shorter.parameters() if p.requires_grad
    )


def test_a_frozen_factor_is_refused_with_a_descent_step_start():
    with pytest.raises(ValueError, match="round_init='gradient-step' sets both factors"):
        BoostConfig(frozen_factor="shorter", round_init="gradient-step")


def test_a_checkpoint_inside_a_round_resumes_bit_for_bit_with_the_moments_kept(tmp_path):
    data = batches("llama", 8, size=1, length=6)

    def fresh():
        booster = galore_booster(tiny_llama(hidden=32, layers=2))
        return booster, torch.optim.AdamW(booster.parameters(), lr=LR)

    def sketching(booster):
        assert booster.sketcher.armed  # round 1 is steps 3-5, and step 5 is its sketched one

    assert_resume_is_bit_exact(fresh, data, 5, tmp_path / "state.safetensors", at_stop=sketching)


def test_the_galore_arm_trains_exports_and_reproduces_its_model(tiny_model, reviews_csv, tmp_path):
    run = tmp_path / "run"
    args = train_args(
        tiny_model, reviews_csv, run, "--method", "boost-galore-r8", "--rank", "2", "--steps-per-round", "2"
    )
    assert main(args) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "boost-galore-r8" and summary["rounds_merged"] >= 1
    # Only the longer-side factor of each module trains: r * max(out, in) parameters per target module.
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model)
    linear = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    assert summary["trainable_parameters"] == sum(2 * max(m.out_features, m.in_features) for m in linear)
    boost = json.loads((run / "run.json").read_text())["boost"]
    assert boost["alpha"] == 0.25 * 2  # --rank 2 keeps GaLore's scale alpha / r = 0.25
    # The exported PEFT adapter reproduces every merge the run made.
    booster = Booster(transformers.AutoModelForCausalLM.from_pretrained(tiny_model), BoostConfig(**boost))
    booster.load_state(run / "booster_state.safetensors")
    adapted = PeftModel.from_pretrained(model, run / "adapter").merge_and_unload()
    for slot in booster.slots:
        live = booster.config.lora_scaling * slot.B.detach() @ slot.A.detach()
        expected = booster.merged_weight(slot) + live
        torch.testing.assert_close(adapted.get_submodule(slot.name).weight, expected, atol=1e-5, rtol=0)


def test_an_oversample_beyond_the_weight_keeps_the_sketch_at_the_weight_size():
    booster = galore_booster(tiny_llama(hidden=32, layers=2), sketch_oversample=10**7)
    assert booster.sketcher.armed  # round 0 sketches its first step
    for slot in booster.slots:
        sketch = booster.sketcher.sketches[slot.name]
        assert sketch.Y.shape == (slot.shape[0], min(slot.shape)) and sketch.Z.shape[0] == 2 * min(slot.shape) + 1
