import pytest

from loraboost import PRESETS, BoostConfig


def test_presets_resolve_to_their_methods():
    assert BoostConfig(method="lora").rounds == 1
    cola = BoostConfig(method="cola")
    assert (cola.rank, cola.alpha, cola.rounds, cola.optimizer_reset) == (8, 16.0, 3, "reset")
    xgb = BoostConfig(method="xgblora")
    assert (xgb.rank, xgb.target_modules, xgb.layers_per_round) == (1, "all-linear", 1 / 3)
    assert BoostConfig(method="raclora").frozen_factor == "A"
    relora = BoostConfig(method="relora")
    assert (relora.optimizer_reset, relora.lr_schedule) == ("prune", "per_round")


def test_explicit_value_overrides_preset_even_when_it_equals_another_default():
    assert BoostConfig(method="relora", round_warmup_steps=0).round_warmup_steps == 0
    assert BoostConfig(method="xgblora", layers_per_round=None).layers_per_round is None
    assert BoostConfig(method="xgblora", rank=4).alpha == 8.0


def test_round_trip_through_dict():
    for method in PRESETS:
        cfg = BoostConfig(method=method, seed=3)
        assert BoostConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("method", "adalora", "method='adalora'"),
        ("rank", 0, "rank=0"),
        ("rank", 2.5, "rank=2.5"),
        ("alpha", -1, "alpha=-1"),
        ("layers_per_round", 0, "layers_per_round=0"),
        ("layers_per_round", 1.5, "layers_per_round=1.5"),
        ("layers_per_round", True, "layers_per_round=True"),
        ("steps_per_round", 0, "steps_per_round=0"),
        ("merge_scale", 0, "merge_scale=0"),
        ("norm_penalty", -0.1, "norm_penalty=-0.1"),
        ("merge_residual_dtype", "float16", "merge_residual_dtype='float16'"),
        ("optimizer_reset", "zero", "optimizer_reset='zero'"),
        ("prune_ratio", 1.0, "prune_ratio=1.0"),
        ("lr_schedule", "cyclic", "lr_schedule='cyclic'"),
        ("round_warmup_steps", -1, "round_warmup_steps=-1"),
        ("frozen_factor", "C", "frozen_factor='C'"),
        ("round_init", "svd", "round_init='svd'"),
        ("layer_selection", "top", "layer_selection='top'"),
        ("gradient_step_gamma", 0, "gradient_step_gamma=0"),
        ("target_modules", [], "target_modules=[]"),
        ("seed", -1, "seed=-1"),
    ],
)
def test_bad_values_name_the_field_and_value(field, value, words):
    with pytest.raises(ValueError) as info:
        BoostConfig(**{field: value})
    message = str(info.value)
    assert words in message
    assert message.count(". ") == 0 and message.endswith(".")  # one sentence


def test_a_descent_step_start_refuses_a_frozen_factor():
    with pytest.raises(ValueError, match="round_init='gradient-step' sets both factors for one descent step"):
        BoostConfig(method="raclora", round_init="gradient-step")


def test_round_length_must_be_defined():
    with pytest.raises(ValueError, match="rounds=None and steps_per_round=None"):
        BoostConfig(method="cola", rounds=None)


def test_unknown_dict_key_is_refused():
    with pytest.raises(ValueError, match="unknown BoostConfig field"):
        BoostConfig.from_dict({"method": "cola", "ranks": 4})
