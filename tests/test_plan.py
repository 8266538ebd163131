import pytest

from loraboost.plan import RoundPlan

KEYS = tuple(f"model.layers.{i}" for i in range(9))


def plan(**kw):
    args = dict(layer_keys=KEYS, layers_per_round=3, steps_per_round=None, rounds=None, total_steps=None, seed=0)
    args.update(kw)
    return RoundPlan(**args)


def test_kappa_rounds_end_every_kappa_steps_without_limit():
    p = plan(steps_per_round=5)
    assert [p.round_end(t) for t in range(4)] == [5, 10, 15, 20]
    assert [p.round_at(s) for s in (0, 4, 5, 9, 10, 99)] == [0, 0, 1, 1, 2, 19]


def test_rounds_cap_kappa_and_last_round_never_ends():
    p = plan(steps_per_round=5, rounds=3)
    assert [p.round_end(t) for t in range(3)] == [5, 10, None]
    assert p.round_at(1000) == 2


def test_cola_knots_are_spread_evenly_over_the_run():
    p = plan(rounds=3, total_steps=100)
    assert [p.round_end(t) for t in range(3)] == [33, 67, None]
    assert [p.round_length(t) for t in range(3)] == [33, 34, 33]
    assert [p.round_at(s) for s in (0, 32, 33, 66, 67, 99)] == [0, 0, 1, 1, 2, 2]


def test_rounds_without_total_steps_explain_what_is_missing():
    with pytest.raises(ValueError, match="needs the run's total step count"):
        plan(rounds=3).round_end(0)


def test_more_rounds_than_steps_is_refused():
    with pytest.raises(ValueError, match="rounds=20 is more than the run's 10 steps"):
        plan(rounds=20, total_steps=10)


def test_layers_are_seeded_sorted_and_of_the_right_size():
    p = plan(steps_per_round=5)
    rounds = [p.layers(t) for t in range(20)]
    assert all(len(r) == 3 and list(r) == sorted(r, key=KEYS.index) for r in rounds)
    assert rounds == [plan(steps_per_round=5).layers(t) for t in range(20)]  # pure: same seed, same layers
    assert rounds != [plan(steps_per_round=5, seed=1).layers(t) for t in range(20)]
    assert len(set(rounds)) > 5  # rounds really draw different subsets


def test_every_layer_when_layers_per_round_is_all():
    assert plan(layers_per_round=9, steps_per_round=5).layers(7) == KEYS


def test_layers_per_round_out_of_range():
    with pytest.raises(ValueError, match="layers_per_round=10 is out of range for a model with 9 layers"):
        plan(layers_per_round=10, steps_per_round=5)
